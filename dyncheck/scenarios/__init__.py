"""A labelled suite of short, real training runs: healthy ones and ones with one known failure mode each.

Every scenario trains a small network with a real ``pytorch_lightning.Trainer`` on CPU, on data that ships with
scikit-learn (digits, moons; no download), in a few seconds, with :class:`~dyncheck.DynamicsMonitor` attached.
Each is labelled with the check ids a correct rule engine must report (``expected``; empty for healthy runs) and
those it may also report without being wrong (``allowed``): the suite is the ground truth the default checks are
tuned and tested on.

    >>> from dyncheck.scenarios import SCENARIOS, run_scenario
    >>> run_dir = run_scenario("dying-relu", "runs/")        # trains, returns runs/dying-relu (holds run.db)
    >>> SCENARIOS["dying-relu"].expected
    frozenset({'dead-units'})

Needs scikit-learn (``pip install -e ".[dev]"``). Not imported by ``dyncheck`` itself.
``examples/scenarios.py`` lists and runs scenarios; ``benchmarks/scenario_stats.py`` prints their key statistics.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["CHECK_IDS", "FAMILIES", "MONITOR_DEFAULTS", "Scenario", "Setup", "SCENARIOS", "run_scenario", "digits",
           "moons", "ScenarioModule"]

#: the check ids of the default rule pack that scenarios are labelled with
CHECK_IDS = frozenset({
    "non-finite", "loss-divergence", "loss-spike", "exploding-gradients", "vanishing-gradients", "dead-units",
    "saturated-activations", "no-progress", "premature-plateau", "train-val-divergence", "unchanged-parameters",
    "update-too-large", "update-too-small", "edge-of-stability",
    # added with the calibration corpus (issue 11)
    "over-regularization", "layers-not-learning", "lr-collapse", "validation-stalled", "oscillating-loss",
    "progressive-sharpening", "catapult",
    # what the model hands to its loss (wrong last-layer activation)
    "softmax-before-loss", "clamped-output",
    # most of the model frozen or in no optimizer (issue 11: the third held-out suite)
    "frozen-parameters",
    # the gradient noise scale (issue 15)
    "noise-dominated",
    # units that are copies of one another (a symmetric initialisation)
    "symmetric-units",
    # a validation loss that drifts up while it stays far below chance (info)
    "val-loss-drift",
})
FAMILIES = ("mlp", "cnn", "resnet", "transformer", "lstm", "hf")

#: monitor options of every scenario (runs are short: per-layer and activation statistics every 10 steps;
#: sharpness only where a scenario turns it on)
MONITOR_DEFAULTS: dict[str, Any] = {"every_n_steps": 10, "sharpness_every_n_steps": 0}

#: digits rows kept for validation in every digits scenario (the last ones of a fixed permutation)
N_VAL = 500


@dataclass
class Setup:
    """What a scenario's ``build()`` returns: the module, its loaders and ``pl.Trainer`` options
    (``max_steps``, validation schedule, clipping...)."""

    module: pl.LightningModule
    train: DataLoader
    val: DataLoader
    trainer: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    """A labelled scenario. ``expected``: check ids that must be found (empty: a healthy run); ``allowed``:
    other ids that may legitimately co-occur; ``build()`` makes a fresh :class:`Setup` (call it after seeding);
    ``monitor``: monitor options of this scenario on top of :data:`MONITOR_DEFAULTS`."""

    name: str
    family: str
    summary: str
    expected: frozenset[str]
    allowed: frozenset[str]
    build: Callable[[], Setup]
    monitor: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"scenario {self.name!r}: family {self.family!r} is not one of {FAMILIES}")
        unknown = (self.expected | self.allowed) - CHECK_IDS
        if unknown:
            raise ValueError(f"scenario {self.name!r}: unknown check ids {sorted(unknown)}")
        if self.expected & self.allowed:
            raise ValueError(f"scenario {self.name!r}: ids both expected and allowed: "
                             f"{sorted(self.expected & self.allowed)}")

    @property
    def has_fix(self) -> bool:
        """Whether ``build(fixed=True)`` trains the same setup with the fault repaired (corpus faults)."""
        import inspect

        return "fixed" in inspect.signature(self.build).parameters

    @property
    def healthy(self) -> bool:
        return not self.expected

    @property
    def monitor_kwargs(self) -> dict[str, Any]:
        """The monitor options this scenario runs with by default."""
        return {**MONITOR_DEFAULTS, **self.monitor}


SCENARIOS: dict[str, Scenario] = {}


def _scenario(name: str, family: str, summary: str, expected: Iterable[str] = (), allowed: Iterable[str] = (),
              **monitor: Any) -> Callable[[Callable[[], Setup]], Callable[[], Setup]]:
    def register(build: Callable[[], Setup]) -> Callable[[], Setup]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} defined twice")
        SCENARIOS[name] = Scenario(name, family, summary, frozenset(expected), frozenset(allowed), build,
                                   dict(monitor))
        return build

    return register


# ----------------------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------------------
_QUIET = (".*does not have many workers.*", ".*GPU available but not used.*", ".*The number of training batches.*",
          ".*replacing the existing run store.*", ".*exists and is not empty.*")


def run_scenario(name: str, out_dir: str | os.PathLike, *, seed: int = 0, progress_bar: bool = False,
                 monitor_kwargs: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (),
                 at_defaults: bool = False, run_name: str | None = None, fixed: bool = False) -> Path:
    """Train scenario ``name`` with a ``DynamicsMonitor`` writing to ``<out_dir>/<run_name or name>`` and return
    that directory.

    ``monitor_kwargs`` override the scenario's monitor options (``Scenario.monitor_kwargs``); ``callbacks`` are
    appended to the trainer's. With ``at_defaults`` the monitor runs at its own defaults (as a user would attach
    it: per-layer statistics every ``log_every_n_steps`` = 50 steps, sharpness on its time budget), ignoring the
    scenario's schedule; ``monitor_kwargs`` still apply. CPU, seeded with ``pl.seed_everything(seed)`` before
    the model and data are built. Runs that go non-finite keep training to the end (Lightning's default) and
    finish normally. ``fixed``: train the scenario with its fault repaired (:attr:`Scenario.has_fix`), the run a
    baseline of the intended training would come from."""
    try:
        sc = SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
    from .._callback import DynamicsMonitor

    run_dir = Path(out_dir) / (run_name or name)
    kwargs = {**({} if at_defaults else sc.monitor_kwargs), **(monitor_kwargs or {})}
    pl.seed_everything(seed, verbose=False)
    if fixed and not sc.has_fix:
        raise ValueError(f"scenario {name!r} has no fixed variant (its build() takes no 'fixed' argument)")
    setup = sc.build(fixed=True) if fixed else sc.build()
    monitor = DynamicsMonitor(dirpath=run_dir, **kwargs)
    log_every = kwargs.get("every_n_steps") or (50 if at_defaults else 10)
    opts: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_model_summary=False, enable_progress_bar=progress_bar,
                                num_sanity_val_steps=0, log_every_n_steps=log_every,
                                default_root_dir=str(run_dir), max_epochs=-1)
    opts.update(setup.trainer)
    trainer = pl.Trainer(callbacks=[monitor, *callbacks], **opts)
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", pattern)
        trainer.fit(setup.module, setup.train, setup.val)
    return run_dir


# ----------------------------------------------------------------------------------------------------------------
# data (shipped with scikit-learn)
# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))  # fixed: the same split for every seed
    return (d.data[perm] / 16.0).astype(np.float32), d.target[perm].astype(np.int64)


def _shape(x: Tensor, shape: str) -> Tensor:
    if shape == "image":
        return x.reshape(len(x), 1, 8, 8)
    if shape == "seq":  # 8 rows of 8 pixels, top to bottom
        return x.reshape(len(x), 8, 8)
    return x


def digits(n_train: int = 1297, *, shape: str = "flat", batch_size: int | None = 32, random_labels: bool = False,
           standardize: bool = False, samples_per_epoch: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Train/val loaders on sklearn digits: ``n_train`` training images (at most 1297) and :data:`N_VAL`
    validation images (disjoint, fixed). ``shape``: ``flat`` (64 features in [0, 1]), ``image`` (1x8x8) or
    ``seq`` (8 rows of 8). ``batch_size=None``: the whole training set in one batch (full-batch GD).
    ``samples_per_epoch``: one epoch draws this many samples (reshuffling after each pass), so that a tiny training
    set does not cost Lightning's per-epoch overhead every few steps."""
    x, y = _digits_arrays()
    n_total = len(y)
    if not 0 < n_train <= n_total - N_VAL:
        raise ValueError(f"digits(n_train={n_train}): expected 1..{n_total - N_VAL}")
    xt, yt = torch.tensor(x), torch.tensor(y)  # copies: batches may be corrupted in place
    if standardize:  # per-pixel, with training statistics (constant border pixels stay 0)
        mean, std = xt[:n_train].mean(0), xt[:n_train].std(0)
        xt = (xt - mean) / std.clamp_min(0.1)
    xt = _shape(xt, shape)
    ytr = yt[:n_train]
    if random_labels:
        ytr = ytr[torch.randperm(n_train, generator=torch.Generator().manual_seed(1))]
    train = TensorDataset(xt[:n_train], ytr)
    val = TensorDataset(xt[n_total - N_VAL:], yt[n_total - N_VAL:])
    val_loader = DataLoader(val, batch_size=N_VAL)
    if batch_size is None:
        return DataLoader(train, batch_size=n_train), val_loader
    if samples_per_epoch:
        sampler = torch.utils.data.RandomSampler(train, num_samples=samples_per_epoch)
        return DataLoader(train, batch_size=batch_size, sampler=sampler), val_loader
    return DataLoader(train, batch_size=batch_size, shuffle=True), val_loader


def moons(n_train: int = 1000, n_val: int = 500, *, noise: float = 0.2, batch_size: int | None = 32
          ) -> tuple[DataLoader, DataLoader]:
    """Two interleaved half-moons (2 features, 2 classes); ``batch_size=None`` for full-batch training."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_train + n_val, noise=noise, random_state=0)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    full = batch_size is None
    return (DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=n_train if full else batch_size,
                       shuffle=not full),
            DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=n_val))


def _trainer(max_steps: int, steps_per_epoch: int, val_points: int = 16, **extra: Any) -> dict[str, Any]:
    """``max_steps`` and a validation schedule giving about ``val_points`` validations over the run."""
    every = max(1, max_steps // val_points)
    if every < steps_per_epoch:
        sched: dict[str, Any] = {"val_check_interval": every}
    else:
        sched = {"check_val_every_n_epoch": max(1, round(every / steps_per_epoch))}
    return {"max_steps": max_steps, **sched, **extra}


# ----------------------------------------------------------------------------------------------------------------
# the Lightning module and networks
# ----------------------------------------------------------------------------------------------------------------
class ScenarioModule(pl.LightningModule):
    """Classifier around ``net``: cross-entropy (or MSE on one-hot targets), logs ``val_loss``/``val_acc``.

    ``optimizer(params) -> Optimizer``; ``schedule(step) -> lr factor`` (a per-step ``LambdaLR``);
    ``corrupt(step, batch)`` may modify a training batch in place before it is used (bad batches)."""

    def __init__(self, net: nn.Module, optimizer: Callable[[Any], torch.optim.Optimizer], *,
                 schedule: Callable[[int], float] | None = None, loss: str = "ce",
                 corrupt: Callable[[int, Any], None] | None = None, hparams: Mapping[str, Any] | None = None):
        super().__init__()
        self.net = net
        self._make_optimizer = optimizer
        self._schedule = schedule
        self._corrupt = corrupt
        self.loss_kind = loss
        if hparams:
            self.save_hyperparameters(dict(hparams))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.loss_kind == "mse":
            return nn.functional.mse_loss(logits, nn.functional.one_hot(y, logits.shape[-1]).to(logits.dtype))
        return nn.functional.cross_entropy(logits, y)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._corrupt is not None:
            self._corrupt(self.trainer.global_step, batch)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.log("train_acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self._loss(logits, y), on_epoch=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self) -> Any:
        opt = self._make_optimizer(self.parameters())
        if self._schedule is None:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def mlp(sizes: Sequence[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of the given widths with ``act`` modules between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _linears(net: nn.Module) -> list[nn.Linear]:
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


def small_cnn(channels: tuple[int, int] = (16, 32), dropout: float = 0.25) -> nn.Sequential:
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 16, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(h + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(h).flatten(1))


class SeqTransformer(nn.Module):
    """Transformer encoder over the 8 rows of a digit, mean-pooled; pre-norm (default) or post-norm."""

    def __init__(self, d: int = 32, heads: int = 4, layers: int = 2, ff: int = 64, dropout: float = 0.1,
                 pre_norm: bool = True):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.randn(1, 8, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, batch_first=True, norm_first=pre_norm)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.head = nn.Linear(d, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(self.norm(h.mean(1)))


class SeqLSTM(nn.Module):
    """LSTM over the 8 rows of a digit; classifies from the last hidden state."""

    def __init__(self, hidden: int = 64, layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class WithForgottenHead(nn.Module):
    """An MLP classifier plus an auxiliary projection head whose loss was never added: the head is trainable
    and computed every forward, but nothing it outputs reaches the loss, so it never gets a gradient."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.body = mlp([64, hidden, hidden], nn.ReLU)
        self.body.append(nn.ReLU())
        self.classifier = nn.Linear(hidden, 10)
        self.aux_head = nn.Linear(hidden, 32)
        self.aux_out: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        self.aux_out = self.aux_head(h.detach())  # meant for an auxiliary loss that training_step forgot
        return self.classifier(h)


class PixelRNN(nn.Module):
    """Vanilla ReLU RNN reading a digit pixel by pixel (64 steps), identity-initialised recurrent weights (IRNN,
    Le et al. 2015): gradients through 64 steps are multiplied by the recurrent Jacobian at every step."""

    def __init__(self, hidden: int = 64, scale: float = 1.0):
        super().__init__()
        self.rnn = nn.RNN(1, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 10)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(torch.eye(hidden) * scale)
            self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_ih_l0.zero_()

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x.reshape(len(x), 64, 1))
        return self.head(out[:, -1])


def bn_mlp(hidden: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                          nesterov=nesterov)


def _adam(lr: float, weight_decay: float = 0.0, decoupled: bool = False):
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return lambda params: cls(params, lr=lr, weight_decay=weight_decay)


def _warmup_cosine(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """lr factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _ramp(start: int, end: int, factor: float) -> Callable[[int], float]:
    """lr factor 1 until ``start``, then exponentially up to ``factor`` at ``end``, held after."""
    def f(step: int) -> float:
        t = min(1.0, max(0.0, (step - start) / (end - start)))
        return factor ** t

    return f


def _init_normal(net: nn.Module, gain: float) -> None:
    """Weights ~ N(0, gain^2 / fan_in), zero biases (gain sqrt(2) is He initialisation)."""
    with torch.no_grad():
        for lin in _linears(net):
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            lin.bias.zero_()


# ----------------------------------------------------------------------------------------------------------------
# healthy scenarios
# ----------------------------------------------------------------------------------------------------------------
@_scenario("healthy-mlp-sgd-small-batch", "mlp",
           "healthy: ReLU MLP, plain SGD with batch 8 -- a noisy but steadily falling loss")
def _healthy_mlp_sgd() -> Setup:
    train, val = digits(batch_size=8)
    module = ScenarioModule(mlp([64, 128, 128, 10]), _sgd(0.05))
    return Setup(module, train, val, _trainer(800, len(train)))


@_scenario("healthy-cnn-adam", "cnn",
           "healthy: small CNN with Adam, converges fast to a near-zero training loss")
def _healthy_cnn_adam() -> Setup:
    train, val = digits(shape="image", batch_size=32)
    return Setup(ScenarioModule(small_cnn(), _adam(2e-3)), train, val, _trainer(400, len(train)))


@_scenario("healthy-cnn-some-dead-relu", "cnn",
           "healthy: CNN where ~40% of the first layer's ReLU channels are dead for good, yet it learns well")
def _healthy_cnn_dead() -> Setup:
    train, val = digits(shape="image", batch_size=32)
    net = small_cnn((32, 32))
    with torch.no_grad():  # a too-negative bias init switches off part of the first layer for good
        net[0].bias[:12].fill_(-3.0)
    module = ScenarioModule(net, _sgd(0.05, momentum=0.9, weight_decay=5e-4))
    return Setup(module, train, val, _trainer(300, len(train)))


@_scenario("healthy-resnet-bn-cosine", "resnet",
           "healthy: small ResNet with BatchNorm, SGD momentum 0.9, weight decay, cosine learning-rate schedule")
def _healthy_resnet() -> Setup:
    train, val = digits(shape="image", batch_size=64)
    steps = 300
    module = ScenarioModule(SmallResNet(16), _sgd(0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
                            schedule=_warmup_cosine(1, steps))
    return Setup(module, train, val, _trainer(steps, len(train)))


@_scenario("healthy-transformer-warmup", "transformer",
           "healthy: 2-layer pre-norm transformer on digit rows, AdamW with linear warmup then cosine decay")
def _healthy_transformer() -> Setup:
    train, val = digits(shape="seq", batch_size=32)
    steps = 450
    module = ScenarioModule(SeqTransformer(), _adam(3e-3, weight_decay=0.01, decoupled=True),
                            schedule=_warmup_cosine(50, steps, floor=0.05))
    return Setup(module, train, val, _trainer(steps, len(train)))


@_scenario("healthy-lstm-adam", "lstm", "healthy: LSTM over digit rows with Adam")
def _healthy_lstm() -> Setup:
    train, val = digits(shape="seq", batch_size=32)
    return Setup(ScenarioModule(SeqLSTM(64), _adam(5e-3)), train, val, _trainer(450, len(train)))


@_scenario("healthy-moons-adamw", "mlp", "healthy: tanh MLP on two moons with AdamW")
def _healthy_moons() -> Setup:
    train, val = moons(batch_size=32)
    module = ScenarioModule(mlp([2, 64, 64, 2], nn.Tanh), _adam(3e-3, weight_decay=1e-2, decoupled=True))
    return Setup(module, train, val, _trainer(400, len(train)))


@_scenario("healthy-full-batch-gd-eos", "mlp",
           "healthy: full-batch GD (MSE) at the edge of stability from the start -- the loss oscillates, "
           "yet falls overall", allowed={"edge-of-stability"}, sharpness_every_n_steps=5)
def _healthy_eos() -> Setup:
    train, val = digits(1000, batch_size=None)
    module = ScenarioModule(mlp([64, 128, 128, 10], nn.Tanh), _sgd(1.0), loss="mse")
    return Setup(module, train, val, _trainer(400, 1))


# ----------------------------------------------------------------------------------------------------------------
# faulty scenarios
# ----------------------------------------------------------------------------------------------------------------
def _nan_at(step: int):
    def corrupt(global_step: int, batch: Any) -> None:
        if global_step == step:
            batch[0][0].fill_(float("nan"))

    return corrupt


@_scenario("nan-input", "mlp", "one training batch carries NaN pixels at step 300: loss and weights turn NaN",
           expected={"non-finite"},
           allowed={"loss-divergence", "loss-spike", "exploding-gradients", "no-progress", "premature-plateau"})
def _nan_input() -> Setup:
    train, val = digits(batch_size=32)
    module = ScenarioModule(mlp([64, 128, 128, 10]), _sgd(0.05, momentum=0.9), corrupt=_nan_at(300))
    return Setup(module, train, val, _trainer(500, len(train)))


@_scenario("lr-too-high-divergence", "mlp",
           "the schedule ramps Adam's lr 300x up after step 200: the loss climbs from ~0.1 to 20-2000 and stays",
           expected={"loss-divergence"},
           allowed={"update-too-large", "exploding-gradients", "loss-spike", "no-progress", "premature-plateau"})
def _divergence() -> Setup:
    train, val = digits(batch_size=32)
    module = ScenarioModule(mlp([64, 128, 128, 10], nn.LeakyReLU), _adam(1e-3), schedule=_ramp(200, 350, 300.0))
    return Setup(module, train, val, _trainer(500, len(train)))


def _shift_labels_at(steps: Sequence[int]):
    def corrupt(global_step: int, batch: Any) -> None:
        if global_step in steps:
            batch[1].add_(1).remainder_(10)

    return corrupt


@_scenario("loss-spike-bad-batch", "mlp",
           "two mislabelled batches (labels off by one) at step 250: the loss spikes 100x, then recovers",
           expected={"loss-spike"}, allowed={"exploding-gradients", "update-too-large"})
def _loss_spike() -> Setup:
    train, val = digits(batch_size=32)
    module = ScenarioModule(mlp([64, 128, 128, 10]), _sgd(0.05, momentum=0.9),
                            corrupt=_shift_labels_at((250, 251)))
    return Setup(module, train, val, _trainer(500, len(train)))


@_scenario("exploding-deep-mlp", "mlp",
           "10-layer plain ReLU MLP initialised with gain 3: gradient norms ~1e3 from the start, masked by clipping",
           expected={"exploding-gradients"},
           allowed={"loss-spike", "no-progress", "premature-plateau", "dead-units"})
def _exploding() -> Setup:
    train, val = digits(batch_size=32)
    net = mlp([64] + [64] * 9 + [10])
    _init_normal(net, 3.0)
    return Setup(ScenarioModule(net, _sgd(0.01)), train, val, _trainer(400, len(train), gradient_clip_val=1.0))


@_scenario("exploding-rnn", "lstm",
           "identity-initialised ReLU RNN over 64 pixels: as recurrent weights grow, gradient norms climb from "
           "~0.5 to 10-700 (clipped)", expected={"exploding-gradients"},
           allowed={"loss-spike", "no-progress", "premature-plateau", "dead-units"})
def _exploding_rnn() -> Setup:
    train, val = digits(batch_size=32)
    return Setup(ScenarioModule(PixelRNN(64, 1.0), _sgd(0.05)), train, val,
                 _trainer(600, len(train), gradient_clip_val=1.0))


@_scenario("vanishing-deep-sigmoid", "mlp",
           "12-layer sigmoid MLP with default init: gradients shrink ~10x per layer, early layers do not learn",
           expected={"vanishing-gradients"},
           allowed={"no-progress", "premature-plateau", "update-too-small", "unchanged-parameters"})
def _vanishing() -> Setup:
    train, val = digits(batch_size=32)
    net = mlp([64] + [64] * 11 + [10], nn.Sigmoid)
    return Setup(ScenarioModule(net, _sgd(0.1)), train, val, _trainer(400, len(train)))


@_scenario("dying-relu", "mlp",
           "Adam at lr 0.05 without warm-up: the first steps kill ~98% of the first layer's ReLUs for good; "
           "the survivors still fit", expected={"dead-units"}, allowed={"loss-spike"})
def _dying_relu() -> Setup:
    train, val = digits(batch_size=32)
    steps = 400
    module = ScenarioModule(mlp([64, 512, 512, 10]), _adam(0.05), schedule=_warmup_cosine(1, steps))
    return Setup(module, train, val, _trainer(steps, len(train)))


@_scenario("saturated-tanh", "mlp",
           "tanh MLP initialised with torch.randn (std 1, no 1/sqrt(fan_in)): most activations sit in the tails",
           expected={"saturated-activations"},
           allowed={"vanishing-gradients", "no-progress", "premature-plateau", "update-too-small"})
def _saturated() -> Setup:
    train, val = digits(batch_size=32, standardize=True)
    net = mlp([64, 1024, 1024, 1024, 10], nn.Tanh)
    with torch.no_grad():
        for lin in _linears(net)[:-1]:
            nn.init.normal_(lin.weight, std=1.0)
    return Setup(ScenarioModule(net, _sgd(0.01)), train, val, _trainer(400, len(train)))


@_scenario("lr-too-small-no-progress", "mlp",
           "SGD lr 1e-4: the loss stays near chance for the whole run (root cause: updates ~1e-6 of the weights)",
           expected={"no-progress", "update-too-small"}, allowed={"premature-plateau"})
def _lr_small() -> Setup:
    train, val = digits(batch_size=32)
    return Setup(ScenarioModule(mlp([64, 128, 128, 10]), _sgd(1e-4)), train, val, _trainer(400, len(train)))


@_scenario("random-labels-no-progress", "mlp",
           "labels shuffled against the images: healthy-sized updates, but the loss stays at chance",
           expected={"no-progress"}, allowed={"premature-plateau", "train-val-divergence"})
def _random_labels() -> Setup:
    train, val = digits(batch_size=32, random_labels=True)
    return Setup(ScenarioModule(mlp([64, 64, 10]), _sgd(0.05, momentum=0.9)), train, val,
                 _trainer(400, len(train)))


@_scenario("premature-plateau-lr-collapse", "cnn",
           "a schedule bug cuts the lr by 1e-4 after 15% of the run: the loss freezes far above where it would go",
           expected={"premature-plateau", "lr-collapse"}, allowed={"update-too-small"})
def _plateau() -> Setup:
    train, val = digits(shape="image", batch_size=32)
    steps = 400
    module = ScenarioModule(small_cnn(), _sgd(0.02, momentum=0.9),
                            schedule=lambda s: 1.0 if s < int(0.15 * steps) else 1e-4)
    return Setup(module, train, val, _trainer(steps, len(train)))


@_scenario("overfitting", "mlp",
           "60 training digits, a wide MLP, Adam for 1000 steps: training loss to ~1e-4 while validation loss "
           "climbs 40-60% above its minimum -- which stays below a fifth of chance (log 10), with validation "
           "accuracy holding at ~85%: mild over-confidence, which three blind held-out suites labelled healthy; "
           "reported as val-loss-drift (info), not as a fault", allowed={"val-loss-drift"})
def _overfitting() -> Setup:
    train, val = digits(60, batch_size=8, samples_per_epoch=8000)
    module = ScenarioModule(mlp([64, 512, 512, 10]), _adam(2e-3))
    return Setup(module, train, val, _trainer(1000, len(train), val_points=30))


@_scenario("unused-layer", "mlp",
           "an auxiliary head whose loss was forgotten: trainable, computed, but never gets a gradient",
           expected={"unchanged-parameters"})
def _unused() -> Setup:
    train, val = digits(batch_size=32)
    module = ScenarioModule(WithForgottenHead(128), _sgd(0.05, momentum=0.9, weight_decay=1e-4))
    return Setup(module, train, val, _trainer(400, len(train)))


@_scenario("update-too-large", "mlp",
           "BatchNorm MLP with SGD lr 1.0 and weight decay 0.02: every step rewrites ~15% of each weight matrix; "
           "the loss stalls high and noisy", expected={"update-too-large"},
           allowed={"premature-plateau", "no-progress", "loss-spike", "train-val-divergence"})
def _update_large() -> Setup:
    train, val = digits(batch_size=32)
    module = ScenarioModule(bn_mlp(128), _sgd(1.0, momentum=0.9, weight_decay=2e-2))
    return Setup(module, train, val, _trainer(400, len(train)))


@_scenario("update-too-small", "mlp", "SGD lr 1e-7: updates are ~1e-8 of the weights, nothing moves",
           expected={"update-too-small"}, allowed={"no-progress", "premature-plateau"})
def _update_small() -> Setup:
    train, val = digits(batch_size=32)
    return Setup(ScenarioModule(mlp([64, 128, 128, 10]), _sgd(1e-7)), train, val, _trainer(400, len(train)))


@_scenario("edge-of-stability-gd", "mlp",
           "full-batch GD (MSE): sharpness rises steadily until it crosses 2/lr, then hovers there "
           "(progressive sharpening); the loss keeps falling", expected={"edge-of-stability", "progressive-sharpening"},
           sharpness_every_n_steps=5)
def _eos() -> Setup:
    train, val = digits(1000, batch_size=None)
    module = ScenarioModule(mlp([64, 128, 128, 10], nn.Tanh), _sgd(0.85), loss="mse")
    return Setup(module, train, val, _trainer(400, 1))


# ----------------------------------------------------------------------------------------------------------------
# more faults, in other families
# ----------------------------------------------------------------------------------------------------------------
@_scenario("dying-relu-cnn-collapse", "cnn",
           "CNN with SGD lr 0.5 + momentum 0.9, no warm-up: within ~10 steps every channel of the second conv "
           "layer dies and the network outputs a constant", expected={"dead-units", "exploding-gradients"},
           allowed={"no-progress", "premature-plateau", "vanishing-gradients", "update-too-small", "loss-spike"})
def _dying_cnn() -> Setup:
    train, val = digits(shape="image", batch_size=32)
    steps = 400
    module = ScenarioModule(small_cnn(), _sgd(0.5, momentum=0.9), schedule=_warmup_cosine(1, steps))
    return Setup(module, train, val, _trainer(steps, len(train)))


@_scenario("lstm-overfitting", "lstm",
           "LSTM on 60 training digits for 800 steps: training loss to ~1e-3 while validation loss climbs ~40%",
           expected={"train-val-divergence"})
def _lstm_overfitting() -> Setup:
    train, val = digits(60, shape="seq", batch_size=8, samples_per_epoch=6400)
    return Setup(ScenarioModule(SeqLSTM(128), _adam(3e-3)), train, val, _trainer(800, len(train), val_points=30))


@_scenario("transformer-postln-no-warmup", "transformer",
           "4-layer post-norm transformer with Adam lr 0.02 and no warm-up: collapses to a constant prediction "
           "in the first steps and never recovers, the gradients of the lower layers vanishing behind the post-LN "
           "stack (Liu et al. 2020; at lr 0.01 it recovers for 4 of 6 seeds)",
           expected={"no-progress", "vanishing-gradients"},
           allowed={"premature-plateau", "update-too-small", "loss-spike"})
def _postln() -> Setup:
    train, val = digits(shape="seq", batch_size=32)
    module = ScenarioModule(SeqTransformer(layers=4, pre_norm=False), _adam(0.02))
    return Setup(module, train, val, _trainer(450, len(train)))


@_scenario("resnet-head-not-in-optimizer", "resnet",
           "the optimizer was built from the backbone only: the classifier head gets gradients but is never "
           "updated; the backbone learns around a random head", expected={"unchanged-parameters"})
def _head_not_in_optimizer() -> Setup:
    train, val = digits(shape="image", batch_size=64)
    net = SmallResNet(16)
    backbone = [p for n, p in net.named_parameters() if not n.startswith("fc.")]
    steps = 300
    module = ScenarioModule(net, lambda params: torch.optim.SGD(backbone, lr=0.1, momentum=0.9, weight_decay=5e-4),
                            schedule=_warmup_cosine(1, steps))
    return Setup(module, train, val, _trainer(steps, len(train)))


# ----------------------------------------------------------------------------------------------------------------
# the gradient noise scale (issue 15)
# ----------------------------------------------------------------------------------------------------------------
def friedman(n_train: int = 2000, n_val: int = 500, *, noise: float = 3.0, batch_size: int = 8
             ) -> tuple[DataLoader, DataLoader]:
    """Regression on sklearn's Friedman #1 function of 10 uniform features (5 of them unused), with Gaussian
    label noise of standard deviation ``noise`` (before the targets are standardised): a loss floor the network
    cannot fit below, so the gradient's signal shrinks while its noise stays."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_train + n_val, noise=noise, random_state=0)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    return (DataLoader(TensorDataset(xt[:n_train], yt[:n_train]), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(xt[n_train:], yt[n_train:]), batch_size=n_val))


class RegressionModule(pl.LightningModule):
    """Mean squared error of a scalar output; logs ``val_loss``."""

    def __init__(self, net: nn.Module, optimizer: Callable[[Any], torch.optim.Optimizer]) -> None:
        super().__init__()
        self.net = net
        self._make_optimizer = optimizer

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), on_epoch=True)

    def configure_optimizers(self) -> Any:
        return self._make_optimizer(self.parameters())


@_scenario("noise-scale", "mlp",
           "healthy: small-batch (8) SGD regression with label noise -- the gradient noise scale grows several-fold "
           "as the loss falls toward its noise floor (McCandlish et al. 2018)", allowed={"noise-dominated"},
           noise_every_n_steps=10)
def _noise_scale() -> Setup:
    train, val = friedman(batch_size=8)
    module = RegressionModule(mlp([10, 64, 64, 1]), _sgd(0.05))
    return Setup(module, train, val, _trainer(1500, len(train)))


# ----------------------------------------------------------------------------------------------------------------
# the calibration corpus (issue 11): more healthy runs and faults, in their own modules
# ----------------------------------------------------------------------------------------------------------------
from . import corpus_faults, corpus_healthy  # noqa: E402,F401  (they register into SCENARIOS)
from . import dynamics  # noqa: E402,F401  (issue 15: lazy-wide, rich-narrow)
