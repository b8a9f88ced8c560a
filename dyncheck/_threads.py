"""One BLAS thread for dyncheck's own linear algebra (the trajectory PCA, principal angles, phase fits, detector
fits): its matrices are small (a few hundred rows), where a multi-threaded BLAS only adds synchronisation -- and
at the end of a fit it competes with the training's own thread pool, whose threads still spin-wait after the
last step. Measured on this project's 2-core box, busy: numpy's ``eigh`` of a 200 x 200 Gram matrix took 0.6-2.4 s
with two OpenBLAS threads, 2-7 ms with one.

``threadpoolctl`` (the scikit-learn/joblib project's library for exactly this) limits the BLAS libraries loaded
in the process for the duration of a ``with`` block and restores them after; torch's own thread pool is not
touched."""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["one_blas_thread"]


def one_blas_thread() -> Any:
    """A context manager: BLAS libraries limited to one thread inside it (a no-op where threadpoolctl fails)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except Exception:  # (a BLAS threadpoolctl cannot handle: dyncheck's results do not depend on it)
        return contextlib.nullcontext()
