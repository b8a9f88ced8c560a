"""``DynamicsMonitor`` for the ``lightning`` package (``import lightning as L``).

    from dyncheck.lightning import DynamicsMonitor
    trainer = L.Trainer(callbacks=[DynamicsMonitor()])

Same implementation as :class:`dyncheck.DynamicsMonitor` (which is a ``pytorch_lightning.Callback``).
"""

from __future__ import annotations

try:
    import lightning.pytorch as _lp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dyncheck.lightning needs the 'lightning' package (pip install 'dyncheck[lightning]'); "
        "with pytorch_lightning use 'from dyncheck import DynamicsMonitor'"
    ) from exc

from ._callback import DynamicsMonitorHooks

__all__ = ["DynamicsMonitor"]


class DynamicsMonitor(DynamicsMonitorHooks, _lp.Callback):
    __doc__ = DynamicsMonitorHooks.__doc__
