"""Healthy runs of the calibration corpus (registered into dyncheck.scenarios.SCENARIOS).

Every run here trains normally -- a correct tool must not flag it -- yet shows a dynamic that looks alarming out
of context: the loss jumps up at warm restarts or lr cycles, drops suddenly at lr milestones, rises for a few
steps before it falls (catapult), sits on a plateau before a sudden drop, floors far above 0 (label noise, label
smoothing) or at ~1e-6, starts already trained (a resumed / fine-tuned run), or has layers frozen on purpose.

Data ship with scikit-learn or are synthetic (token sequences of a fixed random Markov chain); the Hugging Face
models are built from tiny configs (no download). Training batches are drawn with one fancy index per batch
(:func:`_loader`) and one epoch spans the whole run unless a scheduler needs epochs, so that Lightning's
per-sample and per-epoch overheads stay small.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import lr_scheduler as sched
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from . import (ScenarioModule, Setup, SmallResNet, SeqTransformer, _adam, _scenario, _sgd, _trainer,
               _warmup_cosine, bn_mlp, digits, mlp, moons, small_cnn)

EOS = {"edge-of-stability"}  # the one info-level id a healthy run may report


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def _loader(ds: TensorDataset, batch_size: int | None, steps: int, epoch_steps: int | None = None) -> DataLoader:
    """Training loader for a run of ``steps`` optimizer steps; each batch is one fancy index into ``ds``.
    One epoch is ``epoch_steps`` steps (default: the whole run). ``batch_size=None``: the whole set every step."""
    per_epoch = epoch_steps or steps
    if batch_size is None:
        sampler: Any = [slice(None)] * per_epoch
    else:
        sampler = BatchSampler(RandomSampler(ds, num_samples=per_epoch * batch_size), batch_size, drop_last=True)
    return DataLoader(ds, batch_size=None, sampler=sampler)


def _digits(n_train: int = 1297, shape: str = "flat") -> tuple[TensorDataset, TensorDataset]:
    train, val = digits(n_train, shape=shape)
    return train.dataset, val.dataset


def _moons(noise: float) -> tuple[TensorDataset, TensorDataset]:
    train, val = moons(noise=noise)
    return train.dataset, val.dataset


def _split(x: np.ndarray, y: np.ndarray, n_val: int) -> tuple[TensorDataset, TensorDataset]:
    """The last ``n_val`` rows for validation; features standardised with training statistics."""
    mean, std = x[:-n_val].mean(0), x[:-n_val].std(0) + 1e-8
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long if y.dtype.kind in "iu" else torch.float32)
    return TensorDataset(xt[:-n_val], yt[:-n_val]), TensorDataset(xt[-n_val:], yt[-n_val:])


def _classification(n_train: int = 4000, n_val: int = 1000, **kw: Any) -> tuple[TensorDataset, TensorDataset]:
    """sklearn ``make_classification`` (fixed ``random_state``: the same data for every seed)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n_train + n_val, random_state=0, **kw)
    return _split(x, y, n_val)


def _circles(noise: float = 0.03) -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import make_circles

    x, y = make_circles(n_samples=1500, noise=noise, factor=0.5, random_state=0)
    return _split(x, y, 500)


def _low_rank_regression(n_train: int = 2048, n_val: int = 512, d_in: int = 16, d_out: int = 8,
                         singular_values: Sequence[float] = (4.0, 2.0, 1.0)) -> tuple[TensorDataset, TensorDataset]:
    """Noise-free linear regression ``y = W x`` with a rank-3 ``W`` of distinct singular values."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(d_out, d_out, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g))
    w = sum(s * torch.outer(u[:, i], v[:, i]) for i, s in enumerate(singular_values))
    x = torch.randn(n_train + n_val, d_in, generator=g)
    y = x @ w.T
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


@functools.lru_cache(maxsize=None)
def _markov_chain(vocab: int, concentration: float) -> tuple[np.ndarray, float]:
    """A fixed random transition matrix (rows ~ Dirichlet(concentration)) and its entropy rate in nats: the
    lowest cross-entropy any next-token model can reach on its sequences."""
    rng = np.random.default_rng(0)
    trans = rng.dirichlet(np.full(vocab, concentration), size=vocab)
    evals, evecs = np.linalg.eig(trans.T)
    pi = np.abs(np.real(evecs[:, np.argmin(np.abs(evals - 1))]))
    pi /= pi.sum()
    entropy = float(-(pi[:, None] * trans * np.log(np.clip(trans, 1e-30, None))).sum())
    return trans, entropy


def _markov_lm(vocab: int = 16, seq_len: int = 16, concentration: float = 0.3, n_train: int = 2000,
               n_val: int = 400) -> tuple[TensorDataset, TensorDataset]:
    """Next-token data from :func:`_markov_chain`: inputs ``seq[:-1]``, targets ``seq[1:]`` (fixed sequences)."""
    trans, _ = _markov_chain(vocab, concentration)
    rng = np.random.default_rng(1)
    n = n_train + n_val
    cdf = trans.cumsum(1)
    seq = np.empty((n, seq_len + 1), dtype=np.int64)
    seq[:, 0] = rng.integers(vocab, size=n)
    for t in range(1, seq_len + 1):
        seq[:, t] = np.minimum((rng.random(n)[:, None] > cdf[seq[:, t - 1]]).sum(1), vocab - 1)
    s = torch.tensor(seq)
    return (TensorDataset(s[:n_train, :-1], s[:n_train, 1:]), TensorDataset(s[n_train:, :-1], s[n_train:, 1:]))


def _marker_task(n_train: int = 3000, n_val: int = 500, seq_len: int = 16, vocab: int = 32,
                 classes: int = 2) -> tuple[TensorDataset, TensorDataset]:
    """Sequence classification: ``[CLS]`` then random filler tokens, with one marker token (id = label + 1) at a
    random position; the model must attend from ``[CLS]`` to the marker."""
    g = torch.Generator().manual_seed(0)
    n = n_train + n_val
    x = torch.randint(classes + 2, vocab, (n, seq_len), generator=g)
    x[:, 0] = classes + 1  # [CLS]; markers are 1..classes; 0 (BERT's padding id) never occurs
    y = torch.randint(0, classes, (n,), generator=g)
    pos = torch.randint(1, seq_len, (n,), generator=g)
    x[torch.arange(n), pos] = y + 1
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


# ----------------------------------------------------------------------------------------------------------------
# module, losses, schedulers
# ----------------------------------------------------------------------------------------------------------------
def _token_ce(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy over every position of ``(batch, time, vocab)`` logits."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _one_hot_mse(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))


class CorpusModule(ScenarioModule):
    """:class:`ScenarioModule` with any loss ``loss_fn(output, target)`` and any lr scheduler
    (``scheduler(optimizer) -> Lightning lr_scheduler config``), without per-step logging in ``training_step``.
    ``accuracy``: also log ``val_acc`` (argmax over the last axis)."""

    def __init__(self, net: nn.Module, optimizer: Callable[[Any], torch.optim.Optimizer], *,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                 scheduler: Callable[[torch.optim.Optimizer], dict[str, Any]] | None = None,
                 schedule: Callable[[int], float] | None = None, accuracy: bool = True):
        super().__init__(net, optimizer, schedule=schedule)
        self._loss_fn = loss_fn
        self._scheduler = scheduler
        self._accuracy = accuracy

    def _loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self._loss_fn(out, y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return self._loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val_loss", self._loss(out, y), on_epoch=True)
        if self._accuracy:
            self.log("val_acc", (out.argmax(-1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self) -> Any:
        if self._scheduler is None:
            return super().configure_optimizers()
        opt = self._make_optimizer(self.parameters())
        return {"optimizer": opt, "lr_scheduler": self._scheduler(opt)}


def _adamw(lr: float, weight_decay: float = 0.01):
    """AdamW with the multi-tensor (foreach) update: fewer small kernels per step for models with many tensors."""
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def _per_step(make: Callable[[torch.optim.Optimizer], Any]) -> Callable[[torch.optim.Optimizer], dict[str, Any]]:
    """A torch lr scheduler stepped after every optimizer step."""
    return lambda opt: {"scheduler": make(opt), "interval": "step"}


def _setup(module: pl.LightningModule, data: tuple[TensorDataset, TensorDataset], steps: int, batch_size: int | None,
           *, val_points: int = 16, epoch_steps: int | None = None, accumulate: int = 1, **trainer: Any) -> Setup:
    """Loaders for ``data`` (train, val), and a trainer for ``steps`` optimizer steps (of ``accumulate`` batches
    each) validating ``val_points`` times."""
    train_ds, val_ds = data
    train = _loader(train_ds, batch_size, steps * accumulate, epoch_steps and epoch_steps * accumulate)
    val = DataLoader(val_ds, batch_size=None, sampler=[slice(None)])  # the whole validation set, one batch
    if accumulate > 1:  # Lightning schedules validation in batches, not optimizer steps
        trainer["accumulate_grad_batches"] = accumulate
    opts = _trainer(steps * accumulate, len(train), val_points, **trainer)
    return Setup(module, train, val, {**opts, "max_steps": steps})


def _pretrain(net: nn.Module, ds: TensorDataset, steps: int, *, lr: float = 3e-3, batch_size: int = 32,
              loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> nn.Module:
    """Train ``net`` with Adam in a plain loop before the recorded run starts: that run resumes a trained model."""
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    for idx in BatchSampler(RandomSampler(ds, num_samples=steps * batch_size), batch_size, drop_last=True):
        x, y = ds[idx]
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


# ----------------------------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------------------------
def _linear_stack(sizes: Sequence[int], init: float) -> nn.Sequential:
    """A deep linear network (no bias, no activation), weights ~ N(0, init^2 / fan_in)."""
    layers = [nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:])]
    for lin in layers:
        nn.init.normal_(lin.weight, std=init / math.sqrt(lin.in_features))
    return nn.Sequential(*layers)


def _mixed_mlp(dropout: float = 0.3) -> nn.Sequential:
    """GELU, SiLU and tanh layers with dropout between them."""
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Dropout(dropout), nn.Linear(128, 128), nn.SiLU(),
                         nn.Dropout(dropout), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10))


class FixedFeatureMLP(nn.Module):
    """An MLP over the input concatenated with fixed random features: the projection is a parameter with
    ``requires_grad=False`` (random features, by design), and the module carries a ``temperature`` buffer kept for
    export-time calibration that the forward pass never reads, plus a non-persistent feature mask it does read."""

    def __init__(self, n_random: int = 64, hidden: int = 128):
        super().__init__()
        self.projection = nn.Parameter(torch.randn(64, n_random) / 8.0, requires_grad=False)
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("mask", (torch.arange(64 + n_random) % 9 != 8).float(), persistent=False)
        self.net = mlp([64 + n_random, hidden, hidden, 10])

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([x, torch.cos(x @ self.projection)], 1) * self.mask
        return self.net(h)


class Lazy(nn.Module):
    """Lazy training (Chizat & Bach): ``alpha * (net(x) - net_init(x))`` with a frozen copy ``net_init`` of the
    initial network. With a large ``alpha`` (and lr / alpha^2) the output trains like its linearisation at init
    while the weights barely move."""

    def __init__(self, net: nn.Module, alpha: float):
        super().__init__()
        self.net = net
        self.init = copy.deepcopy(net).requires_grad_(False)
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha * (self.net(x) - self.init(x))


def bn_cnn(channels: tuple[int, int] = (8, 16)) -> nn.Sequential:
    c1, c2 = channels
    return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
                         nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(c2 * 16, 10))


class Recurrent(nn.Module):
    """LSTM or GRU over a sequence. ``vocab``: token ids, embedded, logits at every position (a language model);
    else feature vectors of size ``features``, classified from the last hidden state."""

    def __init__(self, cell: type[nn.Module] = nn.LSTM, hidden: int = 64, *, features: int = 8,
                 vocab: int | None = None, classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden) if vocab else None
        self.rnn = cell(hidden if vocab else features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab or classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(self.embed(x) if self.embed is not None else x)
        return self.head(out if self.embed is not None else out[:, -1])


class CausalLM(nn.Module):
    """A small pre-norm causal transformer language model (GELU feed-forward)."""

    def __init__(self, vocab: int, seq_len: int, d: int = 32, heads: int = 4, layers: int = 2, ff: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq_len, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, ff, 0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        h = self.blocks(self.tok(x) + self.pos[:, :t], mask=self.causal[:t, :t], is_causal=True)
        return self.head(self.norm(h))


class HFLogits(nn.Module):
    """A Hugging Face model as a plain ``input_ids -> logits`` module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(input_ids=x).logits


def _top_hessian_eig(net: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> float:
    from ..measure.sharpness import hvp_operator, lanczos_top_eig

    matvec, n = hvp_operator(loss_fn(net(x), y), [p for p in net.parameters() if p.requires_grad])
    return lanczos_top_eig(matvec, n, max_iter=30).value


# ----------------------------------------------------------------------------------------------------------------
# learning-rate schedules: what they do to the loss
# ----------------------------------------------------------------------------------------------------------------
def _warmup_milestones(warmup: int, milestones: Sequence[int], gamma: float = 0.1) -> Callable[[int], float]:
    """lr factor: linear warm-up over ``warmup`` steps, then times ``gamma`` at each milestone."""
    return lambda s: min(1.0, (s + 1) / warmup) * gamma ** sum(s >= m for m in milestones)


def _warmup_linear(warmup: int, total: int) -> Callable[[int], float]:
    """lr factor: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    return lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup)))


_DIGITS_MLP = (64, 128, 64, 10)


@_scenario("healthy-mlp-multistep-decay", "mlp",
           "healthy: SGD momentum, batch 16, MultiStepLR x0.1 at steps 400 and 700 -- the noisy loss drops "
           "suddenly at each milestone")
def _multistep() -> Setup:
    module = CorpusModule(mlp(_DIGITS_MLP), _sgd(0.1, momentum=0.9, weight_decay=5e-4),
                          scheduler=_per_step(lambda o: sched.MultiStepLR(o, [400, 700], 0.1)))
    return _setup(module, _digits(), 1000, 16)


@_scenario("healthy-mlp-cosine-warm-restarts", "mlp",
           "healthy: SGD momentum with CosineAnnealingWarmRestarts (T_0=250) -- the loss jumps back up at every "
           "restart, then falls lower than before")
def _warm_restarts() -> Setup:
    module = CorpusModule(mlp(_DIGITS_MLP), _sgd(0.2, momentum=0.9, weight_decay=5e-4),
                          scheduler=_per_step(lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=250)))
    return _setup(module, _digits(), 1000, 32)


@_scenario("healthy-mlp-one-cycle", "mlp",
           "healthy: OneCycleLR (SGD Nesterov, peak lr 0.15 at 30%) -- progress stalls and the loss wobbles "
           "around the peak, then falls fast in the annealing phase", allowed=EOS)
def _one_cycle() -> Setup:
    steps = 1000
    module = CorpusModule(mlp(_DIGITS_MLP), _sgd(0.15, momentum=0.9, nesterov=True, weight_decay=1e-4),
                          scheduler=_per_step(lambda o: sched.OneCycleLR(o, max_lr=0.15, total_steps=steps)))
    return _setup(module, _digits(), steps, 32)


@_scenario("healthy-mlp-cyclic-lr", "mlp",
           "healthy: CyclicLR (triangular2) between 0.005 and 0.3, a 200-step period -- the loss oscillates with "
           "the learning rate, rising in every up-ramp")
def _cyclic() -> Setup:
    module = CorpusModule(mlp(_DIGITS_MLP), _sgd(0.3, momentum=0.9),
                          scheduler=_per_step(lambda o: sched.CyclicLR(o, 0.005, 0.3, step_size_up=100,
                                                                       mode="triangular2")))
    return _setup(module, _digits(), 1000, 32)


def _reduce_on_plateau(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """ReduceLROnPlateau on ``val_loss``, stepped at every epoch end (the run validates once per epoch)."""
    plateau = sched.ReduceLROnPlateau(opt, factor=0.3, patience=1, threshold=0.02)
    return {"scheduler": plateau, "interval": "epoch", "monitor": "val_loss"}


@_scenario("healthy-mlp-reduce-on-plateau", "mlp",
           "healthy: Adam with ReduceLROnPlateau on val_loss (x0.3 when it improves <2% for 2 validations) -- "
           "the loss flattens, the lr drops, small steps down follow")
def _plateau_lr() -> Setup:
    steps, every = 1000, 62
    data = _classification(n_features=20, n_informative=10, n_classes=5, class_sep=1.0, flip_y=0.02)
    module = CorpusModule(mlp([20, 128, 64, 5]), _adam(3e-3),
                          scheduler=_reduce_on_plateau)
    return _setup(module, data, steps, 32, epoch_steps=every)


@_scenario("healthy-mlp-warmup-linear-decay-nesterov", "mlp",
           "healthy: random-feature MLP (a frozen projection parameter and an unused buffer, by design), SGD "
           "Nesterov, linear warm-up then linear decay to 0")
def _linear_decay() -> Setup:
    steps = 1000
    module = CorpusModule(FixedFeatureMLP(), _sgd(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
                          schedule=_warmup_linear(100, steps))
    return _setup(module, _digits(), steps, 32)


@_scenario("healthy-mlp-anneal-tail", "mlp",
           "healthy: Adam at a constant lr for 70% of the run, then a 100x lower lr for a fine-tuning tail -- "
           "the loss freezes for the last 30%, after it had converged")
def _anneal_tail() -> Setup:
    steps = 1000
    module = CorpusModule(mlp(_DIGITS_MLP), _adam(2e-3, weight_decay=1e-4),
                          schedule=lambda s: 1.0 if s < 0.7 * steps else 0.01)
    return _setup(module, _digits(), steps, 32)


# ----------------------------------------------------------------------------------------------------------------
# noise, floors, imbalance
# ----------------------------------------------------------------------------------------------------------------
@_scenario("healthy-mlp-batch2-sgd", "mlp",
           "healthy: plain SGD with batch 2 at a constant lr -- the per-step loss jumps between ~0 and 3+, "
           "validation improves steadily", allowed=EOS)
def _batch2() -> Setup:
    return _setup(CorpusModule(mlp(_DIGITS_MLP), _sgd(0.02)), _digits(), 1500, 2)


@_scenario("healthy-mlp-label-smoothing", "mlp",
           "healthy: cross-entropy with label smoothing 0.3 (AdamW, warm-up + cosine) -- train and validation "
           "loss floor at ~1.2, far above 0")
def _label_smoothing() -> Setup:
    steps = 1000
    module = CorpusModule(mlp(_DIGITS_MLP), _adam(2e-3, weight_decay=0.01, decoupled=True),
                          loss_fn=functools.partial(F.cross_entropy, label_smoothing=0.3),
                          schedule=_warmup_cosine(50, steps))
    return _setup(module, _digits(), steps, 32)


@_scenario("healthy-mlp-class-imbalance", "mlp",
           "healthy: binary task with 5% positives, Adam -- the loss falls to the prior's entropy at once, then "
           "improves slowly; batches with several positives spike")
def _imbalance() -> Setup:
    data = _classification(n_features=20, n_informative=6, weights=[0.95, 0.05], class_sep=1.0, flip_y=0.0)
    return _setup(CorpusModule(mlp([20, 64, 64, 2]), _adam(1e-3)), data, 1000, 32)


@_scenario("healthy-mlp-noisy-moons-floor", "mlp",
           "healthy: two moons with noise 0.3, SGD momentum -- the loss floors at ~0.2 within 10% of the run and "
           "stays there; validation is flat at ~0.23")
def _noisy_moons() -> Setup:
    module = CorpusModule(mlp([2, 32, 32, 2], nn.Tanh), _sgd(0.05, momentum=0.9))
    return _setup(module, _moons(0.3), 1000, 16)


@_scenario("healthy-mlp-label-noise-floor", "mlp",
           "healthy: 3 classes with 30% of labels flipped at random (flip_y), AdamW -- the loss floors near 0.7 "
           "early (validation ~0.78), then is flat or improves slowly")
def _label_noise() -> Setup:
    data = _classification(n_features=20, n_informative=10, n_classes=3, class_sep=1.5, flip_y=0.3)
    module = CorpusModule(mlp([20, 64, 3]), _adam(1e-3, weight_decay=0.05, decoupled=True))
    return _setup(module, data, 1000, 32)


class _SoftmaxOut(nn.Module):
    """A classifier that returns probabilities (softmax in forward), trained with NLL on their log: correct."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.net(x), -1)


def _nll_of_probs(p: Tensor, y: Tensor) -> Tensor:
    return F.nll_loss(torch.log(p.clamp_min(1e-12)), y)


@_scenario("healthy-mlp-softmax-output-nll", "mlp",
           "healthy: a classifier that returns probabilities (softmax in forward) and is trained with NLLLoss on "
           "their log, with 30% of the labels flipped -- probability rows go into the loss, which floors near 1.3, "
           "not at the 1.46 of a softmax applied twice")
def _softmax_nll() -> Setup:
    data = _classification(n_features=20, n_informative=10, n_classes=10, n_clusters_per_class=1, class_sep=2.0,
                           flip_y=0.3)
    module = CorpusModule(_SoftmaxOut(mlp([20, 64, 10])), _adam(1e-3), loss_fn=_nll_of_probs, accuracy=False)
    return _setup(module, data, 800, 32)


def _relu_targets(n_train: int = 1000, n_val: int = 500) -> tuple[TensorDataset, TensorDataset]:
    """Friedman #1, standardised and clamped at 0: a non-negative target, 0 for about half of the points."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_train + n_val, noise=0.3, random_state=0)
    y = np.maximum((y - y.mean()) / y.std(), 0.0)
    return _split(x, y[:, None], n_val)


@_scenario("healthy-mlp-relu-head-nonnegative-target", "mlp",
           "healthy: a regression head that ends in a ReLU on a target that is 0 for half of the points, MSE with "
           "Adam -- about half the outputs are exactly 0, where the target is 0 too")
def _relu_nonneg() -> Setup:
    net = mlp([10, 64, 64, 1])
    net.append(nn.ReLU())
    module = CorpusModule(net, _adam(3e-3), loss_fn=F.mse_loss, accuracy=False)
    return _setup(module, _relu_targets(), 1000, 32)


@_scenario("healthy-mlp-separable-loss-to-zero", "mlp",
           "healthy: noise-free concentric circles (separable), Adam lr 0.01 -- cross-entropy falls to ~5e-6 "
           "and keeps shrinking slowly; gradients become tiny")
def _separable() -> Setup:
    return _setup(CorpusModule(mlp([2, 64, 64, 2]), _adam(1e-2)), _circles(), 1000, 32)


# ----------------------------------------------------------------------------------------------------------------
# starting trained, frozen parts
# ----------------------------------------------------------------------------------------------------------------
@_scenario("healthy-mlp-finetune-resume", "mlp",
           "healthy: the MLP is pretrained (Adam, 400 steps) before the recorded run, which resumes with SGD lr "
           "0.01 -- the loss starts at ~0.03 (chance: 2.3) and improves little in absolute terms")
def _resume() -> Setup:
    train, val = _digits()
    net = _pretrain(mlp(_DIGITS_MLP), train, 400)
    return _setup(CorpusModule(net, _sgd(0.01, momentum=0.9)), (train, val), 1000, 32)


@_scenario("healthy-mlp-frozen-backbone", "mlp",
           "healthy: a pretrained MLP body is frozen (requires_grad=False) and a fresh linear head is trained on "
           "top -- most layers never change, on purpose")
def _frozen_mlp() -> Setup:
    train, val = _digits()
    net = _pretrain(mlp(_DIGITS_MLP), train, 300)
    net.requires_grad_(False)
    net[-1] = nn.Linear(64, 10)
    return _setup(CorpusModule(net, _sgd(0.01, momentum=0.9)), (train, val), 1000, 32)


# ----------------------------------------------------------------------------------------------------------------
# plateaus, full-batch GD, large-lr regimes
# ----------------------------------------------------------------------------------------------------------------
@_scenario("healthy-mlp-deep-linear-staircase", "mlp",
           "healthy: 4-layer deep linear net from a small init on noise-free rank-3 regression -- long plateaus "
           "with sudden drops (one per singular value), ending at 1e-6..1e-4")
def _staircase() -> Setup:
    module = CorpusModule(_linear_stack([16, 32, 32, 32, 8], 0.2), _sgd(0.05), loss_fn=F.mse_loss,
                          accuracy=False)
    return _setup(module, _low_rank_regression(), 1500, 64)


@_scenario("healthy-mlp-full-batch-gd-slow", "mlp",
           "healthy: full-batch GD with a small lr -- a smooth, slow and steady fall, still far from converged")
def _gd_slow() -> Setup:
    return _setup(CorpusModule(mlp(_DIGITS_MLP), _sgd(0.05)), _digits(500), 800, None)


@_scenario("healthy-mlp-catapult", "mlp",
           "healthy: wide MLP, MSE, full-batch GD at lr = 3/sharpness(init) -- the loss climbs ~10x in the first "
           "steps while sharpness collapses (catapult), then falls steadily", allowed=EOS | {"catapult"})
def _catapult() -> Setup:
    train, val = _digits(256)
    net = mlp([64, 1024, 10])
    lr = 3.0 / _top_hessian_eig(net, _one_hot_mse, *train.tensors)
    module = CorpusModule(net, _sgd(lr), loss_fn=_one_hot_mse)
    return _setup(module, (train, val), 450, None)


@_scenario("healthy-mlp-gd-edge-of-stability-moons", "mlp",
           "healthy: full-batch GD, cross-entropy, lr 1.0 on noisy moons -- sharpness sits at 2/lr all run and the "
           "loss rises on ~45% of steps, yet falls to its noise floor", allowed=EOS)
def _eos_moons() -> Setup:
    return _setup(CorpusModule(mlp([2, 64, 64, 2], nn.Tanh), _sgd(1.0)), _moons(0.3), 1000, None)


@_scenario("healthy-mlp-clip-always-active", "mlp",
           "healthy: SGD momentum with gradient_clip_val=0.05, below the gradient norm almost every step -- "
           "clipping is active throughout and harmless")
def _clip() -> Setup:
    module = CorpusModule(mlp(_DIGITS_MLP), _sgd(0.1, momentum=0.9))
    return _setup(module, _digits(), 1000, 32, gradient_clip_val=0.05)


@_scenario("healthy-mlp-mixed-acts-dropout", "mlp",
           "healthy: GELU/SiLU/tanh MLP with dropout 0.3, AdamW weight decay 0.05, warm-up + cosine -- the "
           "training loss, measured with dropout on, stays noisy and about as high as the validation loss")
def _mixed() -> Setup:
    steps = 800
    module = CorpusModule(_mixed_mlp(), _adam(2e-3, weight_decay=0.05, decoupled=True),
                          schedule=_warmup_cosine(50, steps))
    return _setup(module, _digits(), steps, 32)


@_scenario("healthy-mlp-batchnorm-batch4", "mlp",
           "healthy: BatchNorm MLP trained with batch 4 (SGD momentum, cosine decay, running-statistics "
           "momentum 0.01) -- noisy batch statistics keep the training loss jumpy; validation improves", allowed=EOS)
def _bn_batch4() -> Setup:
    steps, net = 1000, bn_mlp(64)
    for bn in net.modules():
        if isinstance(bn, nn.BatchNorm1d):
            bn.momentum = 0.01
    module = CorpusModule(net, _sgd(0.02, momentum=0.9), schedule=_warmup_cosine(1, steps))
    return _setup(module, _digits(), steps, 4)


@_scenario("healthy-mlp-lazy-regime", "mlp",
           "healthy: lazy training, output 1000 * (f(x) - f_init(x)) with SGD lr 1e-6 -- weights move ~1e-5 of "
           "their norm per step (~1% over the run), yet the loss falls like a kernel method's")
def _lazy() -> Setup:
    alpha = 1000.0
    return _setup(CorpusModule(Lazy(mlp([64, 256, 256, 10]), alpha), _sgd(1.0 / alpha**2, momentum=0.9)),
                  _digits(), 800, 32)


@_scenario("healthy-mlp-grad-accumulation", "mlp",
           "healthy: Adam on batches of 8 with accumulate_grad_batches=4 (an effective batch of 32) -- one "
           "optimizer step per 4 batches")
def _accumulation() -> Setup:
    return _setup(CorpusModule(mlp(_DIGITS_MLP), _adam(1e-3)), _digits(), 300, 8, accumulate=4)


# ----------------------------------------------------------------------------------------------------------------
# CNN, ResNet
# ----------------------------------------------------------------------------------------------------------------
@_scenario("healthy-cnn-step-lr", "cnn",
           "healthy: small CNN, SGD momentum, StepLR x0.3 every 200 steps -- a staircase of sudden loss drops")
def _cnn_step() -> Setup:
    module = CorpusModule(small_cnn((8, 16), dropout=0.1), _sgd(0.05, momentum=0.9, weight_decay=5e-4),
                          scheduler=_per_step(lambda o: sched.StepLR(o, 200, 0.3)))
    return _setup(module, _digits(shape="image"), 600, 16)


@_scenario("healthy-cnn-batchnorm-batch4", "cnn",
           "healthy: CNN with BatchNorm trained with batch 4 (Adam) -- very noisy loss and BN statistics")
def _cnn_bn4() -> Setup:
    return _setup(CorpusModule(bn_cnn(), _adam(1e-3)), _digits(shape="image"), 600, 4)


@_scenario("healthy-cnn-frozen-backbone", "cnn",
           "healthy: convolutions pretrained then frozen (requires_grad=False), a new head trained with AdamW -- "
           "a linear probe: most of the network never changes, on purpose")
def _cnn_frozen() -> Setup:
    train, val = _digits(shape="image")
    net = _pretrain(small_cnn((8, 16), dropout=0.1), train, 150)
    net.requires_grad_(False)
    net[-1] = nn.Linear(16 * 16, 10)
    module = CorpusModule(net, _adam(3e-3, weight_decay=0.01, decoupled=True))
    return _setup(module, (train, val), 600, 32)


@_scenario("healthy-resnet-warmup-multistep", "resnet",
           "healthy: ResNet with BatchNorm, SGD Nesterov, 30-step warm-up then lr x0.1 at 50% and 75% -- sudden "
           "drops at the milestones")
def _resnet_multistep() -> Setup:
    steps = 300
    module = CorpusModule(SmallResNet(8), _sgd(0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
                          schedule=_warmup_milestones(30, (steps // 2, 3 * steps // 4)))
    return _setup(module, _digits(shape="image"), steps, 32)


@_scenario("healthy-resnet-adamw-warm-restarts", "resnet",
           "healthy: ResNet with BatchNorm, AdamW with cosine warm restarts every 100 steps -- the loss jumps up at "
           "each restart")
def _resnet_restarts() -> Setup:
    module = CorpusModule(SmallResNet(8), _adam(3e-3, weight_decay=0.05, decoupled=True),
                          scheduler=_per_step(lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=100)))
    return _setup(module, _digits(shape="image"), 300, 32)


@_scenario("healthy-resnet-zero-init-residual", "resnet",
           "healthy: ResNet whose blocks' last BatchNorm gains start at 0 (Goyal et al. 2017: each block starts as "
           "the identity), SGD momentum with weight decay and warm-up + cosine -- those BatchNorms output 0 for "
           "every sample at the start, then come alive")
def _resnet_zero_residual() -> Setup:
    steps = 300
    net = SmallResNet(8)
    with torch.no_grad():
        for block in (net.layer1, net.layer2, net.layer3):
            block.bn2.weight.zero_()
    module = CorpusModule(net, _sgd(0.1, momentum=0.9, weight_decay=5e-4), schedule=_warmup_cosine(30, steps))
    return _setup(module, _digits(shape="image"), steps, 32)


# ----------------------------------------------------------------------------------------------------------------
# transformers, recurrent nets
# ----------------------------------------------------------------------------------------------------------------
_LM = dict(vocab=16, seq_len=16, concentration=0.3)


@_scenario("healthy-transformer-causal-lm-floor", "transformer",
           "healthy: pre-norm causal transformer LM on a fixed random Markov chain, AdamW, warm-up + linear "
           "decay -- the loss reaches the chain's entropy floor (1.97 nats, far above 0) and flattens")
def _causal_lm() -> Setup:
    steps = 300
    module = CorpusModule(CausalLM(_LM["vocab"], _LM["seq_len"]), _adamw(3e-3), loss_fn=_token_ce,
                          schedule=_warmup_linear(30, steps))
    return _setup(module, _markov_lm(**_LM), steps, 16)


@_scenario("healthy-transformer-lm-adamw-decay-0.1", "transformer",
           "healthy: the causal transformer LM with GPT-style AdamW (decay 0.1 on every weight, lr 3e-3: 3e-4 of "
           "each weight per step), warm-up + linear decay -- down to the chain's entropy floor")
def _causal_lm_decay() -> Setup:
    steps = 300
    module = CorpusModule(CausalLM(_LM["vocab"], _LM["seq_len"]), _adamw(3e-3, weight_decay=0.1),
                          loss_fn=_token_ce, schedule=_warmup_linear(30, steps))
    return _setup(module, _markov_lm(**_LM), steps, 16)


@_scenario("healthy-transformer-one-cycle-clip", "transformer",
           "healthy: pre-norm transformer on digit rows, AdamW with OneCycleLR and gradient clipping at 1.0 -- the "
           "loss sits near chance while the lr is still tiny, then falls fast")
def _tf_onecycle() -> Setup:
    steps = 250
    module = CorpusModule(SeqTransformer(), _adamw(3e-3),
                          scheduler=_per_step(lambda o: sched.OneCycleLR(o, max_lr=3e-3, total_steps=steps)))
    return _setup(module, _digits(shape="seq"), steps, 32, gradient_clip_val=1.0)


@_scenario("healthy-lstm-gru-sgd-clip", "lstm",
           "healthy: GRU over digit rows, SGD momentum, cosine decay, gradient clipping at 1.0 -- a slow start "
           "(the loss sits at chance for ~10% of the run), then steady")
def _gru() -> Setup:
    steps = 450
    module = CorpusModule(Recurrent(nn.GRU, 64), _sgd(0.1, momentum=0.9), schedule=_warmup_cosine(1, steps))
    return _setup(module, _digits(shape="seq"), steps, 32, gradient_clip_val=1.0)


@_scenario("healthy-rnn-tanh-digits-adam", "lstm",
           "healthy: an Elman RNN (tanh) over digit rows at Adam 1e-2 -- aggressive for a tanh recurrence: many "
           "hidden states sit in tanh's flat tails while it learns")
def _rnn_tanh_adam() -> Setup:
    module = CorpusModule(Recurrent(nn.RNN, 64), _adam(1e-2))
    return _setup(module, _digits(shape="seq"), 450, 32)


@_scenario("healthy-rnn-tanh-lm-sgd-clip", "lstm",
           "healthy: an Elman RNN (tanh) language model, SGD 0.5 with gradient clipping at 1.0: the loss falls "
           "from log(vocab) towards the chain's entropy floor, slowly")
def _rnn_tanh_lm() -> Setup:
    module = CorpusModule(Recurrent(nn.RNN, 64, vocab=_LM["vocab"]), _sgd(0.5), loss_fn=_token_ce)
    return _setup(module, _markov_lm(**_LM), 500, 32, gradient_clip_val=1.0)


@_scenario("healthy-lstm-lm-resume-at-floor", "lstm",
           "healthy: LSTM language model pretrained to the Markov chain's entropy floor before the run, which "
           "resumes at a low lr -- the loss starts at the floor and barely moves")
def _lstm_resume() -> Setup:
    train, val = _markov_lm(**_LM)
    net = _pretrain(Recurrent(nn.LSTM, 32, vocab=_LM["vocab"]), train, 200, lr=1e-2, loss_fn=_token_ce)
    module = CorpusModule(net, _adam(3e-4), loss_fn=_token_ce)
    return _setup(module, (train, val), 400, 32)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face models from tiny configs (transformers imported inside build())
# ----------------------------------------------------------------------------------------------------------------
def _hf_warmup(warmup: int, steps: int) -> Callable[[torch.optim.Optimizer], dict[str, Any]]:
    from transformers import get_linear_schedule_with_warmup

    return _per_step(lambda o: get_linear_schedule_with_warmup(o, warmup, steps))


@_scenario("healthy-hf-gpt2-markov-lm", "hf",
           "healthy: 2-layer GPT2LMHeadModel (tiny config) on Markov-chain tokens, AdamW + linear warm-up -- the "
           "loss falls to ~2.05, near the chain's entropy floor (1.97 nats), and flattens while validation still "
           "edges down")
def _gpt2() -> Setup:
    from transformers import GPT2Config, GPT2LMHeadModel

    steps = 200
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=_LM["vocab"], n_positions=_LM["seq_len"],
                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    module = CorpusModule(HFLogits(GPT2LMHeadModel(cfg)), _adamw(3e-3), loss_fn=_token_ce,
                          scheduler=_hf_warmup(20, steps))
    return _setup(module, _markov_lm(**_LM), steps, 16)


@_scenario("healthy-hf-bert-marker-classification", "hf",
           "healthy: 2-layer BertForSequenceClassification (tiny config) telling which of two marker tokens hides "
           "among fillers, AdamW + linear warm-up -- a plateau at chance (ln 2), then a sudden drop to ~1e-3")
def _bert() -> Setup:
    from transformers import BertConfig, BertForSequenceClassification

    steps, seq_len = 200, 12
    cfg = BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=seq_len, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    module = CorpusModule(HFLogits(BertForSequenceClassification(cfg)), _adamw(3e-3),
                          scheduler=_hf_warmup(30, steps))
    return _setup(module, _marker_task(seq_len=seq_len, classes=2), steps, 16)
