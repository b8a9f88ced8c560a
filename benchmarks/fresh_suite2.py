"""A second, independent held-out suite for the default check pack: realistic Lightning runs, healthy and faulty,
written without reference to the calibration corpus (``dyncheck/scenarios/``), the pack's thresholds or the first
held-out suite's runs (its harness -- CLI, worker pool, evaluation and summary -- is reused from
``benchmarks/fresh_suite.py``).

Each run is ordinary Lightning code (own LightningModules, own DataLoaders, ``pl.Trainer(max_steps=...)``) with
``DynamicsMonitor(dirpath=...)`` at its default options. Healthy runs include the alarming-but-normal (batch size 2-4,
cyclic and multi-step schedules, SGD at lr 1 with clipping, full-batch GD at the edge of stability, transfer
fine-tuning at a low lr, frozen pre-trained embeddings, label smoothing, heavy dropout, outlier targets under a Huber
loss, gradient accumulation, a wide net in the lazy regime). Faults include bug types the first suite lacks (a warmup
to a too-high peak, Adam eps=0.1 and swapped betas, SGD momentum 0.999, ``model.eval()`` left on during training,
BatchNorm at batch size 2, ``reduction='sum'`` with a tuned lr, gradient accumulation without dividing the loss, a
scheduler that raises the lr, train-only label leakage, duplicated data, log(0) in a hand-written BCE, an fp16 loss
overflow, a 20-layer plain MLP, zero_grad between backward and step, a Dataset index bug); ``expected`` names the
check ids a correct tool would give as the root cause, fixed before any result was seen.

    python benchmarks/fresh_suite2.py --out DIR --seeds 200 201 [--only NAME ...] [--jobs N] [--no-train] [--list]

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
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside it
from _suite import LM, Net, fit, loaders, main as run_suite, registry, val_metrics  # noqa: E402,F401
from _suite import adam, adamw, mlp, sgd, tensors as _t  # noqa: E402,F401

SUITE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------- data
DATA_SEED = 4321  # data sets are the same for every seed; the seed varies initialisation and batch order


def split_std(x, y, val_frac=0.25, std_x=True, seed=DATA_SEED):
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(x))
    n_val = int(round(len(x) * val_frac))
    va, tr = idx[:n_val], idx[n_val:]
    xtr, xva = x[tr].astype(np.float64), x[va].astype(np.float64)
    if std_x:
        mu, sd = xtr.mean(0), xtr.std(0)
        sd[sd < 1e-6] = 1.0   # a feature constant in the training split stays unscaled
        xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    return xtr, y[tr], xva, y[va]


def sk_cls(kind, **kw):
    from sklearn import datasets as d
    if kind == "wine":
        x, y = d.load_wine(return_X_y=True)
    elif kind == "iris":
        x, y = d.load_iris(return_X_y=True)
    elif kind == "breast":
        x, y = d.load_breast_cancer(return_X_y=True)
    elif kind == "digits":
        x, y = d.load_digits(return_X_y=True)
    elif kind == "blobs":
        x, y = d.make_blobs(n_samples=kw.get("n", 3000), centers=kw.get("centers", 5), n_features=kw.get("d", 8),
                            cluster_std=kw.get("std", 2.5), random_state=DATA_SEED)
    elif kind == "classif":
        x, y = d.make_classification(n_samples=kw.get("n", 4000), n_features=kw.get("d", 20),
                                     n_informative=kw.get("inf", 10), n_redundant=4, n_classes=kw.get("k", 4),
                                     n_clusters_per_class=2, flip_y=kw.get("flip", 0.02), class_sep=kw.get("sep", 1.0),
                                     random_state=DATA_SEED)
    else:
        raise ValueError(kind)
    xtr, ytr, xva, yva = split_std(x, y, kw.get("val_frac", 0.25), std_x=kw.get("std_x", True))
    return (*_t(xtr, ytr), *_t(xva, yva))


def sk_reg(n=3000, d=20, noise=15.0, std_y=True, outliers=0.0):
    from sklearn.datasets import make_regression
    x, y = make_regression(n_samples=n, n_features=d, n_informative=12, noise=noise, random_state=DATA_SEED)
    if outliers:
        rng = np.random.RandomState(DATA_SEED + 1)
        m = rng.rand(n) < outliers
        y = y + m * rng.standard_cauchy(n) * 300
    xtr, ytr, xva, yva = split_std(x, y)
    if std_y:
        mu, sd = ytr.mean(), ytr.std()
        ytr, yva = (ytr - mu) / sd, (yva - mu) / sd
    return (*_t(xtr, ytr[:, None], torch.float32), *_t(xva, yva[:, None], torch.float32))


def waveforms(n=3000, length=64, noise=0.4):
    """Sine / square / sawtooth / triangle of random frequency and phase plus noise, in channel-first 1D."""
    rng = np.random.RandomState(DATA_SEED)
    t = np.arange(length)[None, :]
    f = rng.uniform(0.03, 0.15, (n, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, 1))
    y = rng.randint(0, 4, n)
    z = 2 * np.pi * f * t + ph
    s = np.where(y[:, None] == 0, np.sin(z), np.where(y[:, None] == 1, np.sign(np.sin(z)),
                 np.where(y[:, None] == 2, 2 * ((z / (2 * np.pi)) % 1) - 1, 2 * np.abs(2 * ((z / (2 * np.pi)) % 1) - 1) - 1)))
    x = (s * rng.uniform(0.5, 1.5, (n, 1)) + noise * rng.randn(n, length))[:, None, :]
    nv = n // 5
    return (*_t(x[nv:], y[nv:]), *_t(x[:nv], y[:nv]))


def arith_lm(vocab=40, seq_len=24, n=3000):
    """Token sequences x_t = (a + b t) mod V with a few random corruptions: predictable after two tokens."""
    rng = np.random.RandomState(DATA_SEED)
    a = rng.randint(0, vocab, (n, 1))
    b = rng.randint(1, 7, (n, 1))
    x = (a + b * np.arange(seq_len + 1)[None, :]) % vocab
    m = rng.rand(*x.shape) < 0.05
    x = np.where(m, rng.randint(0, vocab, x.shape), x)
    x = torch.tensor(x, dtype=torch.long)
    nv = n // 6
    return x[nv:], x[:nv]


def dyck_lm(n=3000, seq_len=40):
    """Balanced bracket strings over 3 bracket types (plus pad/eos), a small formal language for a char LM."""
    rng = np.random.RandomState(DATA_SEED)
    opens, closes = [1, 2, 3], [4, 5, 6]
    seqs = []
    for _ in range(n):
        s, stack = [], []
        while len(s) < seq_len:
            if stack and (rng.rand() < 0.45 or len(stack) > 6):
                s.append(closes[stack.pop()])
            else:
                k = rng.randint(3)
                stack.append(k)
                s.append(opens[k])
        seqs.append(s[:seq_len + 1] + [0] * (seq_len + 1 - len(s)))
    x = torch.tensor(np.array(seqs)[:, :seq_len + 1], dtype=torch.long)
    nv = n // 6
    return x[nv:], x[:nv]


def count_tokens(n=3000, T=24, vocab=20, seed=DATA_SEED):
    """Classify which of tokens 1, 2, 3 occurs most often in a sequence (ties broken by the lower id)."""
    rng = np.random.RandomState(seed)
    x = rng.randint(1, vocab, (n, T))
    cnt = np.stack([(x == k).sum(1) for k in (1, 2, 3)], 1)
    # give one of the three a push so the task is learnable but not trivial
    win = rng.randint(0, 3, n)
    for i in range(n):
        pos = rng.choice(T, 3, replace=False)
        x[i, pos] = win[i] + 1
    cnt = np.stack([(x == k).sum(1) for k in (1, 2, 3)], 1)
    y = cnt.argmax(1)
    x, y = torch.tensor(x), torch.tensor(y)
    nv = n // 5
    return x[nv:], y[nv:], x[:nv], y[:nv]


def running_max(n=3000, T=30):
    rng = np.random.RandomState(DATA_SEED)
    x = rng.randn(n, T, 1)
    y = np.maximum.accumulate(x[:, :, 0], axis=1)[:, -1:] * 0.5 + 0.5 * x[:, -5:, 0].mean(1, keepdims=True)
    nv = n // 5
    return (*_t(x[nv:], y[nv:], torch.float32), *_t(x[:nv], y[:nv], torch.float32))


def sine_regression(n=3000, T=30):
    rng = np.random.RandomState(DATA_SEED)
    f = rng.uniform(0.05, 0.3, (n, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, 1))
    t = np.arange(T + 1)[None, :]
    s = np.sin(2 * np.pi * f * t + ph) + 0.05 * rng.randn(n, T + 1)
    x, y = s[:, :T, None], s[:, T:]
    nv = n // 5
    return (*_t(x[nv:], y[nv:], torch.float32), *_t(x[:nv], y[:nv], torch.float32))


# ---------------------------------------------------------------------------------------------------- modules
def lam(opt, f):
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, f), "interval": "step"}


def warm_cos(warm, total):
    return lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total - warm))))


def lm_loaders(xtr, xva, bs):
    return (DataLoader(TensorDataset(xtr), batch_size=bs, shuffle=True, drop_last=True),
            DataLoader(TensorDataset(xva), batch_size=256))


class ResMLP(nn.Module):
    def __init__(self, d_in, width, depth, n_out):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                                  nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_out))

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


def cnn1d(n_out=4, bn=True):
    return nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16) if bn else nn.Identity(), nn.ReLU(),
                         nn.MaxPool1d(2), nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32) if bn else nn.Identity(),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, n_out))


def cnn2d_digits(n_out=10):
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, n_out))


class SeqRNN(nn.Module):
    """Embedding (tokens) or linear (real-valued) input, an RNN, the last step's state to a head."""

    def __init__(self, n_out, cell="gru", vocab=None, d_in=1, emb=32, hidden=64, per_step=False, layers=1):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb) if vocab else nn.Linear(d_in, emb)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(emb, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, n_out)
        self.per_step = per_step

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.head(h if self.per_step else h[:, -1])


class TokenTransformer(nn.Module):
    def __init__(self, vocab, n_out, d=64, heads=4, layers=2, T=24):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, T, d) * 0.02)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True),
                                         layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        return self.head(self.enc(self.emb(x) + self.pos[:, :x.shape[1]]).mean(1))


class HFGPT2(nn.Module):
    def __init__(self, vocab, n_ctx=32, d=64, layers=2, heads=4):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel
        self.m = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=n_ctx, n_embd=d, n_layer=layers,
                                            n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

    def forward(self, x):
        return self.m(input_ids=x).logits


class HFDistilBert(nn.Module):
    def __init__(self, vocab, n_out, d=64, layers=2, heads=4, T=24):
        super().__init__()
        from transformers import DistilBertConfig, DistilBertForSequenceClassification
        self.m = DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=vocab, max_position_embeddings=T, dim=d, n_layers=layers, n_heads=heads, hidden_dim=2 * d,
            dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=n_out))

    def forward(self, x):
        return self.m(input_ids=x).logits


# ------------------------------------------------------------------------------------------------------ registry
RUNS, healthy, fault = registry(SUITE_VERSION)


# ================================================================================================ HEALTHY RUNS
@healthy("h2-mlp-wine-sgdm-cosine-bs16", "178-sample wine, SGD momentum 0.9 + wd, cosine to 0, batch 16", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("wine")
    m = Net(mlp([13, 64, 64, 3], dropout=0.1), sgd(0.02, momentum=0.9, weight_decay=5e-4),
            lambda o: lam(o, warm_cos(1, 1000)))
    tr, va = loaders(xtr, ytr, xva, yva, 16)
    return fit(m, tr, va, run_dir, 1000, val_every=50)


@healthy("h2-mlp-blobs-overlap-adam-bs4", "overlapping blobs (Bayes floor), batch 4, Adam 1e-3", ok_acc=0.7)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("blobs", n=2000, std=3.0)
    m = Net(mlp([8, 64, 64, 5]), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 4)
    return fit(m, tr, va, run_dir, 1500, val_every=250)


@healthy("h2-cnn1d-waveforms-adam-cosine", "1D conv + BN on noisy waveform shapes, Adam 3e-3 warmup-cosine", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = waveforms()
    m = Net(cnn1d(), adam(3e-3), lambda o: lam(o, warm_cos(50, 1200)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h2-mlp-regression-nesterov-multistep", "noisy regression, Nesterov SGD, lr /10 at 50% and 75%", ok_ratio=0.5)
def _(run_dir):
    xtr, ytr, xva, yva = sk_reg(noise=20.0)
    m = Net(mlp([20, 128, 64, 1]), sgd(0.01, momentum=0.9, nesterov=True), task="reg",
            sched_fn=lambda o: {"scheduler": torch.optim.lr_scheduler.MultiStepLR(o, [750, 1125], 0.1),
                                "interval": "step"})
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


@healthy("h2-gpt2-tiny-arith-seq-adamw-warmcos", "HF GPT-2 (2x64) on modular arithmetic sequences with 5% noise",
         ok_ratio=0.6)
def _(run_dir):
    xtr, xva = arith_lm()
    m = LM(HFGPT2(40, n_ctx=32), adamw(2e-3, weight_decay=0.01), lambda o: lam(o, warm_cos(100, 1000)))
    tr, va = lm_loaders(xtr, xva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h2-distilbert-tiny-count-cls-adamw", "HF DistilBERT (2x64) from scratch, which token is most frequent",
         ok_acc=0.8)
def _(run_dir):
    xtr, ytr, xva, yva = count_tokens()
    m = Net(HFDistilBert(20, 3), adamw(1e-3, weight_decay=0.01),
            lambda o: lam(o, lambda s: min(1.0, (s + 1) / 100) * max(0.05, 1 - s / 1200)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h2-lstm-dyck-lm-sgd-lr1-clip", "2-layer LSTM char LM on Dyck strings, SGD lr 1 with clip-norm 0.25 (PTB recipe)",
         ok_ratio=0.7)
def _(run_dir):
    xtr, xva = dyck_lm()
    m = LM(SeqRNN(7, cell="lstm", vocab=7, emb=32, hidden=96, per_step=True, layers=2), sgd(1.0))
    tr, va = lm_loaders(xtr, xva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150, gradient_clip_val=0.25)


@healthy("h2-resmlp-20-layernorm-adamw", "20 pre-LN residual MLP blocks, AdamW + warmup-cosine", ok_acc=0.75)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("classif", k=4)
    m = Net(ResMLP(20, 64, 20, 4), adamw(1e-3, weight_decay=0.05), lambda o: lam(o, warm_cos(100, 1000)))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


def mse_onehot(out, y):
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).float())


@healthy("h2-fullbatch-gd-iris-tanh-mse-eos", "full-batch GD on iris, tanh MLP, MSE on one-hot targets (Cohen et al.), "
         "lr large enough to reach 2/lr", ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("iris")
    m = Net(mlp([4, 32, 32, 3], act=nn.Tanh), sgd(0.5, weight_decay=1e-3), loss_fn=mse_onehot)
    tr, va = loaders(xtr, ytr, xva, yva, len(xtr))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@healthy("h2-transfer-digits-0to4-finetune-5to9", "MLP pre-trained on digits 0-4, new head, fine-tuned on 5-9 at Adam 1e-4",
         ok_acc=0.9)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("digits")
    body = mlp([64, 128, 128], final=nn.ReLU())
    pre = nn.Sequential(body, nn.Linear(128, 5))
    a = ytr < 5
    opt = torch.optim.Adam(pre.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    xa, ya = xtr[a], ytr[a]
    for _ in range(600):  # plain-loop pre-training, not monitored
        i = torch.randint(0, len(xa), (64,), generator=g)
        loss = F.cross_entropy(pre(xa[i]), ya[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    b, bv = ytr >= 5, yva >= 5
    m = Net(nn.Sequential(body, nn.Linear(128, 5)), adam(1e-4))
    tr, va = loaders(xtr[b], ytr[b] - 5, xva[bv], yva[bv] - 5, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h2-gru-frozen-pretrained-embedding", "GRU classifier on a pre-trained embedding frozen on purpose", ok_acc=0.8)
def _(run_dir):
    xtr, ytr, xva, yva = count_tokens(seed=DATA_SEED)
    xp, yp, _, _ = count_tokens(n=2000, seed=DATA_SEED + 7)
    pre = SeqRNN(3, vocab=20, emb=16, hidden=32)
    opt = torch.optim.Adam(pre.parameters(), lr=3e-3)
    for i in range(300):  # pre-training on other data (not monitored)
        j = slice((i * 64) % 1920, (i * 64) % 1920 + 64)
        loss = F.cross_entropy(pre(xp[j]), yp[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = SeqRNN(3, vocab=20, emb=16, hidden=64)
    model.emb.weight.data.copy_(pre.emb.weight.data)
    model.emb.weight.requires_grad_(False)
    m = Net(model, adam(2e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h2-mlp-classif-grad-accum4-sgdm", "make_classification, batch 16 x accumulate 4, SGD momentum", ok_acc=0.75)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("classif", k=3, sep=1.2)
    m = Net(mlp([20, 128, 128, 3]), sgd(0.05, momentum=0.9, weight_decay=1e-4))
    tr, va = loaders(xtr, ytr, xva, yva, 16)
    return fit(m, tr, va, run_dir, 1000, val_every=400, accumulate_grad_batches=4)


@healthy("h2-mlp-digits-label-smoothing-0.1", "digits MLP, CE with label smoothing 0.1 (loss floor > 0), Adam", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("digits")
    m = Net(mlp([64, 256, 128, 10]), adam(1e-3), label_smoothing=0.1)
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


@healthy("h2-mlp-cyclic-triangular-sgd", "make_classification, CyclicLR triangular 1e-3..0.1 (lr rises 4 times)", ok_acc=0.75)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("classif", k=5, d=24, inf=14, sep=1.3)
    m = Net(mlp([24, 128, 64, 5]), sgd(0.05, momentum=0.9),
            lambda o: {"scheduler": torch.optim.lr_scheduler.CyclicLR(o, 1e-3, 0.1, step_size_up=200), "interval": "step"})
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1600, val_every=200)


@healthy("h2-gru-sine-forecast-adam-cosine", "GRU one-step forecast of noisy sines, Adam + cosine", ok_ratio=0.3)
def _(run_dir):
    xtr, ytr, xva, yva = sine_regression()
    m = Net(SeqRNN(1, d_in=1, emb=16, hidden=48), adam(3e-3), lambda o: lam(o, warm_cos(1, 1200)), task="reg")
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@healthy("h2-wide-mlp-4096-lazy-sgd", "breast cancer, one 4096-wide hidden layer, small SGD lr (lazy regime)", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("breast")
    m = Net(mlp([30, 4096, 2]), sgd(0.002))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h2-mlp-digits-dropout0.5-adamw", "digits MLP with dropout 0.5 and AdamW wd 0.05 (train loss above val loss)",
         ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("digits")
    m = Net(mlp([64, 512, 512, 10], dropout=0.5), adamw(1e-3, weight_decay=0.05))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


@healthy("h2-huber-regression-cauchy-outliers", "regression with 3% Cauchy outlier targets under a Huber loss, Adam",
         ok_ratio=0.6)
def _(run_dir):
    xtr, ytr, xva, yva = sk_reg(noise=5.0, std_y=False, outliers=0.03)
    sd = float(ytr.std())
    ytr, yva = ytr / sd, yva / sd
    m = Net(mlp([20, 128, 64, 1]), adam(1e-3), task="reg", loss_fn=lambda o, y: F.huber_loss(o, y, delta=0.5))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


# ================================================================================================== FAULT RUNS
DIVERGE = {"loss-divergence", "non-finite", "update-too-large"}


@fault("f2-warmup-to-too-high-peak-transformer", DIVERGE,
       "encoder classifier, AdamW linear warmup over 70% of the run to lr 0.05 (meant 5e-4): stable early, blows up late")
def _(run_dir):
    xtr, ytr, xva, yva = count_tokens()
    m = Net(TokenTransformer(20, 3), adamw(0.05, weight_decay=0.01), lambda o: lam(o, lambda s: min(1.0, (s + 1) / 1050)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


@fault("f2-adam-eps-0.1", {"update-too-small", "no-progress"},
       "Adam with eps=0.1 (meant 1e-8): the update is lr*g/0.1, orders of magnitude too small for small gradients")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("classif", k=4)
    m = Net(mlp([20, 512, 512, 512, 4]), adam(3e-4, eps=0.1))
    tr, va = loaders(xtr, ytr, xva, yva, 128)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f2-sgd-momentum-0.999", DIVERGE, "SGD lr 0.05 with momentum 0.999 (meant 0.9): effective lr 50")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("blobs", n=3000, std=2.0)
    m = Net(mlp([8, 128, 128, 5]), sgd(0.05, momentum=0.999))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class EvalLeftOn(Net):
    """A 'quick train-accuracy' helper sets eval() inside training_step and never sets train() back."""

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.shared_step(batch)
        with torch.no_grad():
            self.eval()
            self.log("train_acc", (self(batch[0]).argmax(-1) == batch[1]).float().mean())
        self.log("train_loss", loss)
        return loss


@fault("f2-model-eval-left-on-in-training", {"train-val-divergence", "validation-stalled"},
       "model.eval() left on from step 1: dropout 0.5 off and BatchNorm frozen at its init stats, 300-sample digits overfit")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("digits", val_frac=0.8)
    m = EvalLeftOn(mlp([64, 512, 512, 10], dropout=0.5, bn=True), adam(2e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f2-batchnorm-batch-size-2", {"validation-stalled", "train-val-divergence"},
       "MLP with BatchNorm after every layer trained at batch size 2: batch statistics of two samples, eval stats mismatch")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("digits")
    m = Net(mlp([64, 128, 128, 10], bn=True), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 2)
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f2-reduction-sum-with-mean-tuned-lr", DIVERGE,
       "CNN on digits, cross-entropy reduction='sum' at batch 64 with SGD lr 0.05 momentum 0.9 tuned for 'mean'")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("digits")
    m = Net(cnn2d_digits(), sgd(0.05, momentum=0.9), loss_fn=lambda o, y: F.cross_entropy(o, y, reduction="sum"))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


class AccumNoDivide(Net):
    """Manual gradient accumulation over 8 micro-batches that forgets to divide the loss by 8."""

    ACC = 8

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss, _, _ = self.shared_step(batch)
        self.manual_backward(loss)          # bug: should be loss / self.ACC
        if (batch_idx + 1) % self.ACC == 0:
            opt.step()
            opt.zero_grad()
        self.log("train_loss", loss)
        return loss


@fault("f2-grad-accum-loss-not-divided", DIVERGE,
       "manual accumulation of 8 micro-batches without dividing the loss, SGD lr 0.1 momentum 0.9: an 8x step")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("classif", k=4)
    m = AccumNoDivide(mlp([20, 128, 128, 4]), sgd(0.1, momentum=0.9))
    tr, va = loaders(xtr, ytr, xva, yva, 16)
    return fit(m, tr, va, run_dir, 1200, val_every=300)


@fault("f2-exponential-lr-grows-gamma-typo", DIVERGE,
       "1D CNN, ExponentialLR gamma=1.004 per step (meant 0.996): the lr grows 400x over the run, blow-up late")
def _(run_dir):
    xtr, ytr, xva, yva = waveforms()
    m = Net(cnn1d(bn=False), sgd(0.01, momentum=0.9),
            lambda o: {"scheduler": torch.optim.lr_scheduler.ExponentialLR(o, 1.004), "interval": "step"})
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


@fault("f2-label-leak-train-only-feature", {"validation-stalled", "train-val-divergence"},
       "a 'target-encoded' feature built from the training labels (noisy one-hot); validation gets the uninformative mean")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("classif", k=4, sep=0.5, flip=0.1)
    g = torch.Generator().manual_seed(DATA_SEED)
    leak = F.one_hot(ytr, 4).float() + 0.1 * torch.randn(len(ytr), 4, generator=g)
    xtr = torch.cat([xtr, leak], 1)
    xva = torch.cat([xva, leak.mean(0, keepdim=True).expand(len(xva), 4)], 1)
    m = Net(mlp([24, 128, 128, 4]), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


@fault("f2-duplicated-train-data", {"train-val-divergence", "validation-stalled"},
       "a bad merge: 80 unique training rows repeated 40x (3200 rows), a 3-layer 512 MLP memorises them")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("classif", k=4, d=20, sep=0.8)
    xtr, ytr = xtr[:80].repeat(40, 1), ytr[:80].repeat(40)
    m = Net(mlp([20, 512, 512, 4]), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


def naive_bce(out, y):
    p = torch.sigmoid(out[:, 0])
    y = y.float()
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


@fault("f2-handwritten-bce-log0-nan", {"non-finite"},
       "BCE written as -(y log p + (1-y) log(1-p)) on sigmoid outputs, separable blobs, Adam 1e-2: p hits 1.0, log(0)")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("blobs", n=2000, centers=2, std=1.0)
    m = Net(mlp([8, 64, 64, 1]), adam(1e-2), loss_fn=naive_bce)
    m.shared_step = lambda b, m=m: (m.compute_loss(m(b[0]), b[1]), ((m(b[0])[:, 0] > 0).long() == b[1]).sum(), len(b[1]))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


def mse_fp16(out, y):
    # 'memory-saving' loss in half precision: squares above 65504 overflow to inf
    return ((out.half() - y.half()) ** 2).float().mean()


@fault("f2-fp16-loss-overflow", {"non-finite"},
       "unstandardised regression targets (std ~ 300) with the squared error computed in float16: inf on large errors")
def _(run_dir):
    xtr, ytr, xva, yva = sk_reg(noise=10.0, std_y=False)
    m = Net(mlp([20, 128, 64, 1]), adam(1e-3), task="reg", loss_fn=mse_fp16)
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f2-plain-mlp-20-layers-relu-sgd", {"vanishing-gradients"},
       "20 Linear+ReLU layers of width 64, PyTorch default init, no residual/normalisation, SGD momentum on digits")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("digits")
    m = Net(mlp([64] + [64] * 19 + [10]), sgd(0.01, momentum=0.9))
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f2-lr-too-high-distilbert-adamw", DIVERGE | {"no-progress"},
       "HF DistilBERT (2x64) from scratch with AdamW lr 2e-2 (meant 1e-3)")
def _(run_dir):
    xtr, ytr, xva, yva = count_tokens()
    m = Net(HFDistilBert(20, 3), adamw(2e-2, weight_decay=0.01))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


class CorruptBatch(Net):
    STEP = 700

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == self.STEP:   # one corrupted shard: targets in the wrong unit (x1000)
            y = y * 1000.0
        loss = self.compute_loss(self(x), y)
        self.log("train_loss", loss)
        return loss


@fault("f2-corrupted-target-batch-lstm", {"loss-spike"},
       "LSTM forecaster, Adam; one batch at step 700 has targets x1000 (a shard in the wrong unit)")
def _(run_dir):
    xtr, ytr, xva, yva = sine_regression()
    m = CorruptBatch(SeqRNN(1, cell="lstm", d_in=1, emb=16, hidden=48), adam(3e-3), task="reg")
    tr, va = loaders(xtr, ytr, xva, yva, 64)
    return fit(m, tr, va, run_dir, 1500, val_every=150)


@fault("f2-adam-betas-swapped", DIVERGE,
       "Adam(betas=(0.999, 0.9)) -- the pair swapped -- at lr 3e-3 on a digits CNN: slow momentum over a fast 2nd moment")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("digits")
    m = Net(cnn2d_digits(), adam(3e-3, betas=(0.999, 0.9)))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=100)


@fault("f2-relu-on-regression-head", {"clamped-output"},
       "standardised regression targets (half negative) through a final ReLU")
def _(run_dir):
    xtr, ytr, xva, yva = sk_reg(noise=10.0)
    m = Net(mlp([20, 128, 64, 1], final=nn.ReLU()), adam(1e-3), task="reg")
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


@fault("f2-adam-l2-weight-decay-1.0-gru", {"over-regularization"},
       "GRU classifier, Adam weight_decay=1.0 (coupled L2; meant 1e-4)")
def _(run_dir):
    xtr, ytr, xva, yva = count_tokens()
    m = Net(SeqRNN(3, vocab=20, emb=32, hidden=64), adam(2e-3, weight_decay=1.0))
    tr, va = loaders(xtr, ytr, xva, yva, 32)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


class ZeroGradAfterBackward(Net):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss, _, _ = self.shared_step(batch)
        self.manual_backward(loss)
        opt.zero_grad()                     # bug: between backward and step
        opt.step()
        self.log("train_loss", loss)
        return loss


@fault("f2-zero-grad-between-backward-and-step", {"unchanged-parameters", "update-too-small"},
       "manual optimisation with opt.zero_grad() after backward and before step: Adam steps on zero gradients")
def _(run_dir):
    xtr, ytr, xva, yva = sk_cls("wine")
    m = ZeroGradAfterBackward(mlp([13, 64, 64, 3]), adam(1e-3))
    tr, va = loaders(xtr, ytr, xva, yva, 16)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


class ModuloDataset(Dataset):
    """A custom Dataset whose __getitem__ wraps the index by the batch size instead of the length."""

    def __init__(self, x, y, wrap):
        self.x, self.y, self.wrap = x, y, wrap

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i % self.wrap], self.y[i % self.wrap]   # bug: meant i % len(self.x)


@fault("f2-dataset-getitem-index-bug", {"validation-stalled", "train-val-divergence"},
       "custom Dataset returns x[i % 32]: 3000 'rows' but only 32 distinct ones; waveform 1D CNN memorises them")
def _(run_dir):
    xtr, ytr, xva, yva = waveforms()
    m = Net(cnn1d(), adam(3e-3))
    tr = DataLoader(ModuloDataset(xtr, ytr, 32), batch_size=32, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva, yva), batch_size=512)
    return fit(m, tr, va, run_dir, 1200, val_every=150)


# ------------------------------------------------------------------------------------------------------ running
def main(argv=None):
    run_suite("fresh_suite2", __doc__, "fresh2_runs", [200, 201], argv)


if __name__ == "__main__":
    main()
