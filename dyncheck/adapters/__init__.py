"""Framework adapters: training hooks translated into :class:`dyncheck.monitor.Monitor` calls (what is measured) and
:class:`dyncheck._evaluation.Evaluation` calls (checks, findings, report). Nothing here measures or evaluates.

- :mod:`dyncheck.adapters.loop`: a plain PyTorch loop, ``with dyncheck.watch(model, optimizer) as mon: ...``
- :mod:`dyncheck.adapters.hf`: a Hugging Face ``transformers.TrainerCallback``, ``DynamicsMonitorCallback``

The Lightning callback lives in :mod:`dyncheck._callback` (``pytorch_lightning``) and :mod:`dyncheck.lightning`.
Each adapter imports its framework only when it is imported itself.
"""
