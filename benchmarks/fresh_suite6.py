"""A sixth, independent held-out suite for the default check pack: realistic Lightning runs, healthy and faulty,
written blind -- without reference to the calibration corpus (``dyncheck/scenarios/``), the pack's rules and
detectors (``rules/``, ``dyncheck/checks/``), the monitor's collectors and measures, or the runs of the earlier
held-out suites (only their run names were read, so as not to repeat a scenario; the check ids and what each flags
come from the README, as a user would read them; the harness -- CLI, worker pool, evaluation and summary -- is the
shared ``benchmarks/_suite.py``). Every fault's ``expected`` ids were fixed before any run of this suite was trained.

Each run is ordinary Lightning code (own LightningModules, own DataLoaders, ``pl.Trainer(max_steps=...)``) with
``DynamicsMonitor(dirpath=...)`` at its default options. Healthy runs are what people train, many of them alarming to
look at but normal: an inverse-square-root schedule, a cubic polynomial decay, step-wise warm restarts, an
exponential lr ramp (range-test style) capped and held, batch size 2, label smoothing 0.3, CutMix on a BatchNorm
ResNet, runs resumed at their floor (a classifier and a regression), a frozen pre-trained CNN backbone, gradient
clipping at 0.01 that is active on every step (Adam), AMP-free ``bf16-true`` training, a weight-tied HF GPT-2, an HF
BERT masked LM, an HF GPT-NeoX in-context stride task, distillation of a frozen CNN teacher into an MLP student, a
mean-teacher (EMA) semi-supervised run with 60 labels, a sequence-length curriculum (the loss jumps at each stage),
95/5 class imbalance under a pos-weighted BCE, pinball (quantile) and Huber losses on heavy-tailed targets, a
pairwise margin-ranking loss, a multiclass hinge loss, a convolutional autoencoder with a sigmoid/BCE output, a
sparse (L1) autoencoder, a siamese contrastive loss, a bidirectional LSTM tagger, a BN ResNet at SGD lr 0.4,
Adadelta, an Elman RNN with orthogonal init, a post-LN transformer with warm-up, stochastic depth 0.3 and LoRA
adapters on a frozen pre-trained MLP. Faults follow the taxonomies of real training bugs (Humbatova et al. ICSE
2020, DeepFD ICSE 2022, AUTOTRAINER's symptoms) and differ in detail from suites 1-4; ``expected`` names the check
ids a correct tool would give as the root cause. One run's training code was changed before any result was seen,
so that it learns as described: the BERT masked LM did not learn an order-2 Markov chain in 1500 steps (val loss
3.27 -> 3.17) and was moved to a first-order chain (renamed ``h6-bert-tiny-masked-lm-markov1``).

    python benchmarks/fresh_suite6.py --out DIR --seeds 600 601 [--only NAME ...] [--jobs N] [--no-train] [--list]

Each run x seed trains in a worker process (one torch thread each) into DIR/NAME/seed<S>/ (the monitor's run
directory); a run whose spec is unchanged and whose store exists is not trained again. Then every run is evaluated
with the default pack, a table plus a summary is printed (and written to DIR/summary.json). Data: scikit-learn's
bundled/generated data sets and synthetic data only; Hugging Face models from tiny configs (no download).
"""

from __future__ import annotations

import copy
import functools
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside it
from _suite import LM, Net, fit, loaders, main as run_suite, registry, val_metrics  # noqa: E402,F401
from _suite import adam, adamw, sgd, mlp, tensors as _t  # noqa: E402,F401

SUITE_VERSION = 1

RUNS, healthy, fault = registry(SUITE_VERSION)

DIVERGE = {"loss-divergence", "exploding-gradients", "non-finite"}

# ----------------------------------------------------------------------------------------------------------- data
DATA_SEED = 6060  # data sets are the same for every seed; the seed varies initialisation and batch order


def _split(x, y, n_val):
    idx = np.random.RandomState(DATA_SEED).permutation(len(x))
    return x[idx[n_val:]], y[idx[n_val:]], x[idx[:n_val]], y[idx[:n_val]]


def _standardise(xtr, xva):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    return (xtr - mu) / sd, (xva - mu) / sd


@functools.lru_cache(None)
def _digits_np():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    return _split(x.astype(np.float32), y, 397)


def digits_flat():
    xtr, ytr, xva, yva = _digits_np()
    xtr, xva = xtr / 16.0, xva / 16.0
    mu, sd = xtr.mean(0), np.maximum(xtr.std(0), 0.1)  # floored: some border pixels are 0 in every training image
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    return (*_t(xtr, ytr), *_t(xva, yva))


def digits_img(scale=True):
    """(N, 1, 8, 8) images: pixels / 16, centred and scaled when ``scale``."""
    xtr, ytr, xva, yva = _digits_np()
    f = (lambda a: ((a / 16.0 - 0.3) / 0.4)) if scale else (lambda a: a / 16.0)
    return (*_t(f(xtr).reshape(-1, 1, 8, 8), ytr), *_t(f(xva).reshape(-1, 1, 8, 8), yva))


def classif(n=6000, d=20, k=4, informative=12, sep=1.0, weights=None, flip=0.01):
    from sklearn.datasets import make_classification
    x, y = make_classification(n_samples=n, n_features=d, n_informative=informative, n_redundant=0, n_classes=k,
                               n_clusters_per_class=2, class_sep=sep, weights=weights, flip_y=flip,
                               random_state=DATA_SEED)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y, n // 5)
    xtr, xva = _standardise(xtr, xva)
    return (*_t(xtr, ytr), *_t(xva, yva))


def breast(raw=False):
    from sklearn.datasets import load_breast_cancer
    x, y = load_breast_cancer(return_X_y=True)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y, 114)
    if raw:
        return xtr, ytr, xva, yva
    xtr, xva = _standardise(xtr, xva)
    return (*_t(xtr, ytr), *_t(xva, yva))


def regress(n=5000, d=10, informative=6, noise=0.5):
    """make_regression with the target standardised, then Gaussian noise of ``noise`` x its std added."""
    from sklearn.datasets import make_regression
    x, y = make_regression(n_samples=n, n_features=d, n_informative=informative, random_state=DATA_SEED)
    y = (y - y.mean()) / y.std()
    y = y + noise * np.random.RandomState(DATA_SEED + 1).randn(n)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y.astype(np.float32), n // 5)
    xtr, xva = _standardise(xtr, xva)
    return (*_t(xtr, ytr.reshape(-1, 1), torch.float32), *_t(xva, yva.reshape(-1, 1), torch.float32))


def moons(n=3000, noise=0.15):
    from sklearn.datasets import make_moons
    x, y = make_moons(n_samples=n, noise=noise, random_state=DATA_SEED)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y, n // 5)
    xtr, xva = _standardise(xtr, xva)
    return (*_t(xtr, ytr), *_t(xva, yva))


def majority_tokens(n=6000, T=15, k=3):
    """Sequences of k token types (ids 1..k, 0 unused); the label is the most frequent type (ties dropped)."""
    rng = np.random.RandomState(DATA_SEED)
    x = rng.randint(1, k + 1, size=(int(n * 1.6), T))
    counts = np.stack([(x == c).sum(1) for c in range(1, k + 1)], 1)
    top = np.sort(counts, 1)
    keep = top[:, -1] > top[:, -2]
    x, y = x[keep][:n], counts[keep][:n].argmax(1)
    xtr, ytr, xva, yva = _split(x, y, n // 5)
    return (torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xva), torch.tensor(yva))


def halves_tokens(n=6000, T=16):
    """Digits 0..9; label 1 when the first half sums higher than the second (ties dropped)."""
    rng = np.random.RandomState(DATA_SEED + 2)
    x = rng.randint(0, 10, size=(int(n * 1.2), T))
    d = x[:, :T // 2].sum(1) - x[:, T // 2:].sum(1)
    x, d = x[d != 0][:n], d[d != 0][:n]
    xtr, ytr, xva, yva = _split(x, (d > 0).astype(np.int64), n // 5)
    return (torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xva), torch.tensor(yva))


@functools.lru_cache(None)
def _markov2(V, n, T, seed):
    """An order-2 Markov chain over V tokens: each context (a, b) has 3 successors with probs .6/.3/.1."""
    rng = np.random.RandomState(seed)
    succ = rng.randint(0, V, size=(V, V, 3))
    x = np.zeros((n, T), dtype=np.int64)
    x[:, 0], x[:, 1] = rng.randint(0, V, n), rng.randint(0, V, n)
    for t in range(2, T):
        c = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
        x[:, t] = succ[x[:, t - 2], x[:, t - 1], c]
    return x


@functools.lru_cache(None)
def _markov1(V, n, T, seed):
    """A first-order Markov chain over V tokens: each token has 2 successors with probs .8/.2."""
    rng = np.random.RandomState(seed)
    succ = rng.randint(0, V, size=(V, 2))
    x = np.zeros((n, T), dtype=np.int64)
    x[:, 0] = rng.randint(0, V, n)
    for t in range(1, T):
        x[:, t] = succ[x[:, t - 1], (rng.rand(n) < 0.2).astype(int)]
    return x


def markov_lm(V=24, n=4000, T=33, seed=DATA_SEED + 3):
    x = torch.tensor(_markov2(V, n, T, seed))
    return x[: n - 500], x[n - 500:]


def stride_seqs(V=20, n=4000, T=17):
    rng = np.random.RandomState(DATA_SEED + 4)
    a, k = rng.randint(0, V, n), rng.randint(1, 6, n)
    x = (a[:, None] + k[:, None] * np.arange(T)[None]) % V
    x = torch.tensor(x, dtype=torch.long)
    return x[: n - 500], x[n - 500:]


# --------------------------------------------------------------------------------------------------------- models
def cnn(k=10, ch=16, bn=False, hidden=64):
    def blk(i, o):
        return [nn.Conv2d(i, o, 3, padding=1)] + ([nn.BatchNorm2d(o)] if bn else []) + [nn.ReLU()]
    return nn.Sequential(*blk(1, ch), *blk(ch, 2 * ch), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(2 * ch * 16, hidden), nn.ReLU(), nn.Linear(hidden, k))


class ResBlock(nn.Module):
    def __init__(self, c, drop_path=0.0):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.act1, self.act2, self.drop_path = nn.ReLU(), nn.ReLU(), drop_path

    def forward(self, x):
        h = self.b2(self.c2(self.act1(self.b1(self.c1(x)))))
        if self.training and self.drop_path > 0:
            keep = (torch.rand(x.shape[0], 1, 1, 1) > self.drop_path).float() / (1 - self.drop_path)
            h = h * keep
        return self.act2(x + h)


def resnet(ch=16, blocks=3, k=10, drop_path=0.0):
    return nn.Sequential(nn.Conv2d(1, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                         *[ResBlock(ch, drop_path) for _ in range(blocks)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, k))


class SeqCls(nn.Module):
    def __init__(self, vocab, k, emb=16, hid=32, cell="gru", layers=1, bidir=False, tag=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell](emb, hid, layers, batch_first=True,
                                                                         bidirectional=bidir)
        self.head = nn.Linear(hid * (2 if bidir else 1), k)
        self.tag = tag

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.head(h if self.tag else h[:, -1])


class TinyEncoder(nn.Module):
    def __init__(self, vocab, k, d=32, layers=2, heads=2, T=16, softmax_out=False, norm_first=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, T, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, k)
        self.softmax_out = softmax_out

    def forward(self, x):
        h = self.enc(self.emb(x) + self.pos[:, : x.shape[1]])
        out = self.head(h.mean(1))
        return out.softmax(-1) if self.softmax_out else out


class HF(nn.Module):
    """A Hugging Face model as ``tokens -> logits``."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(input_ids=x).logits


def gpt2(V, tie=True):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tie)
    return HF(GPT2LMHeadModel(cfg))


# ----------------------------------------------------------------------------------------------- modules, helpers
def lam(fn, interval="step"):
    return lambda opt: {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, fn), "interval": interval}


def warm_cos(warm, total, floor=0.0):
    def f(s):
        if s < warm:
            return (s + 1) / warm
        p = min(1.0, (s - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    return f


def pretrain(model, x, y, steps, lr=1e-3, bs=64, loss=F.cross_entropy, wd=0.0):
    """A plain PyTorch loop (before the monitored run)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (bs,))
        opt.zero_grad()
        loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


class Binary(Net):
    """One logit, BCE with logits (optionally pos-weighted); accuracy at logit 0."""

    def __init__(self, model, opt_fn, sched_fn=None, pos_weight=None):
        super().__init__(model, opt_fn, sched_fn, task="bin")
        self.pw = None if pos_weight is None else torch.tensor(float(pos_weight))

    def shared_step(self, batch):
        x, y = batch
        out = self(x).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(out, y.float(), pos_weight=self.pw)
        return loss, ((out > 0).long() == y).sum(), len(y)


class Tagger(Net):
    """Per-token classification: model(x) -> (B, T, K)."""

    def shared_step(self, batch):
        x, y = batch
        out = self(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return loss, (out.argmax(-1) == y).float().mean() * len(x), len(x)


class Bf16Net(Net):
    """For ``precision='bf16-true'``: inputs cast to the parameters' dtype, the loss in float32."""

    def forward(self, x):
        dt = next(self.model.parameters()).dtype
        return self.model(x.to(dt)).float()


class MaskedLM(Net):
    """BERT-style MLM on (B, T) tokens: 15% of positions replaced by MASK_ID and predicted. Validation uses a
    fixed mask (the dataset's second tensor), training draws a fresh mask each step."""

    MASK_ID = 1

    def __init__(self, model, opt_fn, sched_fn=None):
        super().__init__(model, opt_fn, sched_fn, task="mlm")

    def _loss(self, x, mask):
        logits = self(x.masked_fill(mask, self.MASK_ID))
        loss = F.cross_entropy(logits[mask], x[mask])
        return loss, (logits[mask].argmax(-1) == x[mask]).float().mean() * len(x), len(x)

    def shared_step(self, batch):
        return self._loss(*batch)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        mask = torch.rand(x.shape) < 0.15
        mask[:, 0] |= ~mask.any(1)
        loss, _, _ = self._loss(x, mask)
        self.log("train_loss", loss)
        return loss


class StridedLM(LM):
    pass


def dummy_loader(n, bs):
    return DataLoader(TensorDataset(torch.arange(n)), batch_size=bs, shuffle=True, drop_last=True)


# ========================================================================================================= HEALTHY
@healthy("h6-mlp-digits-adam-inverse-sqrt-warmup",
         "digits MLP, Adam 2e-3, 100-step linear warm-up then lr ~ 1/sqrt(step) (Transformer-style inverse square "
         "root): the lr falls 4x over the run", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    f = lambda s: min((s + 1) / 100, math.sqrt(100 / (s + 1)))  # noqa: E731
    module = Net(mlp([64, 128, 64, 10]), adam(2e-3), lam(f))
    return fit(module, tr, va, run_dir, 1500, val_every=100)


@healthy("h6-classif-sgdm-poly-decay-power3",
         "make_classification (4 classes), SGD 0.1 momentum 0.9, 50-step warm-up then (1 - t/T)^3 decay to 0: the "
         "lr is at 1/8 of its peak by mid-run", ok_acc=0.7)
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    T = 1500
    f = lambda s: (s + 1) / 50 if s < 50 else max(0.0, 1 - (s - 50) / (T - 50)) ** 3  # noqa: E731
    module = Net(mlp([20, 128, 128, 4]), sgd(0.1, momentum=0.9), lam(f))
    return fit(module, tr, va, run_dir, T, val_every=100)


@healthy("h6-cnn-digits-sgd-step-warm-restarts",
         "digits CNN, SGD 0.05 momentum; each 400-step cycle holds the lr for 200 steps, then x0.1 for 150, x0.01 "
         "for 50, then restarts at the full lr (step-shaped warm restarts: the loss jumps at each restart)",
         ok_acc=0.95)
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    f = lambda s: 1.0 if s % 400 < 200 else (0.1 if s % 400 < 350 else 0.01)  # noqa: E731
    module = Net(cnn(), sgd(0.05, momentum=0.9), lam(f))
    return fit(module, tr, va, run_dir, 1600, val_every=100)


@healthy("h6-breast-cancer-exp-lr-ramp-capped",
         "breast cancer MLP, SGD momentum 0.9 with the lr ramped exponentially 1e-4 -> 3e-2 over 600 steps (an lr "
         "range test's ramp) and then held at the cap", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = breast()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    f = lambda s: (300.0 ** (min(s, 600) / 600)) / 300.0  # noqa: E731
    module = Net(mlp([30, 64, 64, 2]), sgd(3e-2, momentum=0.9), lam(f))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@healthy("h6-digits-mlp-batch2-sgd",
         "digits MLP at batch size 2, plain SGD 0.01: every step's loss is one of a handful of values, jumping "
         "between ~0 and several", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, ytr, xva, yva, 2)
    module = Net(mlp([64, 64, 10]), sgd(0.01))
    return fit(module, tr, va, run_dir, 2500, val_every=250)


@healthy("h6-cnn-digits-label-smoothing-0.3-adamw",
         "digits CNN, CE with label smoothing 0.3 (the loss floors near 1.0, far above 0), AdamW 2e-3",
         ok_acc=0.95)
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(cnn(), adamw(2e-3, weight_decay=1e-2), label_smoothing=0.3)
    return fit(module, tr, va, run_dir, 1200, val_every=100)


class CutMix(Net):
    def training_step(self, batch, batch_idx):
        x, y = batch
        lam_ = float(np.random.beta(1.0, 1.0))
        perm = torch.randperm(len(x))
        s = int(round(8 * math.sqrt(1 - lam_)))
        i, j = np.random.randint(0, 8 - s + 1), np.random.randint(0, 8 - s + 1)
        x = x.clone()
        x[:, :, i:i + s, j:j + s] = x[perm, :, i:i + s, j:j + s]
        w = 1 - s * s / 64
        out = self(x)
        loss = w * F.cross_entropy(out, y) + (1 - w) * F.cross_entropy(out, y[perm])
        self.log("train_loss", loss)
        return loss


@healthy("h6-resnet-bn-digits-cutmix-nesterov",
         "3-block BN ResNet on digits with CutMix (alpha 1): the training loss stays far above the validation loss; "
         "SGD Nesterov 0.05, warm-up + cosine", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = CutMix(resnet(), sgd(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), lam(warm_cos(100, 1500)))
    return fit(module, tr, va, run_dir, 1500, val_every=100)


@healthy("h6-breast-cancer-resumed-at-floor",
         "breast cancer MLP trained 600 steps in a plain loop, then resumed under Lightning with a fresh AdamW at "
         "1e-4: it starts at its floor (loss ~0.1) and stays there", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = breast()
    model = pretrain(mlp([30, 64, 2]), xtr, ytr, 600, lr=1e-3, bs=32, wd=1e-2)
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(model, adamw(1e-4, weight_decay=1e-2))
    return fit(module, tr, va, run_dir, 800, val_every=100)


@healthy("h6-regression-resumed-at-noise-floor",
         "make_regression MLP (noise 0.5 of the target's std: floor ~0.25) trained 1500 steps in a plain loop, "
         "resumed for 800 at Adam 3e-4: the loss is at its noise floor from the first step (ok: it does not get "
         "worse)", ok_ratio=1.05)
def _(run_dir):
    xtr, ytr, xva, yva = regress()
    model = pretrain(mlp([10, 64, 64, 1]), xtr, ytr, 1500, lr=1e-3, loss=F.mse_loss)
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(model, adam(3e-4), task="reg")
    return fit(module, tr, va, run_dir, 800, val_every=100)


@healthy("h6-frozen-pretrained-cnn-backbone-new-head",
         "CNN pre-trained on digits 0-4 (plain loop); its convs and 512->64 layer frozen by design (98% of the "
         "parameters), a new 10-way head trained on all digits", ok_acc=0.8)
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    lo = ytr < 5
    net = pretrain(cnn(k=5), xtr[lo], ytr[lo], 600)
    backbone = net[:-1]
    for p in backbone.parameters():
        p.requires_grad_(False)
    model = nn.Sequential(backbone, nn.Linear(64, 10))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(model, adam(2e-3))
    return fit(module, tr, va, run_dir, 800, val_every=100)


@healthy("h6-gru-majority-token-clip-0.01-always-active",
         "GRU, which of 3 tokens is most frequent; Adam 2e-3 with gradient_clip_val 0.01 (norm): clipping is "
         "active on every step, harmless under Adam", ok_acc=0.8)
def _(run_dir):
    xtr, ytr, xva, yva = majority_tokens()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(SeqCls(4, 3), adam(2e-3))
    return fit(module, tr, va, run_dir, 1200, val_every=100, gradient_clip_val=0.01)


@healthy("h6-mlp-bf16-true-adamw",
         "make_classification MLP trained entirely in bfloat16 (precision='bf16-true', no autocast, no fp32 master "
         "weights), AdamW 2e-3", ok_acc=0.7)
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Bf16Net(mlp([20, 128, 128, 4]), adamw(2e-3, weight_decay=1e-2))
    return fit(module, tr, va, run_dir, 1200, val_every=100, precision="bf16-true")


@healthy("h6-gpt2-tied-embeddings-markov2-lm",
         "HF GPT-2 (2 layers, 32 wide, input/output embeddings tied) on an order-2 Markov chain (entropy floor "
         "~0.9 nats of 3.2), AdamW 3e-3 warm-up + cosine, clip 1.0", ok_ratio=0.6)
def _(run_dir):
    xtr, xva = markov_lm()
    tr = DataLoader(TensorDataset(xtr), batch_size=32, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva), batch_size=250)
    module = LM(gpt2(24), adamw(3e-3, weight_decay=0.01), lam(warm_cos(100, 1200, 0.1)))
    return fit(module, tr, va, run_dir, 1200, val_every=100, gradient_clip_val=1.0)


@healthy("h6-bert-tiny-masked-lm-markov1",
         "HF BERT (2 layers, 32 wide) masked LM from scratch on first-order Markov sequences (2 successors per "
         "token, .8/.2), 15% dynamic masking, AdamW 2e-3 warm-up + linear decay. Changed before any result was "
         "seen: on the order-2 chain first used it did not learn in 1500 steps (loss 3.27 -> 3.17)", ok_ratio=0.6)
def _(run_dir):
    from transformers import BertConfig, BertForMaskedLM
    V = 24
    x = torch.tensor(_markov1(V, 4000, 24, DATA_SEED + 5)) + 2  # 0 pad, 1 mask
    xtr, xva = x[:3500], x[3500:]
    g = torch.Generator().manual_seed(DATA_SEED)
    mva = torch.rand(xva.shape, generator=g) < 0.15
    mva[:, 0] |= ~mva.any(1)
    cfg = BertConfig(vocab_size=V + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    tr = DataLoader(TensorDataset(xtr), batch_size=32, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva, mva), batch_size=250)
    f = lambda s: min((s + 1) / 100, max(0.05, 1 - s / 1500))  # noqa: E731
    module = MaskedLM(HF(BertForMaskedLM(cfg)), adamw(2e-3, weight_decay=0.01), lam(f))
    return fit(module, tr, va, run_dir, 1500, val_every=100)


@healthy("h6-gptneox-tiny-in-context-stride-lm",
         "HF GPT-NeoX (2 layers, 32 wide, rotary) LM on sequences a, a+k, a+2k, ... mod 20 with a per-sequence "
         "stride k: deterministic once two tokens are seen, Adam 2e-3", ok_ratio=0.4, ok_acc=0.9)
def _(run_dir):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    xtr, xva = stride_seqs()
    cfg = GPTNeoXConfig(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
    tr = DataLoader(TensorDataset(xtr), batch_size=32, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva), batch_size=250)
    module = StridedLM(HF(GPTNeoXForCausalLM(cfg)), adam(2e-3))
    return fit(module, tr, va, run_dir, 1200, val_every=100)


class Distill(Net):
    def __init__(self, student, teacher, opt_fn, T=4.0, alpha=0.7):
        super().__init__(student, opt_fn)
        self.teacher, self.T, self.alpha = teacher, T, alpha
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        s = self.model(x)
        with torch.no_grad():
            t = self.teacher(x)
        kd = F.kl_div(F.log_softmax(s / self.T, -1), F.softmax(t / self.T, -1), reduction="batchmean")
        loss = self.alpha * kd * self.T ** 2 + (1 - self.alpha) * F.cross_entropy(s, y)
        self.log("train_loss", loss)
        return loss


@healthy("h6-distill-frozen-cnn-teacher-into-mlp-student",
         "a CNN teacher (plain loop, frozen, a submodule: ~88% of the parameters) distilled into a 64->48->10 MLP "
         "student at T=4 (KL x T^2 + 0.3 CE); the student is validated", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    teacher = pretrain(cnn(), xtr, ytr, 800)
    student = nn.Sequential(nn.Flatten(), mlp([64, 48, 10]))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Distill(student, teacher, adam(2e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


class MeanTeacher(Net):
    def __init__(self, model, opt_fn, xl, yl, decay=0.99, w=2.0):
        super().__init__(model, opt_fn)
        self.teacher = copy.deepcopy(model)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.xl, self.yl, self.decay, self.w = xl, yl, decay, w

    def training_step(self, batch, batch_idx):
        xu = batch[0]
        idx = torch.randint(0, len(self.xl), (32,))
        sup = F.cross_entropy(self.model(self.xl[idx]), self.yl[idx])
        ps = self.model(xu + 0.15 * torch.randn_like(xu)).softmax(-1)
        with torch.no_grad():
            pt = self.teacher(xu + 0.15 * torch.randn_like(xu)).softmax(-1)
        loss = sup + self.w * F.mse_loss(ps, pt)
        self.log("train_loss", loss)
        return loss

    def on_train_batch_end(self, *args):
        with torch.no_grad():
            for pt, ps in zip(self.teacher.parameters(), self.model.parameters()):
                pt.mul_(self.decay).add_(ps, alpha=1 - self.decay)


@healthy("h6-mean-teacher-semi-supervised-moons-60-labels",
         "mean teacher on moons: 60 labelled points (CE) + consistency to an EMA teacher (decay 0.99, not in the "
         "optimizer) on 2340 unlabelled ones, Adam 1e-3; the student is validated", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = moons()
    lab = torch.cat([torch.nonzero(ytr == c)[:30, 0] for c in (0, 1)])
    tr = DataLoader(TensorDataset(xtr), batch_size=64, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva, yva), batch_size=512)
    module = MeanTeacher(mlp([2, 64, 64, 2]), adam(1e-3), xtr[lab], ytr[lab])
    return fit(module, tr, va, run_dir, 1200, val_every=100)


def marker_batch(B, L, g=None):
    v = torch.randn(B, L, generator=g)
    pos = torch.randint(0, L, (B,), generator=g)
    m = torch.zeros(B, L)
    m[torch.arange(B), pos] = 1.0
    return torch.stack([v, m], -1), v[torch.arange(B), pos].unsqueeze(-1)


class MarkerGRU(nn.Module):
    def __init__(self, hid=32, layers=1):
        super().__init__()
        self.rnn = nn.GRU(2, hid, layers, batch_first=True)
        self.head = nn.Linear(hid, 1)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.head(h[:, -1])


class Curriculum(Net):
    def __init__(self, model, opt_fn, stages):
        super().__init__(model, opt_fn, task="reg")
        self.stages = stages  # [(until_step, length), ...]

    def training_step(self, batch, batch_idx):
        L = next(length for until, length in self.stages if self.global_step < until)
        x, y = marker_batch(64, L)
        loss = F.mse_loss(self.model(x), y)
        self.log("train_loss", loss)
        return loss


@healthy("h6-gru-marker-recall-length-curriculum",
         "GRU recalls the value at a marked position; curriculum over sequence length 5 -> 10 -> 20 at steps 400 "
         "and 800 (the training loss jumps at each stage); validated at length 20, Adam 3e-3", ok_ratio=0.5)
def _(run_dir):
    xva, yva = marker_batch(1000, 20, torch.Generator().manual_seed(DATA_SEED))
    va = DataLoader(TensorDataset(xva, yva), batch_size=500)
    module = Curriculum(MarkerGRU(), adam(3e-3), [(400, 5), (800, 10), (10 ** 9, 20)])
    return fit(module, dummy_loader(64 * 1300, 64), va, run_dir, 1300, val_every=100)


@healthy("h6-imbalanced-95-5-bce-pos-weight-19",
         "binary make_classification with a 95/5 class split, one logit, BCE with pos_weight 19, Adam 1e-3",
         ok_ratio=0.6)
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=8000, k=2, informative=8, sep=1.0, weights=[0.95])
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Binary(mlp([20, 64, 64, 1]), adam(1e-3), pos_weight=19.0)
    return fit(module, tr, va, run_dir, 1200, val_every=100)


def pinball(tau):
    def f(out, y):
        e = y - out
        return torch.maximum(tau * e, (tau - 1) * e).mean()
    return f


@healthy("h6-quantile-regression-pinball-0.9-heteroscedastic",
         "90th-percentile regression (pinball loss) on targets with noise that grows with |x0|: the loss floors at "
         "the noise's quantile loss, Adam 1e-3", ok_ratio=0.6)
def _(run_dir):
    xtr, ytr, xva, yva = regress(noise=0.0)
    rng = np.random.RandomState(DATA_SEED + 7)
    ytr = ytr + 0.3 * (1 + xtr[:, :1].abs()) * torch.tensor(rng.randn(len(ytr), 1), dtype=torch.float32)
    yva = yva + 0.3 * (1 + xva[:, :1].abs()) * torch.tensor(rng.randn(len(yva), 1), dtype=torch.float32)
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([10, 64, 64, 1]), adam(1e-3), task="reg", loss_fn=pinball(0.9))
    return fit(module, tr, va, run_dir, 1200, val_every=100)


@healthy("h6-lognormal-targets-huber-sgdm",
         "targets exp(f(x) + noise), heavy right tail (a few values 20x the median), standardised, Huber loss "
         "(delta 1), SGD 0.02 momentum 0.9", ok_ratio=0.7)
def _(run_dir):
    xtr, ytr, xva, yva = regress(noise=0.0)
    rng = np.random.RandomState(DATA_SEED + 8)
    f = lambda y: torch.exp(0.8 * y + 0.4 * torch.tensor(rng.randn(len(y), 1), dtype=torch.float32))  # noqa: E731
    ytr, yva = f(ytr), f(yva)
    mu, sd = ytr.mean(), ytr.std()
    ytr, yva = (ytr - mu) / sd, (yva - mu) / sd
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([10, 64, 64, 1]), sgd(0.02, momentum=0.9), task="reg",
                 loss_fn=lambda o, y: F.huber_loss(o, y, delta=1.0))
    return fit(module, tr, va, run_dir, 1200, val_every=100)


class Ranker(Net):
    """Pairwise margin ranking: training pairs drawn each step, validation on fixed (x_i, x_j, sign) pairs."""

    def __init__(self, model, opt_fn, x, r, margin=0.1):
        super().__init__(model, opt_fn, task="rank")
        self.x, self.r, self.margin = x, r, margin

    def _loss(self, a, b, t):
        sa, sb = self(a).squeeze(-1), self(b).squeeze(-1)
        loss = F.margin_ranking_loss(sa, sb, t, margin=self.margin)
        return loss, (torch.sign(sa - sb) == t).sum(), len(t)

    def shared_step(self, batch):
        return self._loss(*batch)

    def training_step(self, batch, batch_idx):
        i = batch[0]
        j = torch.randint(0, len(self.x), i.shape)
        t = torch.sign(self.r[i] - self.r[j])
        t[t == 0] = 1.0
        loss, _, _ = self._loss(self.x[i], self.x[j], t)
        self.log("train_loss", loss)
        return loss


@healthy("h6-pairwise-margin-ranking-scorer",
         "a scorer trained with a margin ranking loss (margin 0.1) on random pairs of a nonlinear relevance; the "
         "hinge loss drops toward 0 for most pairs, Adam 1e-3", ok_acc=0.85)
def _(run_dir):
    rng = np.random.RandomState(DATA_SEED + 9)
    x = rng.randn(4000, 16).astype(np.float32)
    r = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3] + 0.1 * rng.randn(4000)
    x, r = torch.tensor(x), torch.tensor(r, dtype=torch.float32)
    xtr, rtr, xva, rva = x[:3200], r[:3200], x[3200:], r[3200:]
    i, j = torch.tensor(rng.randint(0, 800, 2000)), torch.tensor(rng.randint(0, 800, 2000))
    t = torch.sign(rva[i] - rva[j])
    t[t == 0] = 1.0
    va = DataLoader(TensorDataset(xva[i], xva[j], t), batch_size=500)
    module = Ranker(mlp([16, 64, 64, 1]), adam(1e-3), xtr, rtr)
    return fit(module, dummy_loader(3200, 64), va, run_dir, 1200, val_every=100)


@healthy("h6-digits-multiclass-hinge-sgdm",
         "digits MLP with a multiclass hinge loss (nn.MultiMarginLoss): the training loss reaches ~0 and many "
         "ReLUs may go quiet once margins are met, SGD 0.05 momentum", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([64, 128, 10]), sgd(0.05, momentum=0.9), loss_fn=nn.MultiMarginLoss())
    return fit(module, tr, va, run_dir, 1000, val_every=100)


class ConvAE(nn.Module):
    def __init__(self, code=8):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(16 * 16, code))
        self.dec_fc = nn.Sequential(nn.Linear(code, 16 * 16), nn.ReLU())
        self.dec = nn.Sequential(nn.ConvTranspose2d(16, 16, 2, stride=2), nn.ReLU(), nn.Conv2d(16, 1, 3, padding=1),
                                 nn.Sigmoid())

    def forward(self, x):
        return self.dec(self.dec_fc(self.enc(x)).view(-1, 16, 4, 4))


@healthy("h6-conv-autoencoder-digits-sigmoid-bce",
         "convolutional autoencoder (8-d code) on digits in [0,1], sigmoid output + BCE: background pixels push "
         "the sigmoid into its tail by design and the loss floors at the pixels' entropy, Adam 2e-3",
         ok_ratio=0.6)
def _(run_dir):
    xtr, _, xva, _ = digits_img(scale=False)
    tr, va = loaders(xtr, xtr, xva, xva, 32)
    module = Net(ConvAE(), adam(2e-3), task="reg", loss_fn=F.binary_cross_entropy)
    return fit(module, tr, va, run_dir, 1200, val_every=100)


class SparseAE(Net):
    def __init__(self, opt_fn, l1=1e-3):
        super().__init__(nn.ModuleDict({"enc": nn.Sequential(nn.Linear(64, 256), nn.ReLU()),
                                        "dec": nn.Linear(256, 64)}), opt_fn, task="reg")
        self.l1 = l1

    def shared_step(self, batch):
        x, _ = batch
        h = self.model["enc"](x)
        loss = F.mse_loss(self.model["dec"](h), x) + self.l1 * h.abs().sum(-1).mean()
        return loss, None, len(x)


@healthy("h6-sparse-autoencoder-l1-codes-digits",
         "over-complete (256) ReLU autoencoder with an L1 penalty on the codes (sparse codes by design, most units "
         "zero for a given sample), AdamW 1e-3", ok_ratio=0.6)
def _(run_dir):
    xtr, _, xva, _ = digits_flat()
    tr, va = loaders(xtr, xtr, xva, xva, 32)
    module = SparseAE(adamw(1e-3, weight_decay=1e-4), l1=1e-3)
    return fit(module, tr, va, run_dir, 1200, val_every=100)


class Siamese(Net):
    """Contrastive loss (Hadsell et al.) on pairs: half of each training batch paired within its class."""

    def __init__(self, model, opt_fn, x, y, margin=1.0, eps=1e-9):
        super().__init__(model, opt_fn, task="pair")
        self.x, self.y, self.margin, self.eps = x, y, margin, eps
        self.order = torch.argsort(y)
        self.counts = torch.bincount(y)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def _loss(self, a, b, same):
        d = ((self.model(a) - self.model(b)) ** 2).sum(-1).add(self.eps).sqrt()
        loss = 0.5 * (same * d ** 2 + (1 - same) * F.relu(self.margin - d) ** 2).mean()
        return loss, ((d < self.margin / 2).float() == same).sum(), len(same)

    def shared_step(self, batch):
        return self._loss(*batch)

    def training_step(self, batch, batch_idx):
        i = batch[0]
        yi = self.y[i]
        j_same = self.order[self.offsets[yi] + (torch.rand(len(i)) * self.counts[yi]).long()]
        j_rand = torch.randint(0, len(self.x), i.shape)
        j = torch.where(torch.arange(len(i)) % 2 == 0, j_same, j_rand)
        same = (self.y[j] == yi).float()
        loss, _, _ = self._loss(self.x[i], self.x[j], same)
        self.log("train_loss", loss)
        return loss


def siamese_val(xva, yva, n=1000):
    rng = np.random.RandomState(DATA_SEED + 10)
    i = torch.tensor(rng.randint(0, len(xva), n))
    j = torch.tensor(rng.randint(0, len(xva), n))
    for k in range(0, n, 2):  # half the pairs same-class
        pool = torch.nonzero(yva == yva[i[k]])[:, 0]
        j[k] = pool[rng.randint(len(pool))]
    return DataLoader(TensorDataset(xva[i], xva[j], (yva[i] == yva[j]).float()), batch_size=500)


@healthy("h6-siamese-contrastive-digits",
         "siamese MLP embedding of digits (16-d), contrastive loss with margin 1 on same/different pairs, "
         "Adam 1e-3", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    module = Siamese(mlp([64, 128, 16]), adam(1e-3), xtr, ytr)
    return fit(module, dummy_loader(len(xtr), 64), siamese_val(xva, yva), run_dir, 1200, val_every=100)


@healthy("h6-bilstm-tagger-token-repeats-elsewhere",
         "bidirectional LSTM tags each token that occurs elsewhere in its sequence (needs both directions), "
         "Adam 3e-3", ok_acc=0.8)
def _(run_dir):
    rng = np.random.RandomState(DATA_SEED + 11)
    x = rng.randint(0, 16, size=(5000, 10))
    y = np.stack([(x == x[:, t:t + 1]).sum(1) > 1 for t in range(10)], 1).astype(np.int64)
    x, y = torch.tensor(x), torch.tensor(y)
    tr, va = loaders(x[:4000], y[:4000], x[4000:], y[4000:], 64)
    module = Tagger(SeqCls(16, 2, emb=16, hid=48, cell="lstm", bidir=True, tag=True), adam(3e-3))
    return fit(module, tr, va, run_dir, 1500, val_every=100)


@healthy("h6-resnet-bn-digits-sgd-lr-0.4-warmup-cosine",
         "3-block BN ResNet on digits at a large SGD lr 0.4 (momentum 0.9, wd 5e-4) made safe by BatchNorm and a "
         "200-step warm-up, cosine to 0", ok_acc=0.95)
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(resnet(), sgd(0.4, momentum=0.9, weight_decay=5e-4), lam(warm_cos(200, 1500)))
    return fit(module, tr, va, run_dir, 1500, val_every=100)


@healthy("h6-adadelta-breast-cancer",
         "breast cancer MLP, Adadelta at its default lr 1.0 (its updates start tiny and grow as the running "
         "averages fill)", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = breast()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([30, 64, 64, 2]), lambda p: torch.optim.Adadelta(p, lr=1.0))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


def waveforms(n=4000, T=30):
    rng = np.random.RandomState(DATA_SEED + 12)
    y = rng.randint(0, 3, n)
    f = rng.uniform(0.05, 0.15, n)[:, None]
    ph = rng.uniform(0, 1, n)[:, None]
    t = np.arange(T)[None]
    u = (f * t + ph) % 1.0
    sig = np.where(y[:, None] == 0, np.sin(2 * np.pi * u), np.where(y[:, None] == 1, np.sign(u - 0.5), 2 * u - 1))
    x = (sig + 0.3 * rng.randn(n, T)).astype(np.float32)[..., None]
    return torch.tensor(x[:3200]), torch.tensor(y[:3200]), torch.tensor(x[3200:]), torch.tensor(y[3200:])


class ElmanCls(nn.Module):
    def __init__(self, hid=64):
        super().__init__()
        self.rnn = nn.RNN(1, hid, batch_first=True, nonlinearity="tanh")
        nn.init.orthogonal_(self.rnn.weight_hh_l0)
        self.head = nn.Linear(hid, 3)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.head(h[:, -1])


@healthy("h6-elman-rnn-orthogonal-init-sgd-clip",
         "tanh Elman RNN (orthogonal recurrent init) classifying noisy sine/square/sawtooth series of 30 steps, SGD "
         "0.02 momentum 0.9, clip-norm 1.0", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = waveforms()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(ElmanCls(), sgd(0.02, momentum=0.9))
    return fit(module, tr, va, run_dir, 1500, val_every=100, gradient_clip_val=1.0)


@healthy("h6-postln-transformer-halves-warmup-linear-decay",
         "post-LN nn.TransformerEncoder (2 layers, 32 wide): is the first half's digit sum larger; Adam 1e-3 with "
         "a 300-step warm-up and linear decay", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = halves_tokens()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    f = lambda s: min((s + 1) / 300, max(0.0, (2000 - s) / 1700))  # noqa: E731
    module = Net(TinyEncoder(10, 2), adam(1e-3), lam(f))
    return fit(module, tr, va, run_dir, 2000, val_every=100)


@healthy("h6-resnet-stochastic-depth-0.3-adam",
         "3-block BN ResNet with stochastic depth (each residual branch dropped with p 0.3 in training): the "
         "training loss is noisier and higher than the validation loss, Adam 2e-3", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(resnet(drop_path=0.3), adam(2e-3))
    return fit(module, tr, va, run_dir, 1200, val_every=100)


class LoRALinear(nn.Module):
    def __init__(self, base, r=4, alpha=8.0):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        self.s = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.s


@healthy("h6-lora-adapters-on-frozen-pretrained-mlp",
         "digits MLP pre-trained (plain loop), frozen; rank-4 LoRA adapters on its three Linear layers (5% of the "
         "parameters) fine-tuned to a relabelled task (y + 3) mod 10: the loss starts far above chance, Adam 3e-3",
         ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    base = pretrain(mlp([64, 256, 256, 10]), xtr, ytr, 800)
    model = nn.Sequential(*[LoRALinear(m) if isinstance(m, nn.Linear) else m for m in base])
    tr, va = loaders(xtr, (ytr + 3) % 10, xva, (yva + 3) % 10, 32)
    module = Net(model, adam(3e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


# ========================================================================================================== FAULTS
@fault("f6-softmax-in-transformer-forward-then-ce", {"softmax-before-loss"},
       "the transformer classifier's forward ends in softmax (copied from an inference wrapper) and the training "
       "loss is F.cross_entropy on those probabilities")
def _(run_dir):
    xtr, ytr, xva, yva = halves_tokens()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(TinyEncoder(10, 2, softmax_out=True), adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-tanh-squashed-logits-ce", {"saturated-activations"},
       "a Tanh after the output layer of a digits MLP (logits bounded to [-1, 1]), then cross-entropy: the outputs "
       "pin at +-1 and the loss cannot go below ~0.8")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([64, 128, 10], final=nn.Tanh()), adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-relu-on-binary-logit-bce", {"clamped-output"},
       "breast cancer, a ReLU after the single output logit, then BCE with logits: the negative class's logits "
       "are pushed below 0 and pinned there")
def _(run_dir):
    xtr, ytr, xva, yva = breast()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Binary(mlp([30, 64, 64, 1], final=nn.ReLU()), adam(1e-3))
    return fit(module, tr, va, run_dir, 800, val_every=100)


class ReshuffledLabels(Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.perm = x, y, torch.arange(len(y))

    def reshuffle(self):
        self.perm = torch.randperm(len(self.y))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[self.perm[i]]


class EpochHook(Net):
    def __init__(self, *a, hook=None, **kw):
        super().__init__(*a, **kw)
        self.hook = hook

    def on_train_epoch_start(self):
        self.hook()


@fault("f6-labels-reshuffled-every-epoch", {"no-progress"},
       "a Dataset 'augmentation' bug permutes the label array (not the samples) at every epoch: inputs and labels "
       "are re-paired at random each epoch, nothing can be learned")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    ds = ReshuffledLabels(xtr, ytr)
    tr = DataLoader(ds, batch_size=64, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva, yva), batch_size=512)
    module = EpochHook(mlp([64, 128, 10]), adam(1e-3), hook=ds.reshuffle)
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-val-images-transposed-hw", {"train-val-divergence", "validation-stalled"},
       "the validation images are stored (W, H) instead of (H, W) (a transpose in the export script): the CNN "
       "learns the training digits, the validation loss climbs")
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva.transpose(2, 3).contiguous(), yva, 32)
    module = Net(cnn(), adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


class NoZeroGrad(Net):
    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        pass


@fault("f6-adam-gradients-never-zeroed", {"exploding-gradients", "loss-divergence", "oscillating-loss",
                                          "update-too-large"},
       "optimizer_zero_grad overridden with a no-op (meant to accumulate 4 batches, the reset was forgotten): "
       "Adam steps on the running sum of every gradient so far")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = NoZeroGrad(mlp([20, 128, 128, 4]), adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-multistep-milestones-in-epochs-stepped-per-batch", {"lr-collapse"},
       "MultiStepLR(milestones=[20, 40, 60, 80], gamma 0.1) written for epochs but registered with interval "
       "'step': the lr is 1e-4 of its peak after 80 of 1200 steps")
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    sched = lambda o: {"scheduler": torch.optim.lr_scheduler.MultiStepLR(o, [20, 40, 60, 80], 0.1),  # noqa: E731
                       "interval": "step"}
    module = Net(cnn(), sgd(0.05, momentum=0.9), sched)
    return fit(module, tr, va, run_dir, 1200, val_every=100)


@fault("f6-sgd-momentum-1.0-no-damping", DIVERGE | {"oscillating-loss"},
       "SGD momentum=1.0 (0.9 meant): the velocity never decays, the parameters overshoot further each swing")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([20, 128, 128, 4]), sgd(0.01, momentum=1.0))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-gpt2-adamw-lr-0.05-no-warmup", DIVERGE | {"update-too-large", "no-progress", "loss-spike"},
       "HF GPT-2 (2 x 32) on the Markov LM with AdamW at lr 0.05 from step 0 (5e-4 meant), no warm-up, no clipping")
def _(run_dir):
    xtr, xva = markov_lm()
    tr = DataLoader(TensorDataset(xtr), batch_size=32, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva), batch_size=250)
    module = LM(gpt2(24), adamw(0.05, weight_decay=0.01))
    return fit(module, tr, va, run_dir, 800, val_every=100)


@fault("f6-lstm-sgd-lr-1e-5", {"no-progress", "update-too-small"},
       "LSTM majority-token classifier with plain SGD at lr 1e-5 (a value tuned for Adam on another model)")
def _(run_dir):
    xtr, ytr, xva, yva = majority_tokens()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(SeqCls(4, 3, cell="lstm"), sgd(1e-5))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


class L2InLoss(Net):
    def __init__(self, *a, l2=0.0, **kw):
        super().__init__(*a, **kw)
        self.l2 = l2

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.shared_step(batch)
        loss = loss + self.l2 * sum((p ** 2).sum() for n, p in self.named_parameters() if n.endswith("weight"))
        self.log("train_loss", loss)
        return loss


@fault("f6-explicit-l2-penalty-0.02-sum-in-loss", {"over-regularization"},
       "an explicit L2 term 0.02 * sum(w^2) added to the training loss (meant 0.02 * mean, or 5e-4) with SGD 0.1 "
       "momentum 0.9: the weights are held near 0 and the digits MLP barely fits")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = L2InLoss(mlp([64, 128, 10]), sgd(0.1, momentum=0.9), l2=0.02)
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-input-dropout-0.9", {"over-regularization"},
       "nn.Dropout(0.9) on the input features (keep-prob 0.9 passed as drop-prob): 90% of every input vector "
       "zeroed in training")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(nn.Sequential(nn.Dropout(0.9), mlp([20, 128, 128, 4])), adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


def deep_cnn(depth=8, ch=16, std=None):
    layers, c = [], 1
    for _ in range(depth):
        conv = nn.Conv2d(c, ch, 3, padding=1)
        if std is not None:
            nn.init.normal_(conv.weight, 0.0, std)
            nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU()]
        c = ch
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * 64, 10))


@fault("f6-deep-cnn-init-std-0.01-sgd", {"vanishing-gradients"},
       "8 conv layers (no normalisation) initialised N(0, 0.01) (a TF1 default; He would be ~0.12): the "
       "activations shrink ~12x per layer and the first layers get ~1e-8 of the last's gradient, SGD momentum")
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(deep_cnn(std=0.01), sgd(0.05, momentum=0.9))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-sigmoid-hidden-bias-init-plus-6", {"saturated-activations", "vanishing-gradients"},
       "3 sigmoid hidden layers whose biases are initialised to +6 (a 'start open' gate trick misapplied): every "
       "unit sits at ~0.998, in the flat tail, SGD 0.1 momentum")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    model = mlp([20, 128, 128, 128, 4], act=nn.Sigmoid)
    for m in list(model)[:-1]:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 6.0)
    module = Net(model, sgd(0.1, momentum=0.9))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-gru-and-head-constant-init-0.05", {"symmetric-units"},
       "a 'deterministic init' helper sets every GRU weight and the head's weights to 0.05 (biases 0): all 32 "
       "hidden units receive identical inputs and gradients and stay copies of one another")
def _(run_dir):
    xtr, ytr, xva, yva = majority_tokens()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    model = SeqCls(4, 3)
    for n, p in list(model.rnn.named_parameters()) + list(model.head.named_parameters()):
        nn.init.constant_(p, 0.05 if "weight" in n else 0.0)
    module = Net(model, adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-batchnorm-beta-init-minus-4-relu", {"dead-units"},
       "BatchNorm1d shifts (beta) initialised to -4 before each ReLU (a config meant for the scale, gamma): the "
       "normalised pre-activations sit at -4 +- 1 and essentially every unit outputs 0 for every sample")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    model = mlp([20, 128, 128, 4], bn=True)
    for m in model:
        if isinstance(m, nn.BatchNorm1d):
            nn.init.constant_(m.bias, -4.0)
    module = Net(model, adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-one-feature-left-in-raw-units", DIVERGE | {"update-too-large"},
       "breast cancer standardised except 'mean area' (a column added after the scaler was fit), left in raw "
       "units (~650 +- 350): SGD 0.05 momentum blows up through its weights")
def _(run_dir):
    xr, ytr, xvr, yva = breast(raw=True)
    mu, sd = xr.mean(0), xr.std(0) + 1e-8
    xtr, xva = (xr - mu) / sd, (xvr - mu) / sd
    xtr[:, 3], xva[:, 3] = xr[:, 3], xvr[:, 3]
    xtr, ytr = _t(xtr, ytr)
    xva, yva = _t(xva, yva)
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([30, 64, 64, 2]), sgd(0.05, momentum=0.9))
    return fit(module, tr, va, run_dir, 800, val_every=100)


@fault("f6-val-pixel-columns-reordered", {"train-val-divergence", "validation-stalled"},
       "the validation frame's 64 pixel columns come out of a dict in a different order than the training "
       "frame's: the validation inputs are scrambled")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    perm = torch.tensor(np.random.RandomState(DATA_SEED + 13).permutation(64))
    tr, va = loaders(xtr, ytr, xva[:, perm], yva, 32)
    module = Net(mlp([64, 128, 10]), adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


class NoGradEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = mlp([64, 128, 64], final=nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        with torch.no_grad():  # copied from the teacher's forward
            h = self.enc(x)
        return self.head(h)


@fault("f6-encoder-forward-under-torch-no-grad", {"unchanged-parameters", "frozen-parameters"},
       "the encoder's forward is wrapped in torch.no_grad() (copied from a teacher model's code): the encoder, 96% "
       "of the parameters and in the optimizer, never gets a gradient; only the head learns on random features")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(NoGradEncoder(), adam(1e-3))
    return fit(module, tr, va, run_dir, 800, val_every=100)


class LateHead(Net):
    def on_fit_start(self):
        self.model[-1] = nn.Linear(128, 10)  # 'num_classes read from the datamodule' -- after the optimizer exists


@fault("f6-head-replaced-after-optimizer-built", {"unchanged-parameters", "frozen-parameters"},
       "the output layer is rebuilt in on_fit_start, after configure_optimizers: the optimizer holds the old "
       "head, the new one is in no optimizer and never changes (the body learns around a random head)")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = LateHead(mlp([64, 128, 128, 10]), adam(1e-3))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-lambdalr-returns-lr-not-factor", {"update-too-small", "no-progress"},
       "LambdaLR's function returns the learning rate (1e-3 x cosine) instead of a multiplier, on Adam 1e-3: the "
       "lr in effect is 1e-6 and below")
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    f = lambda s: 1e-3 * 0.5 * (1 + math.cos(math.pi * min(s, 1000) / 1000))  # noqa: E731
    module = Net(cnn(), adam(1e-3), lam(f))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-restart-peak-multiplied-50x-after-step-800", DIVERGE,
       "cosine restarts every 800 steps, with the restart multiplying the peak by t_mult=50 (meant to multiply "
       "the cycle length): from step 800 SGD momentum runs at lr 2.5 and the MLP blows up late in the run")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    f = lambda s: (50.0 ** (s // 800)) * 0.5 * (1 + math.cos(math.pi * (s % 800) / 800))  # noqa: E731
    module = Net(mlp([20, 128, 128, 4]), sgd(0.05, momentum=0.9), lam(f))
    return fit(module, tr, va, run_dir, 1400, val_every=100)


class CosineHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp([64, 128, 64])
        self.w = nn.Parameter(torch.randn(10, 64))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x):
        cos = F.normalize(self.body(x), dim=-1) @ F.normalize(self.w, dim=-1).t()
        return self.logit_scale.exp() * cos


def naive_ce(out, y):
    return (torch.log(torch.exp(out).sum(-1)) - out.gather(1, y[:, None]).squeeze(1)).mean()


@fault("f6-unclamped-logit-scale-naive-logsumexp", {"non-finite"},
       "a cosine classifier with CLIP's learnable logit scale exp(s) but without its clamp, under a handwritten "
       "cross-entropy log(sum(exp(z))) with no max subtraction: once the scale passes ~88 exp overflows to inf")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = Net(CosineHead(), adam(3e-3), loss_fn=naive_ce)
    return fit(module, tr, va, run_dir, 1500, val_every=100)


@fault("f6-contrastive-sqrt-distance-nan-at-identical-pairs", {"non-finite"},
       "siamese contrastive loss with d = sqrt(sum((a - b)^2)) and no epsilon; same-class partners are drawn "
       "from a pool that includes the anchor itself, so a pair at distance 0 sends inf * 0 = NaN into the gradients")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    module = Siamese(mlp([64, 128, 16]), adam(1e-3), xtr, ytr, eps=0.0)
    return fit(module, dummy_loader(len(xtr), 64), siamese_val(xva, yva), run_dir, 1000, val_every=100)


@fault("f6-class-shards-read-in-order", {"oscillating-loss"},
       "training data read shard by shard without shuffling, each 256-sample shard holding one class, the shards "
       "cycling 0,1,2,3: every 8 steps the batch class changes and the loss shoots up, SGD 0.05 momentum")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=8000, sep=1.5)
    idx = [torch.nonzero(ytr == c)[:, 0] for c in range(4)]
    n = min(len(i) for i in idx) // 256 * 256
    order = torch.stack([i[:n].view(-1, 256) for i in idx], 1).reshape(-1)
    tr = DataLoader(TensorDataset(xtr[order], ytr[order]), batch_size=32, shuffle=False, drop_last=True)
    va = DataLoader(TensorDataset(xva, yva), batch_size=512)
    module = Net(mlp([20, 128, 128, 4]), sgd(0.05, momentum=0.9))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-linear-scaling-rule-applied-twice-resnet", DIVERGE | {"update-too-large"},
       "the linear lr-scaling rule applied twice (0.1 x 64 = 6.4 instead of 0.1): BN ResNet with SGD momentum "
       "0.9 at lr 6.4, no warm-up")
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(resnet(), sgd(6.4, momentum=0.9, weight_decay=5e-4))
    return fit(module, tr, va, run_dir, 800, val_every=100)


@fault("f6-sgd-maximize-true", DIVERGE,
       "torch.optim.SGD(..., maximize=True) copied from a reward-maximising script: gradient ascent on the "
       "cross-entropy")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([20, 128, 128, 4]), sgd(0.01, momentum=0.9, maximize=True))
    return fit(module, tr, va, run_dir, 800, val_every=100)


@fault("f6-imputer-fills-every-training-value-with-median", {"no-progress"},
       "an imputation step meant for missing values runs on the whole training frame: every training row is the "
       "column medians (a constant, nonzero vector), the validation rows are real")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    xtr = xtr.median(0).values.expand_as(xtr).clone()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([20, 128, 128, 4]), adam(1e-3))
    return fit(module, tr, va, run_dir, 800, val_every=100)


@fault("f6-train-labels-collapsed-to-one-class", {"validation-stalled", "train-val-divergence"},
       "a label-encoding bug (labels = (y == name).astype(int) * 0 ... ) turns every training label into 0; the "
       "validation labels are right: the training loss goes to ~0, the validation loss climbs")
def _(run_dir):
    xtr, ytr, xva, yva = digits_flat()
    tr, va = loaders(xtr, torch.zeros_like(ytr), xva, yva, 32)
    module = Net(mlp([64, 128, 10]), adam(1e-3))
    return fit(module, tr, va, run_dir, 800, val_every=100)


@fault("f6-pure-bf16-weights-small-sgd-updates-rounded-away", {"unchanged-parameters", "no-progress",
                                                                "update-too-small"},
       "precision='bf16-true' (bfloat16 weights, no fp32 master copy) with SGD 1e-3 momentum 0.9: most updates "
       "(~1e-5) are below half a bf16 ulp of the weights (~4e-4) and round away")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Bf16Net(mlp([20, 128, 128, 4]), sgd(1e-3, momentum=0.9))
    return fit(module, tr, va, run_dir, 1000, val_every=100, precision="bf16-true")


@fault("f6-regression-rows-reordered-targets-not", {"no-progress", "train-val-divergence", "validation-stalled"},
       "the training feature rows were sorted by a column for a plot, in place, and the target vector was not: "
       "training inputs and targets are misaligned (validation is aligned)")
def _(run_dir):
    xtr, ytr, xva, yva = regress(noise=0.2)
    xtr = xtr[torch.argsort(xtr[:, 0])]
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([10, 128, 128, 1]), adam(1e-3), task="reg")
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-images-divided-by-255-twice", {"no-progress", "vanishing-gradients", "update-too-small"},
       "digits already scaled to [0, 1] divided by 255 again (the uint8 recipe): inputs at most 0.004, not "
       "centred; the CNN under SGD 0.05 momentum sees almost constant features")
def _(run_dir):
    xtr, ytr, xva, yva = digits_img(scale=False)
    tr, va = loaders(xtr / 255.0, ytr, xva / 255.0, yva, 32)
    module = Net(cnn(), sgd(0.05, momentum=0.9))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


class GrowingLoss(Net):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = 0

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.shared_step(batch)
        self.calls += 1  # meant: loss / accumulate_steps, with a counter reset every 4 calls
        self.log("train_loss", loss)
        return loss * self.calls


@fault("f6-loss-multiplied-by-never-reset-counter", DIVERGE | {"update-too-large"},
       "gradient-accumulation bookkeeping bug: the loss is multiplied by a call counter that is never reset, so "
       "the effective lr of SGD 0.01 momentum grows linearly (100x by step 100)")
def _(run_dir):
    xtr, ytr, xva, yva = classif()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = GrowingLoss(mlp([20, 128, 128, 4]), sgd(0.01, momentum=0.9))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


class PerTensorClip(Net):
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        for p in self.parameters():
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], 1e-3)


@fault("f6-per-tensor-grad-clip-1e-3-sgd", {"update-too-small", "no-progress"},
       "configure_gradient_clipping clips every parameter tensor's gradient norm to 1e-3 (meant: the global norm "
       "to 1.0), with SGD 0.05 momentum: each tensor moves by at most ~5e-4 a step")
def _(run_dir):
    xtr, ytr, xva, yva = digits_img()
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    module = PerTensorClip(cnn(), sgd(0.05, momentum=0.9))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


@fault("f6-adamw-eps-1e1-exponent-sign-typo", {"update-too-small", "no-progress"},
       "AdamW eps=1e1 (1e-1 or 1e-8 meant: the exponent's sign lost in a config): the denominator is ~10, the "
       "transformer classifier's updates are ~1e-4 x the gradient")
def _(run_dir):
    xtr, ytr, xva, yva = halves_tokens()
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    module = Net(TinyEncoder(10, 2), adamw(1e-3, eps=10.0))
    return fit(module, tr, va, run_dir, 1000, val_every=100)


def main(argv=None):
    run_suite("fresh_suite6", __doc__, "fresh6_runs", [600, 601], argv)


if __name__ == "__main__":
    main()
