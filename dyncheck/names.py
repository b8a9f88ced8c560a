"""The metric-name scheme, documented once (README, "What is measured") and used by the monitor, the rule loader,
the report and the baselines. Plain Python: no torch.

A name is ``<family>/<rest>``; ``<param>`` is a parameter name from ``named_parameters()``, ``<module>`` a module
name from ``named_modules()``, ``<key>`` a key the LightningModule logged.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["ACTIVATION_STATS", "METRIC_TEMPLATES", "WRAPPER_ATTRIBUTES", "canonical_name", "glob_overlaps",
           "pattern_can_match"]

#: activation statistics, in the order the monitor computes them
ACTIVATION_STATS = ("mean", "std", "max_abs", "nonfinite", "dead", "saturated", "unit_spread")

#: every metric the monitor records, as globs (``*`` stands for a parameter, module, optimizer or logged key)
METRIC_TEMPLATES: tuple[str, ...] = (
    "loss/train",
    "loss/val",
    "lr/*",  # lr/<Optimizer>/pg<j>
    "decay/*",  # decay/<Optimizer>/pg<j>: lr x weight_decay
    "model/untrained_share",
    "model/max_dropout",
    "grad_norm/total",
    "grad_norm/*",  # grad_norm/<param>
    "grad_nonfinite/*",
    "weight_norm/*",
    "update_ratio/*",
    "weight_unchanged/*",
    *(f"act/{s}/*" for s in ACTIVATION_STATS),
    "sharpness/top_eig",
    "sharpness/threshold",
    "sharpness/n_hvp",
    "output/zero_share",
    "output/prob_rows",
    "output/var",
    "output/blocked_share",
    "output/softmax_floor",
    "output/softmax_grad",
    "output/chance_loss",
    "ntk/distance",
    "ntk/velocity",
    "ntk/top_eig",
    "ntk/top_eig_share",
    "traj/c*",  # traj/c<i>: coordinate i of the weight sketch
    "noise/b_simple",
    "noise/trace_sigma",
    "noise/grad_sq",
    "batch/size",
    "logged/*",
)


#: attributes under which wrappers hold the module they wrap, left out of parameter and module names:
#: ``torch.compile``'s ``OptimizedModule`` (``_orig_mod``), FSDP1's ``FullyShardedDataParallel``
#: (``_fsdp_wrapped_module``) and activation checkpointing's ``CheckpointWrapper`` (``_checkpoint_wrapped_module``).
#: DDP's ``module.`` is not among them (a model may well have a child called ``module``): Lightning, the HF Trainer
#: and the plain loop hand the monitor the unwrapped model; see :func:`canonical_name`'s ``prefix``.
WRAPPER_ATTRIBUTES = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def canonical_name(name: str, prefix: str = "") -> str:
    """A parameter or module name as the monitor records it: without wrappers' attributes
    (:data:`WRAPPER_ATTRIBUTES`) anywhere in the dotted path, and without ``prefix`` (e.g. ``"module."`` when the
    module handed to the monitor is a ``DistributedDataParallel``) at its start, so that compiled, wrapped and eager
    runs of one model record the same names (``_orig_mod.net.0.weight`` -> ``net.0.weight``). Used by every
    collector for ``grad_norm/<param>``, ``weight_norm/<param>``, ``act/<stat>/<module>`` and the like."""
    if prefix and (name.startswith(prefix) or name == prefix.rstrip(".")):
        name = name[len(prefix):]
    if "_" not in name:  # the common case: nothing to strip
        return name
    parts = name.split(".")
    kept = [p for p in parts if p not in WRAPPER_ATTRIBUTES]
    return name if len(kept) == len(parts) else ".".join(kept)


def _tokens(glob: str) -> tuple[str, ...]:
    """A glob as tokens: ``*``, ``?`` (also for ``[...]`` classes, an over-approximation) or one literal char."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "[":
            j = glob.find("]", i + 2)
            if j > 0:
                out.append("?")
                i = j + 1
                continue
        out.append(c if c in "*?" else "=" + c)
        i += 1
    return tuple(out)


@lru_cache(maxsize=4096)
def glob_overlaps(a: str, b: str) -> bool:
    """Whether some string matches both globs ``a`` and ``b`` (``fnmatchcase`` syntax)."""
    ta, tb = _tokens(a), _tokens(b)

    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> bool:
        if i == len(ta) and j == len(tb):
            return True
        if i < len(ta) and ta[i] == "*" and go(i + 1, j):
            return True
        if j < len(tb) and tb[j] == "*" and go(i, j + 1):
            return True
        if i == len(ta) or j == len(tb):
            return False
        x, y = ta[i], tb[j]
        if x == "*":  # a's star eats one char of b (b's star: both stars advance below)
            return go(i, j + 1) if y != "*" else go(i + 1, j) or go(i, j + 1)
        if y == "*":
            return go(i + 1, j)
        return (x == "?" or y == "?" or x == y) and go(i + 1, j + 1)

    return go(0, 0)


def pattern_can_match(pattern: str) -> bool:
    """Whether a metric glob can match some name the monitor records (or a ``logged/<key>``)."""
    return any(glob_overlaps(pattern, t) for t in METRIC_TEMPLATES)
