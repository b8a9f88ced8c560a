"""A third, independent held-out suite for the default check pack: realistic Lightning runs, healthy and faulty,
written without reference to the calibration corpus (``dyncheck/scenarios/``), the pack's rules and thresholds, or
the runs of the first two held-out suites (only their names were read, so as not to repeat a scenario; the harness
-- CLI, worker pool, evaluation and summary -- is the shared ``benchmarks/_suite.py``).

Each run is ordinary Lightning code (own LightningModules, own DataLoaders, ``pl.Trainer(max_steps=...)``) with
``DynamicsMonitor(dirpath=...)`` at its default options. Healthy runs include the alarming-but-normal the first two
suites lack (OneCycle with Nesterov SGD, polynomial decay with NAdam, RAdam, RMSprop, Adagrad on a bag of words,
batch size 1 with Adam, mixup, cutout with cosine warm restarts, a curriculum that switches from easy to all data,
a loss at its floor from the first steps, a run resumed with its optimizer state, tied embeddings, an unnormalised
residual MLP with small-init branches, a pre-LN transformer with a Noam warm-up, a GRU tagger, an MSE autoencoder,
a two-head multi-task loss, class-weighted cross-entropy on imbalanced data, distillation with a KL loss, L1
regression under heavy-tailed noise, modular arithmetic, active gradient clipping, EMA weights for validation, a
backbone frozen for 300 steps then unfrozen, tiny Hugging Face ViT and T5 models). Faults include bug types the first
two suites lack (a (B,1)-vs-(B,) MSE broadcast, Adam at lr 50, AdamW at lr 1e-7 on a ViT, coupled SGD weight decay
0.5, Dropout2d 0.9, constant conv init, an init with std sqrt(fan_in), features left in raw units, training labels
shifted one row or one-indexed, a cached first batch, value clipping at 1e-6, a StepLR that multiplies the lr by 10,
NaN sensor readings mid-run, a loss scaled by 1e6, an Elman RNN with recurrent gain 5, unstandardised validation
features, weights re-initialised every epoch, 0/0 standardisation of a constant column, two sources concatenated
without shuffling, layer-wise lr decay 0.01, an ExponentialLR stepped per batch, a weight-decay group filter typo, a
warm-up counted in samples); ``expected`` names the check ids a correct tool would give as the root cause, fixed
before any result was seen.

    python benchmarks/fresh_suite3.py --out DIR --seeds 300 301 [--only NAME ...] [--jobs N] [--no-train] [--list]

Each run x seed trains in a worker process (one torch thread each) into DIR/NAME/seed<S>/ (the monitor's run
directory); a run whose spec is unchanged and whose store exists is not trained again. Then every run is evaluated
with the default pack, a table plus a summary is printed (and written to DIR/summary.json). Data: scikit-learn's
bundled/generated data sets and synthetic data only; Hugging Face models from tiny configs (no download).
"""

from __future__ import annotations

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
from torch.utils.data import DataLoader, Sampler, TensorDataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside it
from _suite import LM, Net, fit, loaders, main as run_suite, registry, val_metrics  # noqa: E402,F401
from _suite import adam, adamw, mlp, sgd, tensors as _t  # noqa: E402,F401

SUITE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------- data
DATA_SEED = 9876  # data sets are the same for every seed; the seed varies initialisation and batch order


def split(x, y, val_frac=0.25, seed=DATA_SEED):
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(x))
    n_val = int(round(len(x) * val_frac))
    return x[idx[n_val:]], y[idx[n_val:]], x[idx[:n_val]], y[idx[:n_val]]


def standardise(xtr, xva):
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd < 1e-8, 1.0, sd)
    return (xtr - mu) / sd, (xva - mu) / sd


def tab(kind, std_x=True, **kw):
    """A scikit-learn classification set, split 75/25, features standardised on the training split."""
    from sklearn import datasets as d
    if kind == "digits":
        x, y = d.load_digits(return_X_y=True)
    elif kind == "breast":
        x, y = d.load_breast_cancer(return_X_y=True)
    elif kind == "moons":
        x, y = d.make_moons(n_samples=kw.get("n", 1000), noise=kw.get("noise", 0.2), random_state=DATA_SEED)
    elif kind == "blobs":
        x, y = d.make_blobs(n_samples=kw.get("n", 2000), centers=kw.get("centers", 4), n_features=kw.get("d", 6),
                            cluster_std=kw.get("std", 1.0), center_box=(-10, 10), random_state=DATA_SEED)
    elif kind == "classif":
        x, y = d.make_classification(n_samples=kw.get("n", 4000), n_features=kw.get("d", 20),
                                     n_informative=kw.get("inf", 10), n_redundant=4, n_classes=kw.get("k", 4),
                                     n_clusters_per_class=kw.get("clusters", 2), flip_y=kw.get("flip", 0.01),
                                     class_sep=kw.get("sep", 1.0), weights=kw.get("weights"), random_state=DATA_SEED)
    else:
        raise ValueError(kind)
    xtr, ytr, xva, yva = split(x.astype(np.float64), y, kw.get("val_frac", 0.25))
    if std_x:
        xtr, xva = standardise(xtr, xva)
    return (*_t(xtr, ytr), *_t(xva, yva))


def friedman(n=3000, noise=0.5):
    from sklearn.datasets import make_friedman1
    x, y = make_friedman1(n_samples=n, n_features=10, noise=noise, random_state=DATA_SEED)
    xtr, ytr, xva, yva = split(x, y)
    xtr, xva = standardise(xtr, xva)
    mu, sd = ytr.mean(), ytr.std()
    return (*_t(xtr, ((ytr - mu) / sd)[:, None], torch.float32), *_t(xva, ((yva - mu) / sd)[:, None], torch.float32))


def heavy_tail_reg(n=3000, d=16, df=1.5):
    """A linear-plus-interaction target with Student-t (df 1.5: infinite variance) noise."""
    rng = np.random.RandomState(DATA_SEED)
    x = rng.randn(n, d)
    w = rng.randn(d)
    y = x @ w + 0.5 * x[:, 0] * x[:, 1] + 0.3 * rng.standard_t(df, n)
    xtr, ytr, xva, yva = split(x, y)
    med = np.median(ytr)
    iqr = np.subtract(*np.percentile(ytr, [75, 25]))
    ytr, yva = (ytr - med) / iqr, (yva - med) / iqr
    return (*_t(xtr, ytr[:, None], torch.float32), *_t(xva, yva[:, None], torch.float32))


def pulses(n=3000, L=96, noise=0.5):
    """Four signal shapes in noise: up-chirp, down-chirp, two narrow bumps, one wide bump (channel-first 1D)."""
    rng = np.random.RandomState(DATA_SEED)
    t = np.linspace(0, 1, L)[None, :]
    y = rng.randint(0, 4, n)
    f0, f1 = rng.uniform(2, 4, (n, 1)), rng.uniform(9, 13, (n, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, 1))
    up = np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) * t ** 2) + ph)
    down = np.sin(2 * np.pi * (f1 * t - 0.5 * (f1 - f0) * t ** 2) + ph)
    c1 = rng.uniform(0.1, 0.4, (n, 1))
    c2 = c1 + rng.uniform(0.25, 0.5, (n, 1))
    two = 1.5 * (np.exp(-((t - c1) / 0.03) ** 2) + np.exp(-((t - c2) / 0.03) ** 2))
    one = 1.5 * np.exp(-((t - rng.uniform(0.3, 0.7, (n, 1))) / 0.12) ** 2)
    s = np.stack([up, down, two, one])[y, np.arange(n)]
    x = (s * rng.uniform(0.6, 1.4, (n, 1)) + noise * rng.randn(n, L))[:, None, :]
    nv = n // 5
    return (*_t(x[nv:], y[nv:]), *_t(x[:nv], y[:nv]))


def first_marker(n=4000, T=20, vocab=12, seed=DATA_SEED):
    """Which of the marker tokens 1, 2, 3 occurs first in a sequence of filler tokens (each occurs once)."""
    rng = np.random.RandomState(seed)
    x = rng.randint(4, vocab, (n, T))
    for i in range(n):
        pos = rng.choice(T, 3, replace=False)
        x[i, pos] = [1, 2, 3]
    first = np.stack([(x == k).argmax(1) for k in (1, 2, 3)], 1).argmin(1)
    x, y = torch.tensor(x), torch.tensor(first)
    nv = n // 5
    return x[nv:], y[nv:], x[:nv], y[:nv]


def count_mod3(n=3000, T=24):
    """Tag each position with the running count of token 1 so far, mod 3 (tokens 0-3)."""
    rng = np.random.RandomState(DATA_SEED)
    x = rng.randint(0, 4, (n, T))
    y = np.cumsum(x == 1, 1) % 3
    x, y = torch.tensor(x), torch.tensor(y)
    nv = n // 5
    return x[nv:], y[nv:], x[:nv], y[:nv]


def histogram_task(n=4000, T=12, vocab=8):
    """Tag each token with how many times it occurs in its sequence, minus one (the 'histogram' task)."""
    rng = np.random.RandomState(DATA_SEED)
    x = rng.randint(0, vocab, (n, T))
    y = (x[:, :, None] == x[:, None, :]).sum(2) - 1
    x, y = torch.tensor(x), torch.tensor(y)
    nv = n // 5
    return x[nv:], y[nv:], x[:nv], y[:nv]


def reverse_task(n=4000, T=10, vocab=12):
    rng = np.random.RandomState(DATA_SEED)
    x = rng.randint(2, vocab, (n, T))
    y = x[:, ::-1].copy()
    x, y = torch.tensor(x), torch.tensor(y)
    nv = n // 5
    return x[nv:], y[nv:], x[:nv], y[:nv]


def word_lm(n=3000, T=32, vocab=24, n_words=30):
    """A 'language' of 30 words (2-4 tokens each) drawn with Zipf frequencies, separated by token 1."""
    rng = np.random.RandomState(DATA_SEED)
    words = [list(rng.randint(2, vocab, rng.randint(2, 5))) for _ in range(n_words)]
    p = 1.0 / np.arange(1, n_words + 1)
    p /= p.sum()
    stream = []
    while len(stream) < n * (T + 1):
        stream += words[rng.choice(n_words, p=p)] + [1]
    x = torch.tensor(np.array(stream[:n * (T + 1)]).reshape(n, T + 1), dtype=torch.long)
    nv = n // 6
    return x[nv:], x[:nv]


def bow_docs(n=3000, V=400, K=5, length=30):
    """Documents of 30 tokens from a mixture of a topic's word distribution (60%) and background (40%)."""
    rng = np.random.RandomState(DATA_SEED)
    topics = rng.dirichlet(np.full(V, 0.05), K)
    bg = rng.dirichlet(np.ones(V))
    y = rng.randint(0, K, n)
    x = np.empty((n, length), dtype=np.int64)
    for i in range(n):
        p = 0.6 * topics[y[i]] + 0.4 * bg
        x[i] = rng.choice(V, length, p=p)
    x, y = torch.tensor(x), torch.tensor(y)
    nv = n // 5
    return x[nv:], y[nv:], x[:nv], y[:nv]


def modular_add(p=23, train_frac=0.8):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    x = np.stack([a.ravel(), b.ravel()], 1)
    y = (x[:, 0] + x[:, 1]) % p
    rng = np.random.RandomState(DATA_SEED)
    idx = rng.permutation(len(x))
    ntr = int(train_frac * len(x))
    x, y = torch.tensor(x), torch.tensor(y)
    return x[idx[:ntr]], y[idx[:ntr]], x[idx[ntr:]], y[idx[ntr:]]




# ---------------------------------------------------------------------------------------------------- modules
def lam(opt, f):
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, f), "interval": "step"}


def sched(s, interval="step"):
    return lambda o: {"scheduler": s(o), "interval": interval}


class Tagger(Net):
    """Per-position classification on (B, T) inputs and (B, T) targets; ``model(x) -> (B, T, C)`` logits."""

    def shared_step(self, batch):
        x, y = batch
        out = self(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return loss, (out.argmax(-1) == y).float().mean() * len(y), len(y)


def cnn_digits(n_out=10, drop2d=0.0, widths=(32, 64)):
    d = (lambda: nn.Dropout2d(drop2d)) if drop2d else nn.Identity
    a, b = widths
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, a, 3, padding=1), nn.ReLU(), d(),
                         nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), d(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(b * 16, 128), nn.ReLU(), nn.Linear(128, n_out))


def cnn1d(n_out=4, width=24):
    return nn.Sequential(nn.Conv1d(1, width, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(2 * width, 2 * width, 5, padding=2), nn.ReLU(), nn.AdaptiveMaxPool1d(1),
                         nn.Flatten(), nn.Linear(2 * width, n_out))


class GRUNet(nn.Module):
    """Token embedding, a GRU, a head on the last state (or on every state with ``per_step``)."""

    def __init__(self, vocab, n_out, emb=32, hidden=64, per_step=False, cell=nn.GRU, **rnn_kw):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = cell(emb, hidden, batch_first=True, **rnn_kw)
        self.head = nn.Linear(hidden, n_out)
        self.per_step = per_step

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.head(h if self.per_step else h[:, -1])


class TiedLSTMLM(nn.Module):
    """An LSTM language model whose output projection shares the input embedding's weight (Press & Wolf 2017)."""

    def __init__(self, vocab, d=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.rnn = nn.LSTM(d, d, batch_first=True)
        self.out = nn.Linear(d, vocab)
        self.out.weight = self.emb.weight

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.out(h)


class PreLNBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h):
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        return h + self.ff(self.ln2(h))


class PreLNTagger(nn.Module):
    def __init__(self, vocab, n_out, T, d=64, heads=4, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, T, d) * 0.02)
        self.blocks = nn.ModuleList(PreLNBlock(d, heads) for _ in range(layers))
        self.lnf = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        h = self.emb(x) + self.pos[:, :x.shape[1]]
        for b in self.blocks:
            h = b(h)
        return self.head(self.lnf(h))


class ResMLPNoNorm(nn.Module):
    """Residual MLP without normalisation; each branch's last layer scaled down at init (SkipInit / Fixup style)."""

    def __init__(self, d_in, width, depth, n_out, branch_scale=0.1):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
                                    for _ in range(depth))
        with torch.no_grad():
            for b in self.blocks:
                b[2].weight.mul_(branch_scale)
                b[2].bias.zero_()
        self.out = nn.Linear(width, n_out)

    def forward(self, x):
        h = F.relu(self.inp(x))
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class HFViT(nn.Module):
    def __init__(self, n_out=10, d=48, layers=2, heads=4):
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification
        self.m = ViTForImageClassification(ViTConfig(
            image_size=8, patch_size=2, num_channels=1, hidden_size=d, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=2 * d, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, num_labels=n_out))

    def forward(self, x):
        return self.m(pixel_values=x.view(-1, 1, 8, 8)).logits


class HFT5(nn.Module):
    def __init__(self, vocab, d=48, layers=1, heads=4):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration
        self.m = T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=d, d_kv=d // heads, d_ff=2 * d, num_layers=layers, num_decoder_layers=layers,
            num_heads=heads, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))

    def forward(self, x, labels):
        return self.m(input_ids=x, labels=labels).logits


class Seq2Seq(Net):
    """Teacher-forced seq2seq: ``model(x, labels) -> logits`` (the model shifts the labels right itself)."""

    def forward(self, x, labels=None):
        return self.model(x, labels)

    def shared_step(self, batch):
        x, y = batch
        out = self(x, y)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return loss, (out.argmax(-1) == y).float().mean() * len(y), len(y)


def pretrain(model, x, y, steps, lr=1e-3, bs=64, seed=0):
    """A plain training loop (not monitored): what a run resumed or distilled from was trained with."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(x), (bs,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


# ------------------------------------------------------------------------------------------------------ registry
RUNS, healthy, fault = registry(SUITE_VERSION)


# ================================================================================================ HEALTHY RUNS
@healthy("h3-mlp-classif-onecycle-nesterov", "make_classification, SGD Nesterov + OneCycle to max lr 0.2 (lr rises 8x "
         "then anneals to ~0)", ok_acc=0.75)
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=4)
    m = Net(mlp([20, 128, 128, 4]), sgd(0.01, momentum=0.9, nesterov=True),
            sched(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.2, total_steps=1200)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h3-friedman-nadam-poly-decay", "Friedman #1 regression, NAdam 2e-3, PolynomialLR power 2 to zero",
         ok_ratio=0.3)
def _(run_dir):
    xtr, ytr, xva, yva = friedman()
    m = Net(mlp([10, 128, 128, 1], act=nn.SiLU), lambda p: torch.optim.NAdam(p, lr=2e-3), task="reg",
            sched_fn=sched(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=1500, power=2.0)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


@healthy("h3-cnn1d-pulses-rmsprop", "1D conv (no norm) on chirps/bumps in noise, RMSprop 5e-4", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = pulses()
    m = Net(cnn1d(), lambda p: torch.optim.RMSprop(p, lr=5e-4))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class BagOfWords(nn.Module):
    def __init__(self, V, K, d=32):
        super().__init__()
        self.emb = nn.EmbeddingBag(V, d, mode="mean")
        self.head = nn.Linear(d, K)

    def forward(self, x):
        return self.head(self.emb(x))


@healthy("h3-bow-embeddingbag-adagrad", "topic classification, EmbeddingBag(mean) + linear, Adagrad 0.1 (sparse-ish "
         "word gradients)", ok_acc=0.8)
def _(run_dir):
    xtr, ytr, xva, yva = bow_docs()
    m = Net(BagOfWords(400, 5), lambda p: torch.optim.Adagrad(p, lr=0.1))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h3-cnn-digits-radam", "digits CNN, RAdam 1e-3 (its built-in variance warm-up), batch 32", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(cnn_digits(), lambda p: torch.optim.RAdam(p, lr=1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h3-moons-adam-batch1", "make_moons, batch size 1 with Adam 5e-4: per-step loss jumps from ~0 to several",
         ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = tab("moons", n=1000, noise=0.15)
    m = Net(mlp([2, 64, 64, 2]), adam(5e-4))
    tr, va = loaders(xtr, ytr, xva, yva, 1)
    return fit(m, tr, va, run_dir, 2500, val_every=250)


class Mixup(Net):
    ALPHA = 0.4

    def training_step(self, batch, batch_idx):
        x, y = batch
        lm = float(np.random.beta(self.ALPHA, self.ALPHA))
        perm = torch.randperm(len(x))
        out = self(lm * x + (1 - lm) * x[perm])
        loss = lm * F.cross_entropy(out, y) + (1 - lm) * F.cross_entropy(out, y[perm])
        self.log("train_loss", loss)
        return loss


@healthy("h3-mlp-digits-mixup", "digits MLP with mixup (alpha 0.4): the training loss stays well above the validation "
         "loss", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Mixup(mlp([64, 256, 256, 10]), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


class Cutout(Net):
    SIZE = 4

    def training_step(self, batch, batch_idx):
        x, y = batch
        b = len(x)
        r = torch.randint(0, 8 - self.SIZE + 1, (b, 1, 1))
        c = torch.randint(0, 8 - self.SIZE + 1, (b, 1, 1))
        ii, jj = torch.arange(8).view(1, 8, 1), torch.arange(8).view(1, 1, 8)
        hole = (ii >= r) & (ii < r + self.SIZE) & (jj >= c) & (jj < c + self.SIZE)
        x = x.view(b, 8, 8).masked_fill(hole, 0.0).view(b, 64)
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss


@healthy("h3-cnn-digits-cutout-sgd-warm-restarts", "digits CNN, cutout of a 4x4 patch, SGD momentum with cosine warm "
         "restarts (T_0 250, T_mult 2)", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Cutout(cnn_digits(), sgd(0.05, momentum=0.9, weight_decay=5e-4),
               sched(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=250, T_mult=2)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1750, val_every=125)


class CurriculumSampler(Sampler):
    """Draws indices from the easy pool until the module's step reaches ``switch``, then from the whole set."""

    def __init__(self, easy, n, switch, clock):
        self.easy, self.n, self.switch, self.clock = easy, n, switch, clock

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            pool_n = len(self.easy) if self.clock["step"] < self.switch else self.n
            j = int(torch.randint(0, pool_n, (1,)))
            yield int(self.easy[j]) if self.clock["step"] < self.switch else j


class Curriculum(Net):
    def __init__(self, *a, clock, **k):
        super().__init__(*a, **k)
        self.clock = clock

    def on_train_batch_start(self, batch, batch_idx):
        self.clock["step"] = self.global_step


@healthy("h3-curriculum-easy-then-all", "curriculum: 500 steps on the 40% most confidently classified samples, then "
         "all of them (the training loss jumps up at the switch)", ok_acc=0.72)
def _(run_dir):
    from sklearn.linear_model import LogisticRegression
    xtr, ytr, xva, yva = tab("classif", k=4, sep=0.9)
    p = LogisticRegression(max_iter=500).fit(xtr.numpy(), ytr.numpy()).predict_proba(xtr.numpy())
    conf = p[np.arange(len(ytr)), ytr.numpy()]
    easy = np.argsort(-conf)[:int(0.4 * len(ytr))]
    clock = {"step": 0}
    m = Curriculum(mlp([20, 128, 128, 4]), adam(1e-3), clock=clock)
    tr = DataLoader(TensorDataset(xtr, ytr), batch_size=32, drop_last=True,
                    sampler=CurriculumSampler(easy, len(xtr), 500, clock))
    va = DataLoader(TensorDataset(xva, yva), batch_size=512)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


@healthy("h3-separable-blobs-loss-at-floor", "4 well-separated blobs, SGD 0.1: the loss reaches ~0 in the first few "
         "dozen steps and sits there", ok_acc=0.99)
def _(run_dir):
    xtr, ytr, xva, yva = tab("blobs", n=2000, centers=4, std=0.6)
    m = Net(mlp([6, 32, 4]), sgd(0.1))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h3-gru-resumed-with-optimizer-state", "GRU 'which marker first' trained 700 steps (plain loop), resumed "
         "under the monitor with the same Adam and its restored state: starts near its floor", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = first_marker()
    model = GRUNet(12, 3, emb=16, hidden=48)
    st = pretrain(model, xtr, ytr, 700, lr=3e-3).state_dict()

    def opt_fn(params):
        o = torch.optim.Adam(params, lr=3e-3)
        o.load_state_dict(st)
        return o
    m = Net(model, opt_fn)
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h3-lstm-lm-tied-embeddings", "LSTM LM on a Zipfian 30-word language, output layer tied to the embedding, "
         "Adam 3e-3", ok_ratio=0.6)
def _(run_dir):
    xtr, xva = word_lm()
    m = LM(TiedLSTMLM(24), adam(3e-3))
    tr = DataLoader(TensorDataset(xtr), batch_size=32, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva), batch_size=256)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h3-resmlp-no-norm-small-branch-init", "16 residual blocks, no normalisation, branch outputs scaled 0.1 at "
         "init, SGD momentum 0.02", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(ResMLPNoNorm(64, 96, 16, 10), sgd(0.02, momentum=0.9))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


def noam(warm):
    return lambda s: min((s + 1) / warm, math.sqrt(warm / (s + 1)))


@healthy("h3-preln-transformer-noam-histogram", "own pre-LN transformer tagging each token with its count in the "
         "sequence, Adam + Noam warm-up 200 / inverse-sqrt decay", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = histogram_task()
    m = Tagger(PreLNTagger(8, 12, 12, d=48), adam(2e-3, betas=(0.9, 0.98)), lambda o: lam(o, noam(200)))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


@healthy("h3-gru-tagger-count-mod3", "GRU tagging the running count of a token mod 3, Adam 3e-3", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = count_mod3()
    m = Tagger(GRUNet(4, 3, emb=16, hidden=48, per_step=True), adam(3e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h3-autoencoder-digits-mse", "MLP autoencoder 64-128-8-128-64 on digits, MSE reconstruction, AdamW",
         ok_ratio=0.5)
def _(run_dir):
    xtr, _, xva, _ = tab("digits")
    m = Net(mlp([64, 128, 8, 128, 64], act=nn.ELU), adamw(2e-3, weight_decay=1e-4), task="reg")
    tr, va = loaders(xtr, xtr, xva, xva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class TwoHeads(nn.Module):
    def __init__(self, d_in, k):
        super().__init__()
        self.trunk = mlp([d_in, 128, 64], final=nn.ReLU())
        self.cls, self.reg = nn.Linear(64, k), nn.Linear(64, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.cls(h), self.reg(h)


class MultiTask(Net):
    def shared_step(self, batch):
        x, y, r = batch
        logits, pred = self(x)
        loss = F.cross_entropy(logits, y) + F.mse_loss(pred, r)
        return loss, (logits.argmax(-1) == y).sum(), len(y)


@healthy("h3-multitask-cls-plus-regression", "shared trunk, a class head and a regression head, loss = CE + MSE, "
         "Adam", ok_ratio=0.6)
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=3, sep=1.2)
    w = torch.randn(20, generator=torch.Generator().manual_seed(DATA_SEED)) / math.sqrt(20)
    g = torch.Generator().manual_seed(DATA_SEED + 1)
    rtr = (torch.tanh(xtr @ w) + 0.2 * torch.randn(len(xtr), generator=g))[:, None]
    rva = (torch.tanh(xva @ w) + 0.2 * torch.randn(len(xva), generator=g))[:, None]
    m = MultiTask(TwoHeads(20, 3), adam(1e-3))
    tr = DataLoader(TensorDataset(xtr, ytr, rtr), batch_size=32, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva, yva, rva), batch_size=512)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h3-imbalanced-weighted-ce", "85/10/5 class imbalance, cross-entropy weighted by inverse class frequency",
         ok_ratio=0.6)
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=3, sep=1.2, weights=[0.85, 0.10, 0.05], flip=0.0)
    cw = (len(ytr) / (3 * torch.bincount(ytr, minlength=3).float()))
    m = Net(mlp([20, 128, 64, 3]), adam(1e-3), loss_fn=lambda o, y: F.cross_entropy(o, y, weight=cw))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class Distill(Net):
    T, ALPHA = 4.0, 0.7

    def __init__(self, student, teacher, opt_fn):
        super().__init__(student, opt_fn)
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def shared_step(self, batch):
        x, y = batch
        out = self(x)
        with torch.no_grad():
            t = self.teacher(x)
        kd = F.kl_div(F.log_softmax(out / self.T, -1), F.softmax(t / self.T, -1), reduction="batchmean")
        loss = self.ALPHA * self.T ** 2 * kd + (1 - self.ALPHA) * F.cross_entropy(out, y)
        return loss, (out.argmax(-1) == y).sum(), len(y)


@healthy("h3-distill-kl-small-student", "a 512x512 teacher (plain loop) distilled into a 32-unit student, KL at "
         "T=4 plus CE", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    teacher = mlp([64, 512, 512, 10])
    pretrain(teacher, xtr, ytr, 800)
    m = Distill(mlp([64, 32, 10]), teacher, adam(2e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h3-l1-regression-student-t-noise", "regression with Student-t df 1.5 noise under an L1 loss, Adam",
         ok_ratio=0.6)
def _(run_dir):
    xtr, ytr, xva, yva = heavy_tail_reg()
    m = Net(mlp([16, 128, 64, 1]), adam(1e-3), task="reg", loss_fn=F.l1_loss)
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class PairEmbed(nn.Module):
    def __init__(self, p, d=64, width=256):
        super().__init__()
        self.emb = nn.Embedding(p, d)
        self.net = mlp([2 * d, width, p])

    def forward(self, x):
        return self.net(self.emb(x).flatten(1))


@healthy("h3-modular-addition-generalises", "(a + b) mod 23 from 80% of the pairs, embedding + MLP, AdamW wd 0.5",
         ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = modular_add()
    m = Net(PairEmbed(23), adamw(3e-3, weight_decay=0.5))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 2000, val_every=200)


@healthy("h3-cnn1d-clip-norm-active-sgd", "1D CNN, SGD 0.05 momentum, gradient_clip_val 0.5: clipping active early, "
         "not strangling", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = pulses()
    m = Net(cnn1d(), sgd(0.05, momentum=0.9))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150, gradient_clip_val=0.5)


class EMANet(Net):
    """Trains ``model``; validates an exponential moving average of its weights (decay 0.995)."""

    def __init__(self, *a, decay=0.995, **k):
        super().__init__(*a, **k)
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.model(x) if self.training else self.ema(x)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.ema.update_parameters(self.model)


@healthy("h3-ema-weights-validated", "digits MLP, AdamW; validation on EMA weights (decay 0.995), which lag the "
         "trained ones", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = EMANet(mlp([64, 256, 128, 10], dropout=0.2), adamw(1e-3, weight_decay=0.01))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


class FreezeThenUnfreeze(Net):
    UNFREEZE = 300

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == self.UNFREEZE:
            for p in self.model[0].parameters():
                p.requires_grad_(True)

    def configure_optimizers(self):
        body, head = self.model[0], self.model[1]
        return torch.optim.Adam([{"params": list(body.parameters()), "lr": 3e-4},
                                 {"params": list(head.parameters()), "lr": 1e-3}])


@healthy("h3-freeze-backbone-300-then-unfreeze", "backbone pre-trained on even digits (plain loop), frozen for 300 "
         "steps while a new 10-class head trains, then unfrozen at a 3x lower lr", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    body = mlp([64, 256, 128], final=nn.ReLU())
    ev = ytr % 2 == 0
    pretrain(nn.Sequential(body, nn.Linear(128, 10)), xtr[ev], ytr[ev], 500)
    for p in body.parameters():
        p.requires_grad_(False)
    m = FreezeThenUnfreeze(nn.Sequential(body, nn.Linear(128, 10)), None)
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


@healthy("h3-vit-tiny-digits-linear-decay", "HF ViT (2x48, 2x2 patches) from scratch on digits, AdamW, warm-up 100 "
         "then linear decay to zero", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(HFViT(10), adamw(2e-3, weight_decay=0.05),
            lambda o: lam(o, lambda s: min((s + 1) / 100, max(0.0, (1200 - s) / 1100))))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h3-t5-tiny-reverse-seq2seq", "HF T5 (1+1 layers, 48 wide) from scratch, reverse a 10-token sequence, "
         "AdamW with warm-up", ok_acc=0.8)
def _(run_dir):
    xtr, ytr, xva, yva = reverse_task()
    m = Seq2Seq(HFT5(12), adamw(3e-3, weight_decay=0.01), lambda o: lam(o, lambda s: min(1.0, (s + 1) / 100)))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


# ================================================================================================== FAULT RUNS
DIVERGE = {"loss-divergence", "exploding-gradients", "non-finite"}


@fault("f3-mse-target-shape-broadcast", {"no-progress", "premature-plateau"},
       "MSE between a (B,1) output and a (B,) target broadcasts to (B,B): the best the net can do is predict the mean; "
       "the loss cannot fall below the target variance it starts at -> no progress (a plateau at once)")
def _(run_dir):
    xtr, ytr, xva, yva = friedman()
    m = Net(mlp([10, 128, 128, 1]), adam(1e-3), task="reg")
    tr, va = loaders(xtr, ytr[:, 0], xva, yva[:, 0], 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f3-adam-lr-50", {"loss-divergence", "exploding-gradients", "update-too-large"},
       "Adam lr=50 (meant 5e-4): every weight moves by ~50 on the first step, logits explode; the loss climbs far "
       "above its start and the updates dwarf the weights")
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(mlp([64, 256, 256, 10]), adam(50.0))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@fault("f3-vit-adamw-lr-1e-7", {"update-too-small", "no-progress"},
       "HF ViT on digits with AdamW lr=1e-7 (a 1e-3 with a typo'd exponent): updates ~1e-7 of weights ~1e-2")
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(HFViT(10), adamw(1e-7, weight_decay=0.01))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@fault("f3-sgd-weight-decay-0.5", {"over-regularization"},
       "SGD lr 0.05 momentum 0.9 with weight_decay=0.5 (meant 5e-4): decay takes 2.5% of every weight per step, the "
       "weights collapse and the loss stays near chance")
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=4)
    m = Net(mlp([20, 256, 256, 4]), sgd(0.05, momentum=0.9, weight_decay=0.5))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f3-dropout2d-0.9-cnn", {"over-regularization"},
       "Dropout2d(p=0.9) after each conv of a small (8/16-channel) digits CNN (meant 0.1): 90% of the feature maps "
       "dropped in training, training loss stuck high and above the (dropout-free) validation loss. (First version, "
       "32/64 channels, still reached 0.96 accuracy -- the bug barely bit -- so the CNN was narrowed.)")
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(cnn_digits(drop2d=0.9, widths=(8, 16)), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


@fault("f3-conv-constant-init", {"symmetric-units"},
       "1D CNN whose every conv/linear weight is filled with 0.02 and bias 0 ('deterministic init'): all filters of a "
       "layer identical, and they get identical gradients, so the symmetry never breaks")
def _(run_dir):
    xtr, ytr, xva, yva = pulses()
    model = cnn1d()
    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Linear)):
            nn.init.constant_(mod.weight, 0.02)
            nn.init.zeros_(mod.bias)
    m = Net(model, adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class TanhMLP(nn.Module):
    def __init__(self, d_in, width, depth, n_out):
        super().__init__()
        self.hidden = nn.ModuleList(nn.Linear(d_in if i == 0 else width, width) for i in range(depth))
        self.head = nn.Linear(width, n_out)
        with torch.no_grad():
            for lin in self.hidden:   # bug: std = sqrt(fan_in) where 1 / sqrt(fan_in) was meant
                lin.weight.normal_(0.0, math.sqrt(lin.in_features))

    def forward(self, x):
        for lin in self.hidden:
            x = torch.tanh(lin(x))
        return self.head(x)


@fault("f3-tanh-init-std-sqrt-fan-in", {"saturated-activations", "vanishing-gradients"},
       "custom init of a 4-layer tanh MLP with std sqrt(fan_in) (=16) instead of 1/sqrt(fan_in): every tanh sits at "
       "+-1, its derivative ~0, so the gradients below the head vanish")
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=4)
    m = Net(TanhMLP(20, 256, 4, 4), sgd(0.01, momentum=0.9))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f3-features-in-raw-units-1e4-sgd", DIVERGE,
       "5 of 20 features left in raw units (x1e4, e.g. amounts in cents) while the rest are standardised, SGD lr 0.01 "
       "momentum 0.9: the first layer's gradient is 1e4x too large, the run blows up")
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=4)
    scale = torch.ones(20)
    scale[:5] = 1e4
    m = Net(mlp([20, 128, 128, 4]), sgd(0.01, momentum=0.9))
    tr, va = loaders(xtr * scale, ytr, xva * scale, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f3-train-labels-shifted-one-row", {"train-val-divergence", "validation-stalled"},
       "training labels torch.roll-ed by one row against their inputs (a misaligned join); a 512x512 MLP memorises the "
       "meaningless pairs while the validation loss rises from chance")
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(mlp([64, 512, 512, 10]), adam(1e-3))
    tr, va = loaders(xtr, torch.roll(ytr, 1), xva, yva, 32)
    return fit(m, tr, va, run_dir, 2500, val_every=250)


class CachedFirstBatch(Net):
    """A 'speed-up' that caches the first batch (meant for a shape check) and then trains on it every step."""

    def training_step(self, batch, batch_idx):
        if not hasattr(self, "_cached"):
            self._cached = batch
        loss, _, _ = self.shared_step(self._cached)
        self.log("train_loss", loss)
        return loss


@fault("f3-trains-on-cached-first-batch", {"validation-stalled", "train-val-divergence"},
       "training_step trains on the first batch (64 rows) at every step: the training loss goes to ~0, the "
       "validation loss never improves much and then rises")
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=4, sep=0.8)
    m = CachedFirstBatch(mlp([20, 256, 256, 4]), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


@fault("f3-clip-by-value-1e-6", {"update-too-small", "no-progress"},
       "gradient_clip_val=1e-6 with gradient_clip_algorithm='value' (meant a norm of 1.0), SGD 0.1 momentum: every "
       "gradient entry clamped to 1e-6, updates ~1e-6 of the weights")
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(cnn_digits(), sgd(0.1, momentum=0.9))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100, gradient_clip_val=1e-6, gradient_clip_algorithm="value")


@fault("f3-steplr-gamma-10-per-epoch", DIVERGE,
       "StepLR(step_size=1, gamma=10) (meant gamma 0.1) on a 1D CNN, SGD from 1e-4: the lr grows 10x each 75-step "
       "epoch and the run blows up after a few epochs of apparently healthy training")
def _(run_dir):
    xtr, ytr, xva, yva = pulses()
    m = Net(cnn1d(), sgd(1e-4, momentum=0.9),
            sched(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=10.0), interval="epoch"))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class SensorDropout(Net):
    """From step 600 a faulty sensor reports NaN for feature 2 of a few rows in every 50th batch."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step >= 600 and self.global_step % 50 == 0:
            x = x.clone()
            x[:3, 2] = float("nan")
        loss = self.compute_loss(self(x), y)
        self.log("train_loss", loss)
        return loss


@fault("f3-nan-sensor-readings-midrun", {"non-finite"},
       "Friedman regression MLP, Adam; from step 600 a few input rows carry NaN (missing sensor values not imputed): "
       "NaN loss, NaN gradients, NaN weights thereafter")
def _(run_dir):
    xtr, ytr, xva, yva = friedman()
    m = SensorDropout(mlp([10, 128, 64, 1]), adam(1e-3), task="reg")
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f3-loss-scaled-1e6-sgd", {"non-finite", "loss-divergence", "exploding-gradients"},
       "cross-entropy multiplied by 1e6 'to avoid float underflow' with plain SGD lr 0.01: gradients 1e6x, weights "
       "shoot off and the loss overflows")
def _(run_dir):
    xtr, ytr, xva, yva = tab("breast")
    m = Net(mlp([30, 64, 64, 2]), sgd(0.01), loss_fn=lambda o, y: 1e6 * F.cross_entropy(o, y))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@fault("f3-elman-rnn-recurrent-gain-5", {"exploding-gradients", "saturated-activations"},
       "tanh RNN whose recurrent matrix is orthogonal with gain=5 (tanh's gain 5/3 typed as 5), T=20, SGD 0.05 "
       "without clipping: chaotic saturated hidden states, gradients that explode through time")
def _(run_dir):
    xtr, ytr, xva, yva = first_marker()
    model = GRUNet(12, 3, emb=16, hidden=64, cell=nn.RNN, nonlinearity="tanh")
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=5.0)
    m = Net(model, sgd(0.05, momentum=0.9))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f3-val-features-not-standardised", {"validation-stalled", "train-val-divergence"},
       "features in raw units (scales 5-50, offsets +-100); the scaler is fit and applied to the training split but "
       "the validation split is fed raw: training falls, validation stays far off and does not improve")
def _(run_dir):
    from sklearn.datasets import make_classification
    x, y = make_classification(n_samples=4000, n_features=20, n_informative=10, n_redundant=4, n_classes=4,
                               class_sep=2.0, flip_y=0.0, random_state=DATA_SEED)
    rng = np.random.RandomState(DATA_SEED)
    x = x * rng.uniform(5, 50, 20) + rng.uniform(-100, 100, 20)
    xtr, ytr, xva, yva = split(x, y)
    xtr_s, _ = standardise(xtr, xva)
    m = Net(mlp([20, 256, 256, 4]), adam(1e-3))
    tr, va = loaders(*_t(xtr_s, ytr), *_t(xva, yva), 32)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


@fault("f3-train-labels-one-indexed", {"train-val-divergence", "validation-stalled"},
       "the training labels come 1-indexed (1..10, an 11-way head) and the validation labels 0-indexed: the net learns "
       "digit d -> d+1 and the validation loss rises as it grows confident")
def _(run_dir):
    xtr, ytr, xva, yva = tab("digits")
    m = Net(mlp([64, 256, 128, 11]), adam(1e-3))
    tr, va = loaders(xtr, ytr + 1, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


class ResetEachEpoch(Net):
    """An init helper hooked to the wrong event: it re-initialises every Linear layer at each epoch start."""

    def on_train_epoch_start(self):
        for mod in self.model.modules():
            if isinstance(mod, nn.Linear):
                mod.reset_parameters()


@fault("f3-weights-reinitialised-every-epoch", {"no-progress", "loss-spike", "oscillating-loss"},
       "reset_parameters() called in on_train_epoch_start (meant on_fit_start): every ~190 steps the loss jumps back "
       "to chance; over the run it gets nowhere")
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", n=8000, k=4, sep=1.5)
    m = ResetEachEpoch(mlp([20, 128, 128, 4]), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1900, val_every=100)


@fault("f3-constant-column-zero-over-zero", {"non-finite"},
       "a constant 'intercept' column added to the features and standardised without guarding std 0: 0/0 = NaN in "
       "every row, NaN from the first step")
def _(run_dir):
    from sklearn.datasets import make_classification
    x, y = make_classification(n_samples=3000, n_features=15, n_informative=8, n_classes=3, random_state=DATA_SEED)
    x = np.concatenate([x, np.ones((len(x), 1))], 1)
    xtr, ytr, xva, yva = split(x, y)
    mu, sd = xtr.mean(0), xtr.std(0)
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    m = Net(mlp([16, 128, 64, 3]), adam(1e-3))
    tr, va = loaders(*_t(xtr, ytr), *_t(xva, yva), 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@fault("f3-two-sources-concatenated-no-shuffle", {"oscillating-loss"},
       "two data files (classes 0-1, classes 2-3) concatenated and loaded with shuffle=False, SGD momentum: every ~70 "
       "steps the batches switch to classes the net just unlearned, the loss swings up and down again and again. "
       "(First version, digits 0-4 / 5-9 with Adam, learned both halves without forgetting -- the bug did not bite -- "
       "so the data set and optimizer were changed.)")
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", n=6000, k=4, sep=1.2)
    lo = ytr < 2
    xtr, ytr = torch.cat([xtr[lo], xtr[~lo]]), torch.cat([ytr[lo], ytr[~lo]])
    m = Net(mlp([20, 128, 4]), sgd(0.05, momentum=0.9))
    tr, va = loaders(xtr, ytr, xva, yva, 32, shuffle=False)
    return fit(m, tr, va, run_dir, 1400, val_every=100)


class LLRD(Net):
    """Layer-wise lr decay: each Linear below the head gets ``factor`` times the lr of the one above."""

    FACTOR = 0.01

    def configure_optimizers(self):
        lins = [mod for mod in self.model if isinstance(mod, nn.Linear)][::-1]
        return torch.optim.Adam([{"params": list(lin.parameters()), "lr": 1e-3 * self.FACTOR ** i}
                                 for i, lin in enumerate(lins)])


@fault("f3-layerwise-lr-decay-0.01", {"layers-not-learning"},
       "layer-wise lr decay with factor 0.01 per layer (meant 0.9) in a 6-layer MLP: the lowest layer's lr is 1e-13, "
       "the bottom half of the net never trains")
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=4, sep=0.9)
    m = LLRD(mlp([20, 128, 128, 128, 128, 128, 4]), None)
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f3-exponential-lr-stepped-per-batch", {"lr-collapse"},
       "ExponentialLR(gamma=0.95) meant per epoch but given interval='step': the lr is 1e-3 of its start after ~135 "
       "steps and ~0 for the rest of the run; the GRU tagger stops learning early")
def _(run_dir):
    xtr, ytr, xva, yva = count_mod3()
    m = Tagger(GRUNet(4, 3, emb=16, hidden=48, per_step=True), adam(3e-3),
               sched(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.95)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class LNMLP(nn.Module):
    def __init__(self, d_in, width, n_out):
        super().__init__()
        self.fc1, self.norm1 = nn.Linear(d_in, width), nn.LayerNorm(width)
        self.fc2, self.norm2 = nn.Linear(width, width), nn.LayerNorm(width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        x = F.gelu(self.norm1(self.fc1(x)))
        x = F.gelu(self.norm2(self.fc2(x)))
        return self.head(x)


class DecayGroupTypo(Net):
    def configure_optimizers(self):
        named = list(self.named_parameters())
        decay = [p for n, p in named if n.endswith("weight") and "norm" in n]   # bug: meant 'norm' not in n
        no_decay = [p for n, p in named if n.endswith("bias")]
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)


@fault("f3-decay-group-filter-typo", {"unchanged-parameters"},
       "AdamW param groups built with `'norm' in n` where `not in` was meant: the Linear weights are in no group "
       "and never move; only biases and LayerNorm gains train")
def _(run_dir):
    xtr, ytr, xva, yva = tab("classif", k=4)
    m = DecayGroupTypo(LNMLP(20, 128, 4), None)
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f3-warmup-counted-in-samples", {"update-too-small", "no-progress"},
       "linear warm-up over 2,000,000 'steps' (the sample count of the full training set x epochs, meant 500 steps): "
       "at step 1500 the lr is still 7.5e-4 of its target, the updates are tiny throughout")
def _(run_dir):
    xtr, ytr, xva, yva = first_marker()
    m = Net(GRUNet(12, 3, emb=16, hidden=48), adamw(1e-3, weight_decay=0.01),
            lambda o: lam(o, lambda s: min(1.0, (s + 1) / 2_000_000)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


# ------------------------------------------------------------------------------------------------------ running
def main(argv=None):
    run_suite("fresh_suite3", __doc__, "fresh3_runs", [300, 301], argv)


if __name__ == "__main__":
    main()
