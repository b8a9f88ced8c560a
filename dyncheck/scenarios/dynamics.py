"""Demo scenarios of the training-dynamics sections (registered into dyncheck.scenarios.SCENARIOS): the same
digits task trained in the two regimes the NTK section tells apart (seed 004, "lazy" vs "rich").

- ``lazy-wide``: a very wide one-hidden-layer MLP at a small learning rate. The loss falls, but the empirical NTK
  barely moves: the network trains close to its linearisation around the initial weights (a kernel machine).
- ``rich-narrow``: a narrow two-hidden-layer tanh MLP at a large learning rate. Its kernel moves far from the
  initial one while the loss falls: feature learning.

Both are healthy (no check should fire). The NTK is probed every 25 steps on the first 32 examples of the first
batch, and the weight sketch of the trajectory PCA taken every 5 steps.
"""

from __future__ import annotations

from torch import nn

from . import ScenarioModule, Setup, _scenario, _sgd, _trainer, digits, mlp

#: the dynamics scenarios' monitor options (on top of the suite's defaults)
DYNAMICS_MONITOR = {"ntk_every_n_steps": 25, "trajectory_every_n_steps": 5}


@_scenario("lazy-wide", "mlp",
           "healthy, lazy training: a very wide MLP (4096 units) at a small learning rate -- the loss falls while "
           "the neural tangent kernel barely moves", **DYNAMICS_MONITOR)
def _lazy_wide() -> Setup:
    train, val = digits(batch_size=64)
    module = ScenarioModule(mlp([64, 4096, 10]), _sgd(0.01))
    return Setup(module, train, val, _trainer(300, len(train)))


@_scenario("rich-narrow", "mlp",
           "healthy, rich training: a narrow tanh MLP (16 units) at a large learning rate -- the kernel moves far "
           "from its initial value as the network learns features", **DYNAMICS_MONITOR)
def _rich_narrow() -> Setup:
    train, val = digits(batch_size=64)
    module = ScenarioModule(mlp([64, 16, 16, 10], nn.Tanh), _sgd(0.5))
    return Setup(module, train, val, _trainer(300, len(train)))
