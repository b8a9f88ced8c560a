"""A fresh held-out suite for the default check pack: realistic Lightning runs, healthy and faulty, written
independently of the calibration corpus (``dyncheck/scenarios/``) and of the pack's thresholds.

Each run is ordinary Lightning code (own LightningModules, own DataLoaders, ``pl.Trainer(max_steps=...)``) with
``DynamicsMonitor(dirpath=...)`` at its default options. Healthy runs include the alarming-but-normal (small-batch
noise, warm restarts, fine-tuning from a pre-trained state, loss floors from label noise or noisy targets, frozen
parts on purpose, clipping, weight decay, dropout, mixed activations). Faults follow published taxonomies of real
deep-learning bugs (Humbatova et al. ICSE 2020, DeepFD, AUTOTRAINER); each names, in ``expected``, the check ids a
correct tool would give as the root cause -- fixed before any result was seen.

    python benchmarks/fresh_suite.py --out DIR --seeds 100 101 [--only NAME ...] [--jobs N] [--no-train] [--list]

Each run x seed trains in a worker process (one torch thread each) into DIR/NAME/seed<S>/ (the monitor's run
directory); a run whose spec (its builder's source and settings) is unchanged and whose store finished is not
trained again. Then every run is evaluated with the default pack and a table plus a summary is printed (and written
to DIR/summary.json). Data: scikit-learn's bundled data sets and synthetic data only; Hugging Face models from tiny
configs (no download).
"""

from __future__ import annotations

import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside it
from _suite import fit, loaders, main as run_suite, registry, val_metrics  # noqa: E402,F401

SUITE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------- data
DATA_SEED = 1234  # data sets are the same for every seed; the seed varies initialisation and batch order


def _std(x_tr, x_va):
    mu, sd = x_tr.mean(0, keepdims=True), x_tr.std(0, keepdims=True) + 1e-8
    return (x_tr - mu) / sd, (x_va - mu) / sd


def _split(x, y, n_val, seed=DATA_SEED):
    rng = np.random.default_rng(seed)
    p = rng.permutation(len(x))
    return x[p[n_val:]], y[p[n_val:]], x[p[:n_val]], y[p[:n_val]]


def digits(image=False, scale=1.0 / 16.0):
    """sklearn digits: 1400 train / 397 val, pixels scaled to [0, 1] (``scale=1`` keeps 0-16)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.data.astype(np.float32) * scale
    xtr, ytr, xva, yva = _split(x, d.target, 397)
    if image:
        xtr, xva = xtr.reshape(-1, 1, 8, 8), xva.reshape(-1, 1, 8, 8)
    return (torch.tensor(xtr), torch.tensor(ytr, dtype=torch.long),
            torch.tensor(xva), torch.tensor(yva, dtype=torch.long))


def tabular(kind, **kw):
    from sklearn import datasets as D
    if kind == "moons":
        x, y = D.make_moons(n_samples=2000, noise=0.25, random_state=DATA_SEED)
    elif kind == "circles":
        x, y = D.make_circles(n_samples=2000, noise=0.1, factor=0.5, random_state=DATA_SEED)
    elif kind == "classification":
        x, y = D.make_classification(n_samples=kw.get("n", 4000), n_features=20, n_informative=10,
                                     n_redundant=4, n_classes=kw.get("classes", 3), flip_y=kw.get("flip_y", 0.02),
                                     class_sep=kw.get("class_sep", 1.0), random_state=DATA_SEED)
    elif kind == "breast_cancer":
        x, y = D.load_breast_cancer(return_X_y=True)
    elif kind == "wine":
        x, y = D.load_wine(return_X_y=True)
    elif kind == "iris":
        x, y = D.load_iris(return_X_y=True)
    else:
        raise ValueError(kind)
    n_val = max(int(0.2 * len(x)), 30)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y, n_val)
    xtr, xva = _std(xtr, xva)
    return (torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr, dtype=torch.long),
            torch.tensor(xva, dtype=torch.float32), torch.tensor(yva, dtype=torch.long))


def diabetes():
    from sklearn.datasets import load_diabetes
    x, y = load_diabetes(return_X_y=True)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y.astype(np.float32), 90)
    xtr, xva = _std(xtr, xva)
    m, s = ytr.mean(), ytr.std()
    return (torch.tensor(xtr), torch.tensor((ytr - m) / s).unsqueeze(1),
            torch.tensor(xva), torch.tensor((yva - m) / s).unsqueeze(1))


def noisy_linear(n=3000, d=10, noise=1.0):
    rng = np.random.default_rng(DATA_SEED)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, 1)).astype(np.float32)
    y = x @ w + noise * rng.normal(size=(n, 1)).astype(np.float32)
    xtr, ytr, xva, yva = _split(x, y, 500)
    return torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xva), torch.tensor(yva)


def markov_lm(vocab=32, seq_len=32, n_train=2000, n_val=256):
    """Token sequences from a sparse random Markov chain (3 likely successors per token): an LM can reach its
    entropy (~0.9 nats/token), not zero."""
    rng = np.random.default_rng(DATA_SEED)
    trans = np.full((vocab, vocab), 0.01 / vocab)
    for t in range(vocab):
        nxt = rng.choice(vocab, size=3, replace=False)
        trans[t, nxt] += [0.6, 0.29, 0.1]
    trans /= trans.sum(1, keepdims=True)
    cum = trans.cumsum(1)
    n = n_train + n_val
    seq = np.zeros((n, seq_len), dtype=np.int64)
    seq[:, 0] = rng.integers(0, vocab, size=n)
    for i in range(1, seq_len):
        u = rng.random(n)[:, None]
        seq[:, i] = (u > cum[seq[:, i - 1]]).sum(1).clip(max=vocab - 1)
    s = torch.tensor(seq)
    return s[:n_train], s[n_train:]


def group_count_seqs(n=4000, T=20, vocab=16, groups=4, task="majority", seed=DATA_SEED):
    """Token sequences; label = the most frequent token group (token // 4) -- or, task="binary", whether group 0
    occurs more often than group 1. Needs counting over the whole sequence."""
    rng = np.random.default_rng(seed)
    per = vocab // groups
    w = rng.dirichlet(np.ones(groups) * 0.7, size=n)
    g = np.stack([rng.choice(groups, size=T, p=wi) for wi in w])
    tok = g * per + rng.integers(0, per, size=(n, T))
    counts = np.stack([(g == k).sum(1) for k in range(groups)], 1)
    if task == "majority":
        y = counts.argmax(1)
    else:
        y = (counts[:, 0] > counts[:, 1]).astype(np.int64)
    return torch.tensor(tok), torch.tensor(y, dtype=torch.long)


def noisy_sines(n=3000, window=24, noise=0.1):
    rng = np.random.default_rng(DATA_SEED)
    om = rng.uniform(0.15, 0.6, size=(n, 1))
    ph = rng.uniform(0, 2 * np.pi, size=(n, 1))
    t = np.arange(window + 1)[None]
    s = np.sin(om * t + ph) + noise * rng.normal(size=(n, window + 1))
    x = torch.tensor(s[:, :window, None], dtype=torch.float32)
    y = torch.tensor(s[:, window:], dtype=torch.float32)
    return x[:2500], y[:2500], x[2500:], y[2500:]


def adding_problem(n=3000, T=60):
    rng = np.random.default_rng(DATA_SEED)
    v = rng.uniform(0, 1, size=(n, T))
    m = np.zeros((n, T))
    for i in range(n):
        a, b = rng.choice(T, size=2, replace=False)
        m[i, a] = m[i, b] = 1
    x = torch.tensor(np.stack([v, m], -1), dtype=torch.float32)
    y = torch.tensor((v * m).sum(1, keepdims=True), dtype=torch.float32)
    return x[:2600], y[:2600], x[2600:], y[2600:]




# ---------------------------------------------------------------------------------------- optimizers, schedules
def make_optimizer(params, name="adam", lr=1e-3, wd=0.0, momentum=0.0, nesterov=False, **_):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=momentum)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise ValueError(name)


def make_scheduler(opt, sched, total_steps, **kw):
    """Lightning lr_scheduler config, or None."""
    if sched is None:
        return None
    if sched == "warmup_cosine":
        warm = kw.get("warmup", 100)

        def f(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, f), "interval": "step"}
    if sched == "warmup_linear":
        warm = kw.get("warmup", 100)
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total_steps - s) / (total_steps - warm))),
            "interval": "step"}
    if sched == "onecycle":
        return {"scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=kw["max_lr"], total_steps=total_steps + 5),
                "interval": "step"}
    if sched == "step_epoch":   # StepLR meant per epoch (Lightning's default interval)
        return {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=kw["step_size"], gamma=kw["gamma"]),
                "interval": "epoch"}
    if sched == "step_batch":   # the same StepLR, stepped every batch
        return {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=kw["step_size"], gamma=kw["gamma"]),
                "interval": "step"}
    if sched == "multistep_epoch":
        return {"scheduler": torch.optim.lr_scheduler.MultiStepLR(opt, milestones=kw["milestones"], gamma=0.2),
                "interval": "epoch"}
    if sched == "warm_restarts":
        return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=kw["T_0"], T_mult=1),
                "interval": "step"}
    if sched == "plateau":
        return {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3),
                "monitor": "val_loss", "interval": "epoch"}
    raise ValueError(sched)


# ---------------------------------------------------------------------------------------------------- modules
class Base(pl.LightningModule):
    """Optimizer and scheduler from ``self.hparams.optim`` (a dict: name, lr, wd, momentum, sched, ...)."""

    def optim_params(self):
        return self.parameters()

    def configure_optimizers(self):
        o = dict(self.hparams.optim)
        sched_name = o.pop("sched", None)
        opt = make_optimizer(self.optim_params(), **o)
        sched = make_scheduler(opt, sched_name, self.trainer.max_steps, **o)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}

    def shared_step(self, batch):  # -> (loss, n_correct or None, n)
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.shared_step(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, correct, n = self.shared_step(batch)
        self.log("val_loss", loss)
        if correct is not None:
            self.log("val_acc", correct / n)


class Classifier(Base):
    def __init__(self, net: nn.Module, optim: dict, label_smoothing: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net

    def forward(self, x):
        return self.net(x)

    def shared_step(self, batch):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        return loss, (logits.argmax(-1) == y).sum().float(), len(y)


class Regressor(Base):
    def __init__(self, net: nn.Module, optim: dict):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net

    def forward(self, x):
        return self.net(x)

    def shared_step(self, batch):
        x, y = batch
        return F.mse_loss(self(x), y), None, len(y)


class ClassIndexRegressor(Regressor):
    """Bug: classification trained as regression of the class index with MSE (one output)."""

    def shared_step(self, batch):
        x, y = batch
        out = self(x).squeeze(-1)
        loss = F.mse_loss(out, y.float())
        return loss, (out.round().clamp(0, 9).long() == y).sum().float(), len(y)


class CausalLM(Base):
    def __init__(self, net: nn.Module, optim: dict):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net

    def forward(self, ids):
        return self.net(ids)

    def shared_step(self, batch):
        ids = batch[0]
        logits = self(ids[:, :-1])
        tgt = ids[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1))
        return loss, (logits.argmax(-1) == tgt).sum().float(), tgt.numel()


class GPT2LM(Base):
    def __init__(self, optim: dict, vocab: int = 32, seq_len: int = 32):
        super().__init__()
        self.save_hyperparameters()
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=seq_len,
                         resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
        self.model = GPT2LMHeadModel(cfg)

    def forward(self, ids):
        return self.model(input_ids=ids).logits

    def shared_step(self, batch):
        ids = batch[0]
        out = self.model(input_ids=ids, labels=ids)
        pred = out.logits[:, :-1].argmax(-1)
        return out.loss, (pred == ids[:, 1:]).sum().float(), ids[:, 1:].numel()


class BertClassifier(Base):
    def __init__(self, optim: dict, num_labels: int = 4, vocab: int = 17):
        super().__init__()
        self.save_hyperparameters()
        from transformers import BertConfig, BertForSequenceClassification
        cfg = BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=32, num_labels=num_labels)
        self.model = BertForSequenceClassification(cfg)

    def forward(self, ids):
        return self.model(input_ids=ids).logits

    def shared_step(self, batch):
        ids, y = batch
        logits = self(ids)
        return F.cross_entropy(logits, y), (logits.argmax(-1) == y).sum().float(), len(y)


class ForgotZeroGrad(Classifier):
    """Manual optimization that never calls ``optimizer.zero_grad()``: gradients accumulate over the run."""

    def __init__(self, net, optim):
        super().__init__(net, optim)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss, _, _ = self.shared_step(batch)
        self.manual_backward(loss)
        opt.step()          # opt.zero_grad() forgotten
        self.log("train_loss", loss)


class HeadOnlyOptimizer(Classifier):
    """Bug: the optimizer is built over the head only (``self.net[-1].parameters()``); the body is trainable but never
    updated."""

    def optim_params(self):
        return self.net[-1].parameters()


class TwoGroupLR(Classifier):
    """Param groups with their own lrs: body at ``body_lr``, head at ``lr``."""

    def __init__(self, net, optim, body_lr):
        super().__init__(net, optim)
        self.save_hyperparameters(ignore=["net"])

    def optim_params(self):
        head = list(self.net[-1].parameters())
        ids = {id(p) for p in head}
        body = [p for p in self.net.parameters() if id(p) not in ids]
        return [{"params": body, "lr": self.hparams.body_lr}, {"params": head}]


# ---------------------------------------------------------------------------------------------------- networks
def mlp(sizes, act=nn.ReLU, dropout=0.0, bn=False, final=None, acts=None):
    layers = []
    for i in range(len(sizes) - 2):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if bn:
            layers.append(nn.BatchNorm1d(sizes[i + 1]))
        a = acts[i % len(acts)] if acts else act
        layers.append(a())
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


def digits_cnn(final=None, dropout=0.2):
    layers = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
              nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * 16, 64), nn.ReLU(),
              nn.Linear(64, 10)]
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(x + self.bn2(self.conv2(h)))


def small_resnet(c=16):
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                         ResBlock(c), ResBlock(c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


class RNNHead(nn.Module):
    def __init__(self, cell="lstm", vocab=None, in_dim=1, emb=16, hidden=64, out=4, nonlinearity="tanh"):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb) if vocab else None
        d = emb if vocab else in_dim
        if cell == "lstm":
            self.rnn = nn.LSTM(d, hidden, batch_first=True)
        elif cell == "gru":
            self.rnn = nn.GRU(d, hidden, batch_first=True)
        else:
            self.rnn = nn.RNN(d, hidden, batch_first=True, nonlinearity=nonlinearity)
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        if self.emb is not None:
            x = self.emb(x)
        h, _ = self.rnn(x)
        return self.head(h[:, -1])


class TransformerClassifier(nn.Module):
    def __init__(self, vocab=16, T=20, d=64, n_classes=4, layers=2):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(1, T, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 128, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, n_classes)

    def forward(self, x):
        h = self.enc(self.emb(x) + self.pos[:, : x.size(1)])
        return self.head(self.norm(h.mean(1)))


class TransformerDecoderLM(nn.Module):
    """Decoder-only LM from nn.TransformerEncoder with a causal mask."""

    def __init__(self, vocab=32, T=32, d=64, layers=2):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(T, d)
        layer = nn.TransformerEncoderLayer(d, 4, 128, dropout=0.1, batch_first=True, norm_first=True)
        self.dec = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.out = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, ids):
        T = ids.size(1)
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        h = self.emb(ids) + self.pos(torch.arange(T))
        return self.out(self.norm(self.dec(h, mask=mask, is_causal=True)))


class EncoderHead(nn.Module):
    """encoder -> head; ``detach_features`` is the bug: features detached (copied from feature-extraction code)."""

    def __init__(self, encoder, head, detach_features=False):
        super().__init__()
        self.encoder, self.head, self.detach_features = encoder, head, detach_features

    def forward(self, x):
        h = self.encoder(x)
        if self.detach_features:
            h = h.detach()
        return self.head(h)


# ----------------------------------------------------------------------------------------- fitting, evaluation
def pretrain(module, loader, steps, lr=1e-3):
    """Plain-loop pre-training before the monitored run (no monitor attached)."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    it = iter(loader)
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        loss, _, _ = module.shared_step(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module


# ------------------------------------------------------------------------------------------------------ registry
RUNS, healthy, fault = registry(SUITE_VERSION)


# ================================================================================================ HEALTHY RUNS
@healthy("h-mlp-moons-sgdm-warmcos", "MLP on moons, SGD momentum, warmup + cosine", ok_acc=0.9)
def _(run_dir):
    tr, va = loaders(*tabular("moons"), bs=32)
    m = Classifier(mlp([2, 64, 64, 2]), dict(name="sgd", lr=0.1, momentum=0.9, sched="warmup_cosine", warmup=100))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@healthy("h-cnn-digits-adam-onecycle", "CNN on digits images, Adam + OneCycle", ok_acc=0.95)
def _(run_dir):
    tr, va = loaders(*digits(image=True), bs=64)
    m = Classifier(digits_cnn(), dict(name="adam", lr=1e-3, sched="onecycle", max_lr=3e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@healthy("h-resnet-bn-digits-nesterov-step", "small ResNet + BatchNorm, Nesterov, wd 5e-4, StepLR per epoch",
         ok_acc=0.95)
def _(run_dir):
    tr, va = loaders(*digits(image=True), bs=128)
    m = Classifier(small_resnet(), dict(name="sgd", lr=0.1, momentum=0.9, nesterov=True, wd=5e-4,
                                        sched="step_epoch", step_size=40, gamma=0.3))
    return fit(m, tr, va, run_dir, 1200, val_every=100)


@healthy("h-mlp-digits-bs8-const", "batch size 8, constant SGD lr: small-batch noise", ok_acc=0.93)
def _(run_dir):
    tr, va = loaders(*digits(), bs=8)
    m = Classifier(mlp([64, 128, 10]), dict(name="sgd", lr=0.02))
    return fit(m, tr, va, run_dir, 2500, val_every=250)


@healthy("h-mlp-cls-adamw-warm-restarts", "AdamW wd 1e-2, cosine warm restarts every 400 steps", ok_acc=0.8)
def _(run_dir):
    tr, va = loaders(*tabular("classification", classes=3), bs=64)
    m = Classifier(mlp([20, 128, 64, 3], dropout=0.1),
                   dict(name="adamw", lr=3e-3, wd=1e-2, sched="warm_restarts", T_0=400))
    return fit(m, tr, va, run_dir, 2000, val_every=100)


@healthy("h-lstm-seqcls-adam-clip", "LSTM counting task, Adam, grad clipping 1.0, warmup+cosine", ok_acc=0.85)
def _(run_dir):
    x, y = group_count_seqs()
    tr, va = loaders(x[:3500], y[:3500], x[3500:], y[3500:], bs=64)
    m = Classifier(RNNHead("lstm", vocab=16, hidden=64, out=4),
                   dict(name="adam", lr=3e-3, sched="warmup_cosine", warmup=100))
    return fit(m, tr, va, run_dir, 1500, val_every=100, gradient_clip_val=1.0)


@healthy("h-gru-sines-rmsprop-plateau", "GRU next-value of noisy sines (noise floor), RMSprop + ReduceLROnPlateau")
def _(run_dir):
    tr, va = loaders(*noisy_sines(), bs=50)
    m = Regressor(RNNHead("gru", in_dim=1, hidden=32, out=1), dict(name="rmsprop", lr=1e-3, sched="plateau"))
    return fit(m, tr, va, run_dir, 1500, check_val_every_n_epoch=1)


@healthy("h-transformer-seqcls-adamw", "nn.TransformerEncoder classifier, AdamW, warmup+cosine, dropout 0.1",
         ok_acc=0.85)
def _(run_dir):
    x, y = group_count_seqs()
    tr, va = loaders(x[:3500], y[:3500], x[3500:], y[3500:], bs=32)
    m = Classifier(TransformerClassifier(), dict(name="adamw", lr=1e-3, wd=0.01, sched="warmup_cosine", warmup=150))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@healthy("h-gpt2-tiny-markov-lm", "HF GPT-2 (2 layers, 64 wide) LM on Markov-chain text (entropy floor), clip 1.0")
def _(run_dir):
    s_tr, s_va = markov_lm()
    tr = DataLoader(TensorDataset(s_tr), batch_size=32, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(s_va), batch_size=256)
    m = GPT2LM(dict(name="adamw", lr=1e-3, wd=0.01, sched="warmup_cosine", warmup=100))
    return fit(m, tr, va, run_dir, 1200, val_every=100, gradient_clip_val=1.0)


@healthy("h-decoder-lm-grad-accum", "causal nn.TransformerEncoder LM, Adam, gradient accumulation 2")
def _(run_dir):
    s_tr, s_va = markov_lm()
    tr = DataLoader(TensorDataset(s_tr), batch_size=16, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(s_va), batch_size=256)
    m = CausalLM(TransformerDecoderLM(), dict(name="adam", lr=2e-3, sched="warmup_cosine", warmup=100))
    return fit(m, tr, va, run_dir, 1000, val_every=100, accumulate_grad_batches=2)


@healthy("h-bert-tiny-finetune", "HF BERT tiny: pre-trained on one counting task (plain loop), fine-tuned on "
                                 "another with a new head, AdamW 2e-4 warmup-linear", ok_acc=0.8)
def _(run_dir):
    x, y = group_count_seqs()
    cls = torch.full((len(x), 1), 16)
    ids = torch.cat([cls, x], 1)
    pre = BertClassifier(dict(name="adamw", lr=1e-3), num_labels=4)
    pretrain(pre, DataLoader(TensorDataset(ids[:3500], y[:3500]), batch_size=32, shuffle=True), 800, lr=1e-3)
    xb, yb = group_count_seqs(task="binary", seed=DATA_SEED + 1)
    idsb = torch.cat([torch.full((len(xb), 1), 16), xb], 1)
    tr, va = loaders(idsb[:3500], yb[:3500], idsb[3500:], yb[3500:], bs=32)
    m = BertClassifier(dict(name="adamw", lr=2e-4, wd=0.01, sched="warmup_linear", warmup=100), num_labels=2)
    m.model.bert.load_state_dict(pre.model.bert.state_dict())
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h-cnn-digits-finetune-lowlr", "CNN pre-trained on digits (plain loop), fine-tuned at SGD 1e-3: starts "
                                        "at its floor, tiny updates by design", ok_acc=0.95)
def _(run_dir):
    tr, va = loaders(*digits(image=True), bs=32)
    m = Classifier(digits_cnn(), dict(name="sgd", lr=1e-3, momentum=0.9))
    pretrain(m, tr, 1000, lr=2e-3)
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h-frozen-backbone-linear-probe", "backbone pre-trained on digits 0-4 and frozen on purpose, new head "
                                           "trained on all 10 classes", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    lo = ytr < 5
    body = mlp([64, 128, 64, 5])
    pre = Classifier(body, dict(name="adam", lr=1e-3))
    pretrain(pre, DataLoader(TensorDataset(xtr[lo], ytr[lo]), batch_size=32, shuffle=True), 800)
    backbone = nn.Sequential(*list(body.children())[:-1])
    for p in backbone.parameters():
        p.requires_grad = False
    net = nn.Sequential(backbone, nn.Linear(64, 10))
    tr, va = loaders(xtr, ytr, xva, yva, bs=64)
    m = Classifier(net, dict(name="adam", lr=3e-3))
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@healthy("h-mlp-label-noise-floor", "40% flipped labels: the loss floors far above 0", ok_acc=0.5)
def _(run_dir):
    tr, va = loaders(*tabular("classification", classes=3, flip_y=0.4), bs=64)
    m = Classifier(mlp([20, 64, 3]), dict(name="adam", lr=1e-3, wd=1e-4))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@healthy("h-diabetes-fullbatch-gd", "full-batch GD on diabetes regression (noisy target, floor ~0.55)", ok_ratio=0.7)
def _(run_dir):
    # v2: hidden 16 / wd 1e-3 / lr 0.05 overfit (val 0.56 -> 0.72 from step 300 on): not a healthy run
    xtr, ytr, xva, yva = diabetes()
    tr, va = loaders(xtr, ytr, xva, yva, bs=len(xtr))
    m = Regressor(mlp([10, 8, 1], act=nn.Tanh), dict(name="sgd", lr=0.02, wd=3e-2))
    return fit(m, tr, va, run_dir, 2000, val_every=100)


@healthy("h-deep-mixed-act-bn", "6-layer MLP, GELU/Tanh/SiLU/LeakyReLU/ELU + BatchNorm + dropout, AdamW wd 0.05",
         ok_acc=0.8)
def _(run_dir):
    tr, va = loaders(*tabular("classification", classes=4, n=5000), bs=128)
    net = mlp([20, 128, 128, 128, 128, 64, 4], bn=True, dropout=0.1,
              acts=[nn.GELU, nn.Tanh, nn.SiLU, nn.LeakyReLU, nn.ELU])
    m = Classifier(net, dict(name="adamw", lr=2e-3, wd=0.05, sched="warmup_cosine", warmup=100))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@healthy("h-mlp-circles-adagrad-bs16", "Adagrad, batch 16, circles", ok_acc=0.9)
def _(run_dir):
    tr, va = loaders(*tabular("circles"), bs=16)
    m = Classifier(mlp([2, 64, 64, 2], act=nn.Tanh), dict(name="adagrad", lr=0.05))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@healthy("h-cnn-digits-dropout-noise-aug-multistep", "dropout 0.5 + input-noise augmentation, SGD momentum, "
                                                     "MultiStepLR", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = digits(image=True)

    class NoisyDigits(Dataset):
        def __len__(self):
            return len(xtr)

        def __getitem__(self, i):
            return xtr[i] + 0.15 * torch.randn_like(xtr[i]), ytr[i]
    tr = DataLoader(NoisyDigits(), batch_size=64, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva, yva), batch_size=512)
    m = Classifier(digits_cnn(dropout=0.5), dict(name="sgd", lr=0.05, momentum=0.9, sched="multistep_epoch",
                                                 milestones=[50, 80]))
    return fit(m, tr, va, run_dir, 2000, val_every=200)


@healthy("h-linreg-noise-floor-sgd", "linear regression with unit noise: reaches its floor in ~200 steps",
         ok_ratio=0.3)
def _(run_dir):
    tr, va = loaders(*noisy_linear(), bs=16)
    m = Regressor(nn.Sequential(nn.Linear(10, 1)), dict(name="sgd", lr=0.01))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@healthy("h-breast-cancer-adam-dropout-wd", "breast cancer, small MLP, dropout 0.3, Adam wd 1e-3, bs 32",
         ok_acc=0.93)
def _(run_dir):
    tr, va = loaders(*tabular("breast_cancer"), bs=32)
    m = Classifier(mlp([30, 32, 2], dropout=0.3), dict(name="adam", lr=5e-4, wd=1e-3))
    return fit(m, tr, va, run_dir, 1200, val_every=50)


# ================================================================================================== FAULT RUNS
@fault("f-lr-too-high-sgd", {"non-finite", "loss-divergence", "exploding-gradients"},
       "SGD momentum lr 3.0 on a digits MLP")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = Classifier(mlp([64, 128, 10]), dict(name="sgd", lr=3.0, momentum=0.9))
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@fault("f-lr-too-high-adam-cnn", {"loss-divergence", "update-too-large", "exploding-gradients", "non-finite"},
       "Adam lr 0.3 on a CNN")
def _(run_dir):
    tr, va = loaders(*digits(image=True), bs=64)
    m = Classifier(digits_cnn(), dict(name="adam", lr=0.3))
    return fit(m, tr, va, run_dir, 1000, val_every=100)


@fault("f-lr-too-small", {"no-progress", "update-too-small"}, "SGD lr 1e-6")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = Classifier(mlp([64, 128, 10]), dict(name="sgd", lr=1e-6, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-forgot-zero-grad", {"exploding-gradients", "loss-divergence", "update-too-large", "non-finite"},
       "manual optimization without optimizer.zero_grad(): gradients accumulate")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = ForgotZeroGrad(mlp([64, 128, 10]), dict(name="sgd", lr=0.01, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-steplr-stepped-per-batch", {"lr-collapse", "premature-plateau", "no-progress", "update-too-small"},
       "StepLR(step_size=10 epochs) stepped every batch: lr ~0 after ~150 steps")
def _(run_dir):
    tr, va = loaders(*digits(), bs=32)
    m = Classifier(mlp([64, 128, 10]), dict(name="sgd", lr=0.02, momentum=0.9, sched="step_batch",
                                            step_size=10, gamma=0.5))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-mse-on-class-indices", {"premature-plateau", "no-progress"},
       "classification as MSE regression on the class index (one output)")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = ClassIndexRegressor(mlp([64, 128, 1]), dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-softmax-then-ce", {"softmax-before-loss"}, "nn.Softmax at the end of the net, then cross_entropy")
def _(run_dir):
    tr, va = loaders(*digits(image=True), bs=64)
    m = Classifier(digits_cnn(final=nn.Softmax(dim=1)), dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-sigmoid-output-ce", {"saturated-activations", "premature-plateau", "no-progress"},
       "nn.Sigmoid on the logits, then cross_entropy")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = Classifier(mlp([64, 128, 10], final=nn.Sigmoid()), dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-relu-on-logits", {"clamped-output"}, "nn.ReLU after the last Linear, then cross_entropy")
def _(run_dir):
    tr, va = loaders(*tabular("classification", classes=4), bs=64)
    m = Classifier(mlp([20, 64, 64, 4], final=nn.ReLU()), dict(name="sgd", lr=0.05, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-zero-init-relu-mlp", {"symmetric-units", "unchanged-parameters", "dead-units", "vanishing-gradients"},
       "every weight and bias initialised to 0 (ReLU MLP)")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    net = mlp([64, 128, 64, 10])
    for p in net.parameters():
        nn.init.zeros_(p)
    m = Classifier(net, dict(name="sgd", lr=0.05, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-constant-init-tanh", {"symmetric-units"}, "every weight 0.05 (tanh MLP): all units copies of each other")
def _(run_dir):
    tr, va = loaders(*tabular("classification", classes=3), bs=64)
    net = mlp([20, 64, 64, 3], act=nn.Tanh)
    for mod in net:
        if isinstance(mod, nn.Linear):
            nn.init.constant_(mod.weight, 0.05)
            nn.init.zeros_(mod.bias)
    m = Classifier(net, dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-init-too-large-tanh", {"saturated-activations", "vanishing-gradients"},
       "N(0, 2.5) weights in a 6-layer tanh MLP: saturated from the start")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    net = mlp([64] + [128] * 5 + [10], act=nn.Tanh)
    for mod in net:
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=2.5)
    m = Classifier(net, dict(name="sgd", lr=0.01, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-init-too-small-deep-relu", {"vanishing-gradients"},
       "N(0, 0.01) weights in a 10-layer ReLU MLP, plain SGD")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    net = mlp([64] + [64] * 9 + [10])
    for mod in net:
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=0.01)
            nn.init.zeros_(mod.bias)
    m = Classifier(net, dict(name="sgd", lr=0.05, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-raw-pixels-unnormalized", {"exploding-gradients", "loss-divergence", "non-finite", "update-too-large",
                                     "loss-spike"},
       "pixels fed raw at 0-256 (the /255 forgotten), SGD momentum lr 0.05")
def _(run_dir):
    tr, va = loaders(*digits(scale=16.0), bs=64)
    m = Classifier(mlp([64, 128, 64, 10]), dict(name="sgd", lr=0.05, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-labels-shuffled", {"no-progress", "train-val-divergence", "validation-stalled"},
       "training labels permuted against their inputs (data/label mismatch)")
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    ytr = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(7))]
    tr, va = loaders(xtr, ytr, xva, yva, bs=64)
    m = Classifier(mlp([64, 128, 10]), dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-overfit-tiny-trainset", {"train-val-divergence", "validation-stalled"},
       "48 training examples, a 256-wide MLP, 2000 Adam steps")
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    tr, va = loaders(xtr[:48], ytr[:48], xva, yva, bs=16)
    m = Classifier(mlp([64, 256, 256, 10]), dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 2000, val_every=100)


@fault("f-weight-decay-excessive", {"over-regularization"}, "AdamW weight_decay=10 (5e-4 meant)")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = Classifier(mlp([64, 128, 10]), dict(name="adamw", lr=1e-3, wd=10.0))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-dropout-excessive", {"over-regularization"}, "Dropout(p=0.95) after every hidden layer")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = Classifier(mlp([64, 256, 256, 10], dropout=0.95), dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-params-missing-from-optimizer", {"unchanged-parameters"},
       "optimizer built over the head's parameters only; the trainable body never moves")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = HeadOnlyOptimizer(mlp([64, 128, 64, 10]), dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-requires-grad-false-by-mistake", {"unchanged-parameters", "layers-not-learning"},
       "a freeze loop meant for a pre-trained encoder left on a randomly initialised one")
def _(run_dir):
    tr, va = loaders(*tabular("classification", classes=4), bs=64)
    net = mlp([20, 32, 32, 4])
    for p in list(net.parameters())[:-2]:
        p.requires_grad = False
    m = Classifier(net, dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-detach-mid-network", {"unchanged-parameters", "vanishing-gradients"},
       "encoder output .detach()-ed inside forward: the encoder gets no gradient")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    net = EncoderHead(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU()),
                      nn.Linear(64, 10), detach_features=True)
    m = Classifier(net, dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-deep-sigmoid-no-norm", {"vanishing-gradients", "saturated-activations"},
       "10 sigmoid layers, no normalisation, plain SGD")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = Classifier(mlp([64] + [64] * 10 + [10], act=nn.Sigmoid), dict(name="sgd", lr=0.1))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-exploding-rnn-no-clip", {"exploding-gradients", "non-finite", "loss-divergence", "loss-spike"},
       "IRNN (ReLU RNN, identity recurrent init) on the adding problem, T=60, SGD without the clipping it needs")
def _(run_dir):
    tr, va = loaders(*adding_problem(), bs=32)
    net = RNNHead("rnn", in_dim=2, hidden=64, out=1, nonlinearity="relu")
    with torch.no_grad():
        net.rnn.weight_hh_l0.copy_(torch.eye(64) * 1.05)
        net.rnn.bias_hh_l0.zero_()
    m = Regressor(net, dict(name="sgd", lr=0.01, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-clip-norm-too-small", {"update-too-small", "no-progress"}, "gradient_clip_val=1e-4 (norm clipping)")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = Classifier(mlp([64, 128, 10]), dict(name="sgd", lr=0.05))
    return fit(m, tr, va, run_dir, 1500, val_every=100, gradient_clip_val=1e-4)


@fault("f-corrupted-batch-midrun", {"loss-spike", "exploding-gradients", "loss-divergence", "non-finite"},
       "one batch at ~step 800 arrives with values x1000 (a corrupt shard)")
def _(run_dir):
    xtr, ytr, xva, yva = digits()

    class GlitchyDigits(Dataset):
        served = 0

        def __len__(self):
            return len(xtr)

        def __getitem__(self, i):
            GlitchyDigits.served += 1
            x = xtr[i]
            if 800 * 64 <= GlitchyDigits.served < 801 * 64:
                x = x * 1000.0
            return x, ytr[i]
    tr = DataLoader(GlitchyDigits(), batch_size=64, shuffle=True, drop_last=True)
    va = DataLoader(TensorDataset(xva, yva), batch_size=512)
    m = Classifier(mlp([64, 128, 10]), dict(name="sgd", lr=0.05, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-sorted-by-class-unshuffled", {"oscillating-loss"}, "training data sorted by label, shuffle=False")
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    o = torch.argsort(ytr, stable=True)
    tr, va = loaders(xtr[o], ytr[o], xva, yva, bs=32, shuffle=False)
    m = Classifier(mlp([64, 128, 10]), dict(name="sgd", lr=0.05, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-val-labels-misaligned", {"validation-stalled", "train-val-divergence"},
       "validation labels off by one row against their inputs")
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    tr, va = loaders(xtr, ytr, xva, torch.roll(yva, 1), bs=64)
    m = Classifier(mlp([64, 128, 10]), dict(name="adam", lr=1e-3))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-body-lr-typo", {"layers-not-learning"}, "param groups: body lr 1e-7 (1e-3 * 1e-4 typo), head lr 1e-3")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    m = TwoGroupLR(mlp([64, 128, 64, 10]), dict(name="adam", lr=1e-3), body_lr=1e-7)
    return fit(m, tr, va, run_dir, 1500, val_every=100)


@fault("f-dead-relu-negative-bias", {"dead-units"}, "hidden biases initialised to -3 (most ReLUs dead)")
def _(run_dir):
    tr, va = loaders(*digits(), bs=64)
    net = mlp([64, 128, 128, 10])
    for mod in list(net)[:-1]:
        if isinstance(mod, nn.Linear):
            nn.init.constant_(mod.bias, -3.0)
    m = Classifier(net, dict(name="sgd", lr=0.01, momentum=0.9))
    return fit(m, tr, va, run_dir, 1500, val_every=100)


# ------------------------------------------------------------------------------------------------------ running
def main(argv=None):
    run_suite("fresh_suite", __doc__, "fresh_runs", [100, 101], argv)


if __name__ == "__main__":
    main()
