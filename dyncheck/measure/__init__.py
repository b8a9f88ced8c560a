"""Pure measurements on tensors and modules. Nothing here knows about Lightning, files or rules.

- :mod:`.tensors`      norms and non-finite counts of lists of tensors (gradients, weights, updates)
- :mod:`.activations`  per-module activation statistics through forward hooks
- :mod:`.sharpness`    top Hessian eigenvalue by Hessian-vector products and Lanczos; stability thresholds
"""

from .activations import ACTIVATION_STATS, ActivationRecorder, activation_stats, saturation_bounds, unit_dim
from .sharpness import (
    EigResult,
    hvp_operator,
    lanczos_top_eig,
    power_iteration_top_eig,
    preserved_training_state,
    stability_threshold,
)
from .tensors import nonfinite_counts, tensor_norms, update_ratios

__all__ = [
    "ACTIVATION_STATS",
    "ActivationRecorder",
    "EigResult",
    "activation_stats",
    "hvp_operator",
    "lanczos_top_eig",
    "nonfinite_counts",
    "power_iteration_top_eig",
    "preserved_training_state",
    "saturation_bounds",
    "stability_threshold",
    "tensor_norms",
    "unit_dim",
    "update_ratios",
]
