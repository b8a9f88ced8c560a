"""One collector per measured quantity, on top of :mod:`dyncheck.measure` (see :mod:`.base` for the protocol).

=======================  ==========================================================  ==========  ===========
collector                metrics                                                     schedule    reduce
=======================  ==========================================================  ==========  ===========
:class:`LossCollector`   ``loss/train``                                              scalars     mean
:class:`LearningRate..`  ``lr/<Optimizer>/pg<j>``                                    scalars     none
:class:`WeightDecayC..`  ``decay/<Optimizer>/pg<j>`` (lr x weight_decay)                layers      none
:class:`TrainedShare..`  ``model/untrained_share`` (frozen or in no optimizer)          layers      none
:class:`GradientColl..`  ``grad_norm/total``; ``grad_norm/<p>``, ``grad_nonfinite/<p>``  scalars; layers  norm; none
:class:`WeightCollect..` ``weight_norm/<p>``, ``update_ratio/<p>``, ``weight_unchanged/<p>``  layers   none
:class:`ActivationCo..`  ``act/<stat>/<module>``                                     activations mean/max/sum
:class:`SharpnessColl..` ``sharpness/top_eig``, ``sharpness/n_hvp``, ``sharpness/threshold``  budget  none
:class:`NoiseScaleCol..` ``noise/b_simple``, ``noise/trace_sigma``, ``noise/grad_sq``, ``batch/size``  budget  none
:class:`NTKCollector`    ``ntk/distance``, ``ntk/velocity``, ``ntk/top_eig``, ``ntk/top_eig_share``  budget  none
:class:`TrajectoryCol..` ``traj/c<i>`` (a fixed sketch of the weights)                  trajectory  none
:class:`OutputCollector` ``output/zero_share``, ``output/prob_rows``, ``output/blocked_share``,   activations mean
                         ``output/softmax_floor``, ``output/softmax_grad``, ``output/chance_loss``
=======================  ==========================================================  ==========  ===========

A new quantity is a new :class:`Collector` subclass added to :func:`default_collectors` (or passed to
:class:`~dyncheck.monitor.Monitor`); the monitor, the adapters and the store need no change.
"""

from __future__ import annotations

from typing import Any

from .activations import ActivationCollector
from .base import (
    FORWARD_HOOKS,
    GRADIENTS,
    LOSS,
    PROBE_BATCH,
    WEIGHTS_BEFORE_STEP,
    Collector,
    Context,
    Every,
    Failures,
    GradStep,
    Modulo,
)
from .grads import GradientCollector
from .loss import LossCollector
from .decay import WeightDecayCollector
from .lr import LearningRateCollector
from .noise import NoiseScaleCollector
from .ntk import NTK_AUTO_BUDGET, NTKCollector
from .path import TrajectoryCollector
from .output import OutputCollector
from .sharpness import SharpnessCollector
from .trained import TrainedShareCollector
from .weights import WeightCollector

__all__ = [
    "FORWARD_HOOKS",
    "GRADIENTS",
    "LOSS",
    "PROBE_BATCH",
    "WEIGHTS_BEFORE_STEP",
    "ActivationCollector",
    "Collector",
    "Context",
    "Every",
    "Failures",
    "GradStep",
    "GradientCollector",
    "LearningRateCollector",
    "LossCollector",
    "Modulo",
    "NoiseScaleCollector",
    "NTKCollector",
    "OutputCollector",
    "SharpnessCollector",
    "TrainedShareCollector",
    "TrajectoryCollector",
    "WeightCollector",
    "WeightDecayCollector",
    "default_collectors",
]


def default_collectors(config: Any) -> list[Collector]:
    """The collectors of a :class:`~dyncheck.monitor.MonitorConfig`, in the order they run at each hook
    (sharpness first: its probe runs before the activation hooks are attached; then the noise scale, whose probe
    also runs at step start and leaves ``.grad`` as it found it)."""
    on = config.sharpness_enabled
    return [
        SharpnessCollector(budget=config.sharpness_budget if on else 0.0,
                           every_n=config.sharpness_every_n_steps if on else 0,
                           max_iter=config.sharpness_max_iter, tol=config.sharpness_tol),
        NoiseScaleCollector(budget=config.noise_budget, every_n=config.noise_every_n_steps, ema=config.noise_ema),
        NTKCollector(budget=(NTK_AUTO_BUDGET if config.ntk_budget is None else config.ntk_budget)
                     if config.ntk_enabled else 0.0,
                     auto=config.ntk_budget is None and not config.ntk_every_n_steps,
                     every_n=config.ntk_every_n_steps if config.ntk_enabled else 0,
                     examples=config.ntk_examples, output_fn=config.ntk_output_fn),
        TrajectoryCollector(every_n=config.trajectory_every_n_steps, dim=config.trajectory_dim),
        LearningRateCollector(),
        WeightDecayCollector(),
        TrainedShareCollector(),
        LossCollector(),
        GradientCollector(),
        WeightCollector(),
        ActivationCollector(config.activation_modules),
        OutputCollector(),
    ]
