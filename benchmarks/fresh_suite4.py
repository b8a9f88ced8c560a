"""A fourth, independent held-out suite for the default check pack: realistic Lightning runs, healthy and faulty,
written without reference to the calibration corpus (``dyncheck/scenarios/``), the pack's rules and detectors, or
the runs of the first three held-out suites (only their names were read, so as not to repeat a scenario; the check
ids and what each flags come from the README, as a user would read them; the harness -- CLI, worker pool,
evaluation and summary -- is the shared ``benchmarks/_suite.py``).

Each run is ordinary Lightning code (own LightningModules, own DataLoaders, ``pl.Trainer(max_steps=...)``) with
``DynamicsMonitor(dirpath=...)`` at its default options. Healthy runs are what people train, many of them alarming to
look at but normal: tiny Hugging Face Llama (copy task, gradient clipping at 1.0), ALBERT (gradient accumulation),
RoBERTa (token tagging) and Mistral (bf16-mixed autocast) models, stochastic weight averaging, a CyclicLR exp_range
with Adam, ReduceLROnPlateau on the validation loss, a LARS optimizer with a long warm-up at the SimCLR learning rate,
full-batch gradient descent at a large rate, 30% pair-flip label noise, a focal loss, an InfoNCE contrastive
encoder, a VAE with KL annealing (its loss rises first), a weight-tied denoising autoencoder, multilabel BCE, an
ordinal (CORAL) head, a tiny UNet on synthetic masks, a ConvNeXt-style net with depthwise convs, LayerNorm and layer
scale 1e-6, a GroupNorm CNN at batch size 4, a linear probe whose optimizer holds only the head over a pre-trained
GRU, a mildly overfitting 80-sample MLP, manual optimization with two optimizers, SAM (two passes a step), a
heteroscedastic Gaussian NLL that goes negative, Poisson regression at its noise floor, full-batch L-BFGS, and
large-batch (2048) Adam. Faults follow the taxonomies of real training bugs (Humbatova et al. ICSE 2020, DeepFD ICSE
2022, AUTOTRAINER's symptoms) and differ in detail from suites 1-3; ``expected`` names the check ids a correct tool
would give as the root cause, fixed before any result was seen.

    python benchmarks/fresh_suite4.py --out DIR --seeds 400 401 [--only NAME ...] [--jobs N] [--no-train] [--list]

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
from torch.utils.data import DataLoader, IterableDataset, TensorDataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside it
from _suite import LM, Net, fit, loaders, main as run_suite, registry, val_metrics  # noqa: E402,F401
from _suite import adam, sgd, tensors as _t  # noqa: E402,F401
from _suite import adamw as shared_adamw, mlp as shared_mlp  # noqa: E402

SUITE_VERSION = 1

RUNS, healthy, fault = registry(SUITE_VERSION)


# ----------------------------------------------------------------------------------------------------------- data
DATA_SEED = 4040  # data sets are the same for every seed; the seed varies initialisation and batch order


def _split(x, y, n_val, seed=DATA_SEED):
    idx = np.random.RandomState(seed).permutation(len(x))
    va, tr = idx[:n_val], idx[n_val:]
    return x[tr], y[tr], x[va], y[va]


def _standardise(xtr, xva, floor=1e-3):
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd < floor, 1.0, sd)
    return (xtr - mu) / sd, (xva - mu) / sd


@functools.lru_cache(None)
def _digits_raw():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    return _split(x.astype(np.float32), y, 450)


def digits(images=False, raw=False):
    """sklearn digits, 1347 train / 450 val; per-pixel standardised with the training statistics (unless raw)."""
    xtr, ytr, xva, yva = _digits_raw()
    if not raw:
        xtr, xva = _standardise(xtr, xva, floor=1.0)
    xtr, ytr = _t(xtr, ytr)
    xva, yva = _t(xva, yva)
    if images:
        xtr, xva = xtr.view(-1, 1, 8, 8), xva.view(-1, 1, 8, 8)
    return xtr, ytr, xva, yva


@functools.lru_cache(None)
def _classif(n=6000, d=20, k=5, informative=10, sep=1.0, weights=None, flip=0.0, seed=DATA_SEED):
    from sklearn.datasets import make_classification
    x, y = make_classification(n_samples=n, n_features=d, n_informative=informative, n_redundant=2,
                               n_classes=k, n_clusters_per_class=2, class_sep=sep, flip_y=flip,
                               weights=list(weights) if weights else None, random_state=seed)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y, n // 5)
    xtr, xva = _standardise(xtr, xva)
    return xtr, ytr, xva, yva


def classif(**kw):
    xtr, ytr, xva, yva = _classif(**kw)
    return (*_t(xtr, ytr), *_t(xva, yva))


@functools.lru_cache(None)
def _nonlinear_regression(n=4000, d=8, noise=0.1, seed=DATA_SEED):
    """y = sin(x0) x1 + x2^2 / 2 + tanh(x3 + x4) + noise, 8 standard normal features (3 of them nuisance)."""
    rng = np.random.RandomState(seed)
    x = rng.randn(n, d).astype(np.float32)
    y = np.sin(x[:, 0]) * x[:, 1] + 0.5 * x[:, 2] ** 2 + np.tanh(x[:, 3] + x[:, 4]) + noise * rng.randn(n)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    return _split(x, y[:, None], n // 5)


def nonlinear_regression(**kw):
    xtr, ytr, xva, yva = _nonlinear_regression(**kw)
    return (*_t(xtr, ytr, torch.float32), *_t(xva, yva, torch.float32))


def token_loaders(tr, va, bs, val_bs=256):
    return (DataLoader(TensorDataset(tr), batch_size=bs, shuffle=True, drop_last=True),
            DataLoader(TensorDataset(va), batch_size=val_bs))


# --------------------------------------------------------------------------------------------- models and modules
def mlp(sizes, act=nn.ReLU, dropout=0.0, bn=False, out_act=None):
    return shared_mlp(sizes, act=act, dropout=dropout, bn=bn, final=out_act)


def small_cnn(k=10, c=32, norm=None, bias_init=None):
    def nrm(ch):
        if norm == "bn":
            return nn.BatchNorm2d(ch)
        if norm == "gn":
            return nn.GroupNorm(8, ch)
        return nn.Identity()
    m = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nrm(c), nn.ReLU(),
                      nn.Conv2d(c, 2 * c, 3, padding=1), nrm(2 * c), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(2 * c, 2 * c, 3, padding=1), nrm(2 * c), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, k))
    if bias_init is not None:
        for mod in m:
            if isinstance(mod, nn.Conv2d):
                nn.init.constant_(mod.bias, bias_init)
    return m


def adamw(lr, wd=0.01, **kw):
    return shared_adamw(lr, weight_decay=wd, **kw)


def warmup_cosine(warm, total, floor=0.0):
    def f(opt):
        def lam(s):
            if s < warm:
                return (s + 1) / warm
            q = min(1.0, (s - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * q))
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lam), "interval": "step"}
    return f


def warmup_linear(warm, total):
    def f(opt):
        lam = lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))  # noqa: E731
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lam), "interval": "step"}
    return f


class HF(nn.Module):
    """A Hugging Face model that maps token ids to its logits."""

    def __init__(self, m, pad_id=None, invert_mask=False):
        super().__init__()
        self.m, self.pad_id, self.invert_mask = m, pad_id, invert_mask

    def forward(self, x):
        if self.pad_id is None:
            return self.m(input_ids=x).logits
        mask = (x != self.pad_id).long()
        if self.invert_mask:
            mask = (x == self.pad_id).long()
        return self.m(input_ids=x, attention_mask=mask).logits


class TokenNet(Net):
    """Per-token classification: out (B, T, C), labels (B, T)."""

    def shared_step(self, batch):
        x, y = batch
        out = self(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return loss, (out.argmax(-1) == y).float().mean() * len(y), len(y)


class SegNet(Net):
    """Per-pixel classification: out (B, C, H, W), masks (B, H, W)."""

    def shared_step(self, batch):
        x, y = batch
        out = self(x)
        loss = F.cross_entropy(out, y)
        return loss, (out.argmax(1) == y).float().mean() * len(y), len(y)


class ManualNet(Net):
    """Manual optimization with one optimizer (``zero_grad`` optional: the missing-zero_grad fault)."""

    def __init__(self, *a, zero_grad=True, **kw):
        super().__init__(*a, **kw)
        self.automatic_optimization = False
        self.zero = zero_grad

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss, _, _ = self.shared_step(batch)
        if self.zero:
            opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train_loss", loss)


# =================================================================================================== HEALTHY RUNS
# ---------------------------------------------------------------------------------------- tiny Hugging Face models
def _copy_task(n, seg=8, reps=4, vocab=32, seed=DATA_SEED):
    """8 random tokens (2..vocab-1) repeated 4 times, +1 token: the last 3 copies are predictable (induction)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(2, vocab, (n, seg), generator=g)
    x = a.repeat(1, reps)
    return torch.cat([x, a[:, :1]], 1)


@healthy("h4-llama-tiny-copy-lm-adamw-warmcos-clip1",
         "tiny Llama (2 layers, GQA 4/2 heads, RoPE) on a repeated-segment copy task (8 random tokens, repeated 4 "
         "times): the loss falls to the floor set by the unpredictable first copy (~0.74) and stays flat there; "
         "AdamW + warm-up + cosine, gradient_clip_val=1.0",
         ok_ratio=0.6)
def _(run_dir):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    tr, va = _copy_task(6000), _copy_task(500, seed=DATA_SEED + 1)
    train_dl, val_dl = token_loaders(tr, va, 32)
    steps = 1500
    module = LM(HF(LlamaForCausalLM(cfg)), adamw(3e-3, wd=0.1, betas=(0.9, 0.95)), warmup_cosine(100, steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=100, gradient_clip_val=1.0)


def _majority_tokens(n, T=24, vocab=40, k=3, seed=DATA_SEED, marker0=1, pad_id=None, min_len=None):
    """Label c: marker token marker0+c occurs 5 times, the other two markers 0-3 times; filler tokens above the
    markers. With ``min_len``: variable length, the tail padded with ``pad_id`` (below the markers)."""
    rng = np.random.RandomState(seed)
    x = rng.randint(marker0 + k, vocab, size=(n, T))
    y = rng.randint(0, k, size=n)
    for i in range(n):
        L = T if min_len is None else rng.randint(min_len, T + 1)
        counts = [rng.randint(0, 4) for _ in range(k)]
        counts[y[i]] = 5
        pos = rng.permutation(L)[:sum(counts)]
        j = 0
        for c in range(k):
            x[i, pos[j:j + counts[c]]] = marker0 + c
            j += counts[c]
        if min_len is not None:
            x[i, L:] = pad_id
    return torch.tensor(x), torch.tensor(y)


@healthy("h4-albert-tiny-majority-token-accum4",
         "tiny ALBERT (3 shared layers, factorised 32-d embeddings) classifying which marker token is in the "
         "majority; AdamW with linear warm-up/decay, accumulate_grad_batches=4 (micro-batch 16)", ok_acc=0.85)
def _(run_dir):
    from transformers import AlbertConfig, AlbertForSequenceClassification
    cfg = AlbertConfig(vocab_size=40, embedding_size=32, hidden_size=64, num_hidden_layers=3,
                       num_attention_heads=4, intermediate_size=128, max_position_embeddings=32, num_labels=3,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.1)
    xtr, ytr = _majority_tokens(4000)
    xva, yva = _majority_tokens(800, seed=DATA_SEED + 1)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 16)
    steps = 800
    module = Net(HF(AlbertForSequenceClassification(cfg)), adamw(2e-3), warmup_linear(80, steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=200, accumulate_grad_batches=4)


def _dup_tagging(n, T=20, vocab=24, seed=DATA_SEED):
    """Tag each token 1 if the same token occurred earlier in the sequence (tokens 3..vocab-1; RoBERTa pads with 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (n, T), generator=g)
    eq = (x[:, :, None] == x[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril(-1)
    return x, eq.any(-1).long()


@healthy("h4-roberta-tiny-duplicate-token-tagging",
         "tiny RoBERTa token classifier tagging tokens seen earlier in the sequence (needs attention); AdamW, "
         "linear warm-up 10% then linear decay to 0", ok_acc=0.9)
def _(run_dir):
    from transformers import RobertaConfig, RobertaForTokenClassification
    cfg = RobertaConfig(vocab_size=24, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=40, num_labels=2, pad_token_id=1,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)
    xtr, ytr = _dup_tagging(5000)
    xva, yva = _dup_tagging(800, seed=DATA_SEED + 1)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    steps = 1200
    module = TokenNet(HF(RobertaForTokenClassification(cfg)), adamw(2e-3), warmup_linear(120, steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=150)


def _reverse_task(n, L=10, vocab=14, seed=DATA_SEED):
    """L digits (3..vocab-1), separator 2, the digits reversed: the second half is predictable."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(3, vocab, (n, L), generator=g)
    return torch.cat([a, torch.full((n, 1), 2), a.flip(1)], 1)


@healthy("h4-mistral-tiny-reverse-lm-bf16-mixed",
         "tiny Mistral LM on sequence reversal under precision='bf16-mixed' (CPU autocast): bf16 rounding makes the "
         "loss and gradients noisier; AdamW + warm-up + cosine", ok_ratio=0.6)
def _(run_dir):
    from transformers import MistralConfig, MistralForCausalLM
    cfg = MistralConfig(vocab_size=14, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                        sliding_window=None, tie_word_embeddings=False)
    tr, va = _reverse_task(6000), _reverse_task(500, seed=DATA_SEED + 1)
    train_dl, val_dl = token_loaders(tr, va, 32)
    steps = 1500
    module = LM(HF(MistralForCausalLM(cfg)), adamw(3e-3, wd=0.05), warmup_cosine(100, steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=150, precision="bf16-mixed")


# ---------------------------------------------------------------------------------- schedules and optimizers
class SWANet(Net):
    """SGD with a cosine schedule, then SWA: a constant SWA learning rate and an equal-weight average of the weights
    every 25 steps from step ``swa_start``; validation uses the average once it exists."""

    def __init__(self, model, swa_start, swa_lr, lr, total):
        super().__init__(model, None)
        self.swa_model = torch.optim.swa_utils.AveragedModel(self.model)
        self.swa_start, self.swa_lr, self.lr, self.total, self.n_avg = swa_start, swa_lr, lr, total, 0

    def forward(self, x):
        if not self.training and self.n_avg > 0:
            return self.swa_model(x)
        return self.model(x)

    def optim_params(self):
        return list(self.model.parameters())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.optim_params(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        def lam(s):
            if s < self.swa_start:
                return self.swa_lr / self.lr + (1 - self.swa_lr / self.lr) * 0.5 * (
                    1 + math.cos(math.pi * s / self.swa_start))
            return self.swa_lr / self.lr
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lam), "interval": "step"}}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step >= self.swa_start and self.global_step % 25 == 0:
            self.swa_model.update_parameters(self.model)
            self.n_avg += 1


@healthy("h4-mlp-digits-sgd-swa",
         "MLP on digits: SGD momentum + cosine to a constant SWA lr at 60% of the run, then stochastic weight "
         "averaging every 25 steps (torch.optim.swa_utils.AveragedModel, a child module outside the optimizer); "
         "validation uses the average", ok_acc=0.95)
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    steps = 1500
    module = SWANet(mlp([64, 256, 256, 10]), swa_start=900, swa_lr=0.02, lr=0.05, total=steps)
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=100)


@healthy("h4-cnn-digits-adam-cyclic-exp-range",
         "CNN on digits with Adam under CyclicLR(mode='exp_range', 1e-4..3e-3, half-cycle 100 steps, "
         "cycle_momentum=False): the lr saw-tooths every 200 steps and the loss wobbles with it", ok_acc=0.95)
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)

    def sched(opt):
        return {"scheduler": torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-4, max_lr=3e-3, step_size_up=100,
                                                              mode="exp_range", gamma=0.999,
                                                              cycle_momentum=False),
                "interval": "step"}
    module = Net(small_cnn(c=16), adam(1e-3), sched)
    return fit(module, train_dl, val_dl, run_dir, 1200, val_every=100)


@healthy("h4-regression-sgdm-reduce-on-plateau-val",
         "MLP regression (sin/square/tanh target, 8 features) with SGD momentum and ReduceLROnPlateau(factor 0.5, "
         "patience 2) on the epoch's validation loss: the lr halves in steps late in the run", ok_ratio=0.3)
def _(run_dir):
    xtr, ytr, xva, yva = nonlinear_regression()
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)

    def sched(opt):
        return {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2),
                "monitor": "val_loss", "interval": "epoch"}
    module = Net(mlp([8, 128, 128, 1]), sgd(0.02, 0.9), sched, task="reg")
    return fit(module, train_dl, val_dl, run_dir, 1800)


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in SimCLR: momentum SGD whose step for each weight tensor is scaled by the trust
    ratio eta ||w|| / (||g|| + wd ||w||); groups with ``lars=False`` (biases, norms) take plain momentum steps."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, eta=1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if g["lars"]:
                    d = d.add(p, alpha=g["weight_decay"])
                    wn, gn = p.norm(), d.norm()
                    if wn > 0 and gn > 0:
                        d = d * (g["eta"] * wn / gn)
                st = self.state[p]
                buf = st.get("buf")
                buf = d.clone() if buf is None else buf.mul_(g["momentum"]).add_(d)
                st["buf"] = buf
                p.add_(buf, alpha=-g["lr"])
        return loss


@healthy("h4-bn-mlp-lars-bs1024-long-warmup",
         "BN MLP at batch 1024 with LARS at the SimCLR rule lr = 0.3 x 1024/256 = 1.2 (biases and BN excluded from "
         "the trust ratio and decay), linear warm-up over 30% of the run, then cosine", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=20000, d=24, k=4, informative=12, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 1024)
    steps = 1200
    model = mlp([24, 256, 256, 4], bn=True)

    def opt_fn(params):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        w = [p for n, p in named if p.ndim > 1]
        rest = [p for n, p in named if p.ndim <= 1]
        return LARS([{"params": w}, {"params": rest, "lars": False, "weight_decay": 0.0}], lr=1.2)
    module = Net(model, opt_fn, warmup_cosine(int(0.3 * steps), steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=15)


@healthy("h4-wine-fullbatch-gd-large-lr",
         "full-batch gradient descent (no momentum) on wine (133 samples) with a ReLU MLP at lr 0.5, large for GD; "
         "the training loss falls to ~1e-4 and the validation loss drifts up slightly as the margins of a "
         "separable small data set grow (accuracy holds)", ok_acc=0.9)
def _(run_dir):
    from sklearn.datasets import load_wine
    x, y = load_wine(return_X_y=True)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y, 45)
    xtr, xva = _standardise(xtr, xva)
    xtr, ytr = _t(xtr, ytr)
    xva, yva = _t(xva, yva)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, len(xtr))
    module = Net(mlp([13, 64, 64, 3]), sgd(0.5))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=50)


# ---------------------------------------------------------------------------------------------------- losses
@healthy("h4-cnn-digits-pairflip-label-noise-20",
         "CNN on digits whose labels (train and validation alike: the source is noisy) are flipped to the next "
         "class with probability 0.2: the loss stays high (~0.8) and accuracy against the noisy labels tops out "
         "near 0.8, but the model predicts the true class (~0.9 against clean labels); AdamW wd 5e-4",
         ok_acc=0.65)
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    rng = np.random.RandomState(DATA_SEED + 7)
    ytr = torch.where(torch.tensor(rng.rand(len(ytr)) < 0.2), (ytr + 1) % 10, ytr)
    yva = torch.where(torch.tensor(rng.rand(len(yva)) < 0.2), (yva + 1) % 10, yva)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(small_cnn(c=16), adamw(1e-3, wd=5e-4))
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


def focal_loss(gamma=2.0):
    def f(logits, y):
        logp = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
        return (-(1 - logp.exp()) ** gamma * logp).mean()
    return f


@healthy("h4-focal-loss-imbalanced-80-15-5",
         "focal loss (gamma 2) on 3 classes at 80/15/5%: the loss starts small (~0.4) and its values are a fraction "
         "of a cross-entropy's; Adam", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=8000, d=20, k=3, informative=10, sep=1.0, weights=(0.8, 0.15, 0.05))
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([20, 128, 128, 3]), adam(1e-3), loss_fn=focal_loss(2.0))
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


# contrastive ----------------------------------------------------------------------------------------------------
def _aug(x, g=None, noise=0.5, drop=0.2):
    n = torch.randn(x.shape, generator=g) if g is not None else torch.randn_like(x)
    m = (torch.rand(x.shape, generator=g) if g is not None else torch.rand_like(x)) > drop
    return (x + noise * n) * m


class InfoNCENet(Net):
    """SimCLR-style NT-Xent over two augmented views; x is (B, 2, D): training augments both views on the fly,
    validation's views were drawn once. 'Accuracy' is top-1 retrieval of the positive among the 2B-1."""

    def __init__(self, model, opt_fn, sched_fn=None, tau=0.2):
        super().__init__(model, opt_fn, sched_fn, task="reg")
        self.tau = tau

    def shared_step(self, batch):
        x, _ = batch
        v1, v2 = x[:, 0], x[:, 1]
        if self.training:
            v1, v2 = _aug(v1), _aug(v2)
        b = len(x)
        z = F.normalize(self(torch.cat([v1, v2])), dim=-1)
        sim = (z @ z.T / self.tau).masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
        tgt = torch.cat([torch.arange(b) + b, torch.arange(b)])
        loss = F.cross_entropy(sim, tgt)
        return loss, (sim.argmax(-1) == tgt).float().sum() / 2, b


def _contrastive_data():
    rng = np.random.RandomState(DATA_SEED + 3)
    n, d, r = 6000, 32, 8
    x = (rng.randn(n, r) @ rng.randn(r, d) / math.sqrt(r) + 0.3 * rng.randn(n, d)).astype(np.float32)
    x = torch.tensor((x - x.mean(0)) / x.std(0))
    xtr, xva = x[:5000], x[5000:]
    g = torch.Generator().manual_seed(DATA_SEED)
    va = torch.stack([_aug(xva, g), _aug(xva, g)], 1)
    tr = torch.stack([xtr, xtr], 1)
    return loaders(tr, torch.zeros(len(tr)), va, torch.zeros(len(va)), 128, val_bs=128)


@healthy("h4-infonce-contrastive-encoder-sgd",
         "SimCLR-style contrastive encoder (MLP + projection, NT-Xent tau 0.2, batch 128) on low-rank synthetic "
         "vectors with noise + masking views; SGD momentum 0.9 with warm-up + cosine; loss starts near log(255); "
         "ok = top-1 retrieval of the positive among 255 candidates", ok_acc=0.5)
def _(run_dir):
    train_dl, val_dl = _contrastive_data()
    steps = 1200
    model = nn.Sequential(mlp([32, 256, 128], bn=True), nn.ReLU(), nn.Linear(128, 64))
    module = InfoNCENet(model, sgd(0.3, 0.9, weight_decay=1e-5), warmup_cosine(100, steps), tau=0.2)
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=100)


# generative ---------------------------------------------------------------------------------------------------
class VAE(nn.Module):
    def __init__(self, d=64, h=256, z=8):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2 * z))
        self.dec = nn.Sequential(nn.Linear(z, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d))

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.dec(z), mu, logvar


class VAENet(Net):
    """Bernoulli VAE on digits pixels in [0, 1]; training anneals the KL weight 0 -> 1 over ``anneal`` steps,
    validation reports the negative ELBO (weight 1). ``kl_batch_sum``: the fault's KL summed over the batch."""

    def __init__(self, model, opt_fn, anneal=500, kl_batch_sum=False):
        super().__init__(model, opt_fn, task="reg")
        self.anneal, self.kl_batch_sum = anneal, kl_batch_sum

    def terms(self, x):
        logits, mu, logvar = self(x)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum()
        return rec, (kl if self.kl_batch_sum else kl / len(x))

    def shared_step(self, batch):
        x, _ = batch
        rec, kl = self.terms(x)
        beta = min(1.0, self.global_step / self.anneal) if (self.training and self.anneal) else 1.0
        return rec + beta * kl, None, len(x)


def _vae_val_recon(module, val_dl):
    module.eval()
    with torch.no_grad():
        tot = sum(float(module.terms(x)[0]) * len(x) for x, _ in val_dl)
    return tot / len(val_dl.dataset)


@healthy("h4-vae-digits-elbo-kl-annealing",
         "Bernoulli VAE on digits (8-d latent) with the KL weight annealed 0 -> 1 over 500 steps: the training "
         "loss falls, then rises while the KL term is phased in, before falling again; Adam 1e-3", ok_ratio=0.75)
def _(run_dir):
    xtr, _, xva, _ = digits(raw=True)
    xtr, xva = xtr / 16.0, xva / 16.0
    train_dl, val_dl = loaders(xtr, torch.zeros(len(xtr)), xva, torch.zeros(len(xva)), 64)
    module = VAENet(VAE(), adam(1e-3), anneal=500)
    info = fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)
    info["val_recon"] = _vae_val_recon(module, val_dl)
    return info


class TiedAE(nn.Module):
    """Tied-weight autoencoder: decoder weight = encoder weight transposed."""

    def __init__(self, d, h):
        super().__init__()
        self.enc = nn.Linear(d, h)
        self.act = nn.ReLU()
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


class DenoiseNet(Net):
    def __init__(self, model, opt_fn, drop=0.3):
        super().__init__(model, opt_fn, task="reg")
        self.drop = drop

    def shared_step(self, batch):
        x, _ = batch
        inp = F.dropout(x, self.drop) * (1 - self.drop) if self.training else x  # masking noise, no rescale
        return F.mse_loss(self(inp), x), None, len(x)


@healthy("h4-tied-weight-denoising-autoencoder",
         "weight-tied denoising autoencoder (one weight used twice) on 40-d data near a 6-d curved manifold; "
         "30% masking noise on the inputs, MSE to the clean vector; Adam", ok_ratio=0.4)
def _(run_dir):
    rng = np.random.RandomState(DATA_SEED + 5)
    z = rng.randn(5000, 6)
    x = np.tanh(z @ rng.randn(6, 40) / 2) + 0.05 * rng.randn(5000, 40)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    xtr, xva = torch.tensor(x[:4000]), torch.tensor(x[4000:])
    train_dl, val_dl = loaders(xtr, torch.zeros(4000), xva, torch.zeros(1000), 64)
    module = DenoiseNet(TiedAE(40, 64), adam(2e-3))
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


# structured outputs ------------------------------------------------------------------------------------------------
@healthy("h4-multilabel-bce-8-labels",
         "multilabel classification (make_multilabel_classification, 8 labels, ~2 per sample, log1p counts) with "
         "BCEWithLogits: the loss starts at 0.69 and ends well above 0 (labels overlap); Adam, dropout 0.2",
         ok_ratio=0.65)
def _(run_dir):
    from sklearn.datasets import make_multilabel_classification
    x, y = make_multilabel_classification(n_samples=6000, n_features=40, n_classes=8, n_labels=2,
                                          random_state=DATA_SEED)
    xtr, ytr, xva, yva = _split(np.log1p(x).astype(np.float32), y.astype(np.float32), 1200)
    xtr, xva = _standardise(xtr, xva)
    xtr, ytr = _t(xtr, ytr, torch.float32)
    xva, yva = _t(xva, yva, torch.float32)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([40, 256, 256, 8], dropout=0.2), adam(1e-3), task="reg",
                 loss_fn=nn.BCEWithLogitsLoss())
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


class CoralNet(Net):
    """Ordinal regression (CORAL, Cao et al. 2020): one score, K-1 ordered thresholds, BCE on 'y > k'."""

    def shared_step(self, batch):
        x, y = batch
        logits = self(x)
        levels = (y[:, None] > torch.arange(logits.shape[1])[None]).float()
        loss = F.binary_cross_entropy_with_logits(logits, levels)
        pred = (logits > 0).sum(1)
        return loss, (pred == y).sum(), len(y)


class CoralHead(nn.Module):
    def __init__(self, body, h, k):
        super().__init__()
        self.body, self.score = body, nn.Linear(h, 1, bias=False)
        self.thresholds = nn.Parameter(torch.linspace(1, -1, k - 1))

    def forward(self, x):
        return self.score(self.body(x)) + self.thresholds


@healthy("h4-ordinal-coral-6-levels",
         "ordinal regression with a CORAL head (shared score + 5 learned thresholds, BCE on cumulative labels) on a "
         "noisy 6-level rating derived from a nonlinear score; Adam", ok_acc=0.6)
def _(run_dir):
    xtr, ytr, xva, yva = nonlinear_regression(noise=0.3)
    edges = torch.tensor([-1.0, -0.4, 0.1, 0.6, 1.2])
    ytr, yva = torch.bucketize(ytr[:, 0], edges), torch.bucketize(yva[:, 0], edges)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    body = nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
    module = CoralNet(CoralHead(body, 128, 6), adam(1e-3))
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


@functools.lru_cache(None)
def _shapes(n, size=24, seed=DATA_SEED):
    """Images with 1-3 filled discs/rectangles (mask 1) on a sloped background, Gaussian noise sd 0.7."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((n, 1, size, size), np.float32)
    mask = np.zeros((n, size, size), np.int64)
    for i in range(n):
        m = np.zeros((size, size), bool)
        for _ in range(rng.randint(1, 4)):
            cy, cx, r = rng.randint(4, size - 4), rng.randint(4, size - 4), rng.randint(2, 6)
            if rng.rand() < 0.5:
                m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                m |= (abs(yy - cy) <= r) & (abs(xx - cx) <= rng.randint(2, 6))
        slope = rng.randn() * 0.03
        img[i, 0] = m * 1.0 + slope * (xx - size / 2) + 0.7 * rng.randn(size, size)
        mask[i] = m
    return torch.tensor(img), torch.tensor(mask)


class TinyUNet(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        def block(a, b):
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                                 nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())
        self.d1, self.pool, self.d2 = block(1, c), nn.MaxPool2d(2), block(c, 2 * c)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.u1, self.out = block(2 * c, c), nn.Conv2d(c, 2, 1)

    def forward(self, x):
        a = self.d1(x)
        b = self.d2(self.pool(a))
        return self.out(self.u1(torch.cat([a, self.up(b)], 1)))


@healthy("h4-tiny-unet-synthetic-masks",
         "tiny UNet (BN, skip connection, transposed-conv upsampling) segmenting noisy synthetic discs/rectangles "
         "per pixel (background ~80% of pixels); Adam + cosine", ok_acc=0.93)
def _(run_dir):
    xtr, ytr = _shapes(1200)
    xva, yva = _shapes(300, seed=DATA_SEED + 1)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 16, val_bs=100)
    steps = 1000
    module = SegNet(TinyUNet(), adam(2e-3), warmup_cosine(1, steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=100)


# architectures ------------------------------------------------------------------------------------------------
class ChannelLN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt block: depthwise 3x3, LayerNorm, pointwise MLP x4 with GELU, layer scale (init 1e-6)."""

    def __init__(self, c, ls=1e-6):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.act, self.pw2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(ls * torch.ones(c))

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + (self.pw2(self.act(self.pw1(y))) * self.gamma).permute(0, 3, 1, 2)


@healthy("h4-convnext-dw-layernorm-digits-adamw",
         "ConvNeXt-style net on digits: depthwise 3x3 convs, LayerNorm, inverted-bottleneck MLPs, layer scale "
         "initialised at 1e-6 (residual branches start switched off), AdamW wd 0.05 + warm-up + cosine",
         ok_acc=0.95)
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    steps = 1200
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), ChannelLN(32), CNBlock(32), CNBlock(32),
                          ChannelLN(32), nn.Conv2d(32, 64, 2, stride=2), CNBlock(64), CNBlock(64),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(64), nn.Linear(64, 10))
    module = Net(model, adamw(2e-3, wd=0.05), warmup_cosine(100, steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=100)


@healthy("h4-groupnorm-cnn-digits-batch4-nesterov",
         "CNN with GroupNorm (8 groups; batch-size independent) at batch size 4 with Nesterov SGD: a very noisy "
         "per-step loss", ok_acc=0.93)
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 4)
    module = Net(small_cnn(c=16, norm="gn"), sgd(0.01, 0.9, nesterov=True))
    return fit(module, train_dl, val_dl, run_dir, 2400, val_every=300)


# pre-trained GRU encoder, linear probe ---------------------------------------------------------------------------
def _waves(n, seed, T=30):
    """Sequences: sin of one of 6 frequencies, random phase and amplitude, noise 0.3; labels: the frequency."""
    rng = np.random.RandomState(seed)
    f = rng.randint(0, 6, n)
    t = np.arange(T)
    freq = 0.05 + 0.045 * f
    x = (0.5 + rng.rand(n, 1)) * np.sin(2 * np.pi * freq[:, None] * t + rng.rand(n, 1) * 6.3)
    x = x + 0.3 * rng.randn(n, T)
    return torch.tensor(x[..., None], dtype=torch.float32), torch.tensor(f)


class SeqEncoder(nn.Module):
    def __init__(self, h=64):
        super().__init__()
        self.gru = nn.GRU(1, h, batch_first=True)

    def forward(self, x):
        return self.gru(x)[1][-1]


class Pretrainer(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.cls6 = SeqEncoder(), nn.Linear(64, 6)

    def forward(self, x):
        return self.cls6(self.backbone(x))


class SeqClassifier(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.encoder, self.head = SeqEncoder(), nn.Linear(64, k)

    def forward(self, x):
        return self.head(self.encoder(x))


def _pretrain_gru(steps=500):
    """Pre-train the GRU on the 6-frequency task (a plain loop, not monitored): what a checkpoint would hold."""
    x, y = _waves(6000, DATA_SEED + 11)
    pre = Pretrainer()
    opt = torch.optim.Adam(pre.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(pre(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pre


class HeadOnlyNet(Net):
    def optim_params(self):
        return list(self.model.head.parameters())


def _probe_data():
    """Downstream: low / mid / high frequency band (pairs of the pre-training classes), new sequences."""
    xtr, ftr = _waves(3000, DATA_SEED + 12)
    xva, fva = _waves(800, DATA_SEED + 13)
    return loaders(xtr, ftr // 2, xva, fva // 2, 64)


@healthy("h4-gru-pretrained-linear-probe-head-only-optimizer",
         "a GRU encoder pre-trained on a 6-frequency task is loaded and only the new 3-way head is given to the "
         "optimizer (the encoder is left out on purpose, requires_grad still True): ~98% of the parameters never "
         "train, and the probe reaches high accuracy; Adam 3e-3", ok_acc=0.9)
def _(run_dir):
    pre = _pretrain_gru()
    model = SeqClassifier(3)
    model.encoder.load_state_dict(pre.backbone.state_dict())
    train_dl, val_dl = _probe_data()
    module = HeadOnlyNet(model, adam(3e-3))
    return fit(module, train_dl, val_dl, run_dir, 800, val_every=50)


# small data, manual optimization, precision ----------------------------------------------------------------------
@healthy("h4-breast-cancer-80-samples-mild-overfit",
         "breast cancer with only 80 training samples (489 validation): the MLP (dropout 0.3, AdamW 3e-4, wd 1e-2) drives its "
         "training loss near zero while the validation loss bottoms out and creeps up a little; accuracy holds",
         ok_acc=0.93)
def _(run_dir):
    from sklearn.datasets import load_breast_cancer
    x, y = load_breast_cancer(return_X_y=True)
    xva, yva, xtr, ytr = _split(x.astype(np.float32), y, 80)
    xtr, xva = _standardise(xtr, xva)
    xtr, ytr = _t(xtr, ytr)
    xva, yva = _t(xva, yva)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 16)
    module = Net(mlp([30, 64, 64, 2], dropout=0.3), adamw(3e-4, wd=1e-2))
    return fit(module, train_dl, val_dl, run_dir, 800, val_every=50)


class Body2(nn.Module):
    def __init__(self, d, h, k):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.head = nn.Linear(h, k)

    def forward(self, x):
        return self.head(self.body(x))


class TwoOptNet(Net):
    """Manual optimization with two optimizers: AdamW (+ cosine) on the body, momentum SGD on the head."""

    def __init__(self, model, total):
        super().__init__(model, None)
        self.automatic_optimization = False
        self.total = total

    def configure_optimizers(self):
        ob = torch.optim.AdamW(self.model.body.parameters(), lr=1e-3, weight_decay=0.01)
        oh = torch.optim.SGD(self.model.head.parameters(), lr=0.05, momentum=0.9)
        return [ob, oh], [torch.optim.lr_scheduler.CosineAnnealingLR(ob, T_max=self.total)]

    def training_step(self, batch, batch_idx):
        ob, oh = self.optimizers()
        loss, _, _ = self.shared_step(batch)
        ob.zero_grad()
        oh.zero_grad()
        self.manual_backward(loss)
        ob.step()
        oh.step()
        self.lr_schedulers().step()
        self.log("train_loss", loss)


@healthy("h4-manual-optimization-two-optimizers",
         "manual optimization (automatic_optimization=False): AdamW + cosine for the body and momentum SGD for the "
         "head, stepped together each batch (global_step counts both: 1600 steps = 800 batches); the module logs "
         "train_loss and returns nothing", ok_acc=0.8)
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = TwoOptNet(Body2(20, 128, 5), total=800)
    return fit(module, train_dl, val_dl, run_dir, 1600, val_every=100)


class SAMNet(Net):
    """Sharpness-aware minimisation (Foret et al. 2021), manual: ascend to w + rho g/|g|, take the gradient there,
    step the base optimizer (momentum SGD) from w."""

    def __init__(self, model, lr, rho=0.05):
        super().__init__(model, None)
        self.automatic_optimization = False
        self.lr, self.rho = lr, rho

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss, _, _ = self.shared_step(batch)
        self.manual_backward(loss)
        params = [p for p in self.parameters() if p.grad is not None]
        with torch.no_grad():
            gn = torch.norm(torch.stack([p.grad.norm() for p in params])) + 1e-12
            eps = [p.grad * (self.rho / gn) for p in params]
            for p, e in zip(params, eps):
                p.add_(e)
        opt.zero_grad()
        loss2, _, _ = self.shared_step(batch)
        self.manual_backward(loss2)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()
        self.log("train_loss", loss)
        return loss


@healthy("h4-sam-momentum-sgd-digits-cnn",
         "SAM (rho 0.05) around momentum SGD on a digits CNN, manual optimization: two forward/backward passes a "
         "step, the weights perturbed and restored inside the step", ok_acc=0.95)
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = SAMNet(small_cnn(c=16), lr=0.03)
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@healthy("h4-wide-mlp-bf16-mixed-adamw",
         "MLP under precision='bf16-mixed' (CPU autocast: matmuls in bfloat16, weights float32) on a 6-class "
         "problem; AdamW", ok_acc=0.75)
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=8000, d=30, k=6, informative=16, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([30, 512, 512, 6]), adamw(1e-3))
    return fit(module, train_dl, val_dl, run_dir, 1200, val_every=100, precision="bf16-mixed")


# probabilistic regression -------------------------------------------------------------------------------------------
def _hetero(n, seed):
    rng = np.random.RandomState(seed)
    x = rng.uniform(-3, 3, (n, 1))
    extra = rng.randn(n, 3)
    y = np.sin(x) + 0.5 * extra[:, :1] + (0.05 + 0.3 * np.abs(x)) * rng.randn(n, 1)
    return _t(np.concatenate([x, extra], 1), y, torch.float32)


class GaussHead(nn.Module):
    """Mean and variance heads; ``positive``: the variance through softplus (else raw, the fault)."""

    def __init__(self, positive=True):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh())
        self.mean, self.var = nn.Linear(128, 1), nn.Linear(128, 1)
        self.positive = positive

    def forward(self, x):
        h = self.body(x)
        v = self.var(h)
        return torch.cat([self.mean(h), F.softplus(v) + 1e-6 if self.positive else v], 1)


def gauss_nll(out, y):
    mu, var = out[:, :1], out[:, 1:]
    return (0.5 * (torch.log(var) + (y - mu) ** 2 / var)).mean()


@healthy("h4-heteroscedastic-gaussian-nll-goes-negative",
         "mean + variance regression with the Gaussian NLL on noise whose scale grows with |x|: the loss crosses "
         "zero and ends negative (log-variances below 0); Adam", ok_ratio=0.6)
def _(run_dir):
    xtr, ytr = _hetero(4000, DATA_SEED)
    xva, yva = _hetero(1000, DATA_SEED + 1)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(GaussHead(), adam(1e-3), task="reg", loss_fn=gauss_nll)
    return fit(module, train_dl, val_dl, run_dir, 2000, val_every=100)


@healthy("h4-poisson-regression-counts-noise-floor",
         "Poisson regression (log-rate output, PoissonNLLLoss without the Stirling term, so the loss is negative) "
         "on counts with rates 0.2-30: the loss falls fast to the Poisson noise floor and stays flat for most of "
         "the run; Adam", ok_ratio=0.6)
def _(run_dir):
    rng = np.random.RandomState(DATA_SEED + 9)
    x = rng.randn(6000, 10).astype(np.float32)
    lograte = 1.0 + 0.6 * x[:, 0] - 0.5 * x[:, 1] + 0.4 * np.sin(2 * x[:, 2]) + 0.3 * x[:, 3] * x[:, 4]
    y = rng.poisson(np.exp(np.clip(lograte, -1.6, 3.4))).astype(np.float32)[:, None]
    xtr, ytr, xva, yva = _split(x, y, 1200)
    xtr, ytr = _t(xtr, ytr, torch.float32)
    xva, yva = _t(xva, yva, torch.float32)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([10, 64, 64, 1]), adam(1e-3), task="reg", loss_fn=nn.PoissonNLLLoss(log_input=True))
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


class L2Net(Net):
    def __init__(self, *a, l2=1e-3, **kw):
        super().__init__(*a, **kw)
        self.l2 = l2

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.shared_step(batch)
        loss = loss + self.l2 * sum((p ** 2).sum() for n, p in self.named_parameters() if n.endswith("weight"))
        self.log("train_loss", loss)
        return loss


@healthy("h4-lbfgs-fullbatch-breast-cancer",
         "full-batch L-BFGS (strong-Wolfe line search, up to 5 iterations a step; Lightning passes the closure) "
         "on a small MLP with an explicit L2 term: converged within the first ~50 steps, the loss exactly flat "
         "afterwards", ok_acc=0.94)
def _(run_dir):
    from sklearn.datasets import load_breast_cancer
    x, y = load_breast_cancer(return_X_y=True)
    xtr, ytr, xva, yva = _split(x.astype(np.float32), y, 150)
    xtr, xva = _standardise(xtr, xva)
    xtr, ytr = _t(xtr, ytr)
    xva, yva = _t(xva, yva)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, len(xtr))
    opt = lambda p: torch.optim.LBFGS(p, lr=1.0, max_iter=5, history_size=10,  # noqa: E731
                                      line_search_fn="strong_wolfe")
    module = L2Net(mlp([30, 32, 2], act=nn.Tanh), opt, l2=1e-3)
    return fit(module, train_dl, val_dl, run_dir, 800, val_every=50)


@healthy("h4-large-batch-2048-adam-warmup",
         "batch 2048 with Adam at 3e-3 (sqrt-scaled) after a 100-step warm-up, 20k samples: a very smooth loss "
         "curve, ~100 epochs", ok_acc=0.85)
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=25000, d=20, k=5, informative=12, sep=1.3)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 2048, val_bs=2048)
    steps = 1000
    module = Net(mlp([20, 256, 256, 5]), adam(3e-3), warmup_cosine(100, steps, floor=0.1))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=20)


# ===================================================================================================== FAULTY RUNS
@fault("f4-softmax-head-then-log-softmax-nll", {"softmax-before-loss"},
       "the model ends in nn.Softmax (copied from an inference script) and the loss is F.nll_loss(F.log_softmax("
       "out)): cross-entropy on probabilities, whose loss cannot go below log(1+(K-1)/e) and whose gradients are "
       "squashed; plain SGD learns far less than its twin with logits (val acc 0.54 vs 0.82, seed 400)")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=6, informative=12, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    loss = lambda out, y: F.nll_loss(F.log_softmax(out, -1), y)  # noqa: E731
    module = Net(mlp([20, 128, 128, 6], out_act=nn.Softmax(dim=-1)), sgd(0.05), loss_fn=loss)
    return fit(module, train_dl, val_dl, run_dir, 1200, val_every=100)


@fault("f4-sigmoid-output-mse-onehot-digits", {"no-progress", "premature-plateau", "saturated-activations"},
       "10-class digits trained as regression: a sigmoid on the outputs and MSE to one-hot targets (wrong loss "
       "for multiclass); the nine negatives pin every output near 0 where the sigmoid is flat, and plain SGD "
       "converges far more slowly than the cross-entropy twin (val acc 0.63 vs 0.98, seed 400)")
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    loss = lambda out, y: F.mse_loss(out, F.one_hot(y, 10).float())  # noqa: E731
    module = Net(mlp([64, 128, 128, 10], out_act=nn.Sigmoid()), sgd(0.05), loss_fn=loss)
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-squared-error-on-logits-onehot-sgd-lr1", {"loss-divergence", "exploding-gradients", "non-finite"},
       "a hand-written squared error between raw logits and one-hot targets (summed over the 10 outputs: the wrong "
       "loss) with SGD lr 1.0 kept from the cross-entropy config (which trains fine at 1.0: its softmax bounds the "
       "gradient): the squared error's gradient grows with the logits and the run blows up. Changed before any "
       "result was seen: the first version (F.mse_loss, mean over outputs, lr 5) did not bite (val acc 0.98)")
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    loss = lambda out, y: ((out - F.one_hot(y, 10).float()) ** 2).sum(1).mean()  # noqa: E731
    module = Net(mlp([64, 128, 128, 10]), sgd(1.0), loss_fn=loss)
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-manual-optimization-missing-zero-grad", {"exploding-gradients", "loss-divergence", "update-too-large"},
       "manual optimization that calls manual_backward and opt.step() but never opt.zero_grad(): .grad holds the "
       "sum of every gradient so far, so each step is the whole history's sum and the updates grow without bound")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = ManualNet(mlp([20, 128, 128, 5]), sgd(0.01, 0.9), zero_grad=False)
    return fit(module, train_dl, val_dl, run_dir, 1200, val_every=100)


class StaleOptNet(Net):
    def optim_params(self):
        # bug: a copy made "to keep the initial weights" is what the optimizer gets
        self.init_copy = copy.deepcopy(self.model)
        return list(self.init_copy.parameters())


@fault("f4-optimizer-over-deepcopy-of-model", {"unchanged-parameters", "frozen-parameters"},
       "configure_optimizers hands the optimizer the parameters of copy.deepcopy(model) (meant as a snapshot of "
       "the initial weights): gradients land on the real model, the optimizer steps tensors that get none, and "
       "the model never moves (loss flat at chance)")
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = StaleOptNet(small_cnn(c=16), adam(1e-3))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-plateau-scheduler-on-step-train-loss-patience-0", {"lr-collapse", "no-progress", "premature-plateau"},
       "ReduceLROnPlateau(factor=0.01, patience=0) monitoring the per-step train_loss with interval='step': a noisy "
       "batch loss that fails to improve on its best on most steps cuts the lr 100x again and again; it is ~0 "
       "within tens of steps and training stops early")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)

    def sched(opt):
        return {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.01, patience=0),
                "monitor": "train_loss", "interval": "step", "frequency": 1}
    module = Net(mlp([20, 128, 128, 5]), sgd(0.05, 0.9), sched)
    return fit(module, train_dl, val_dl, run_dir, 1200, val_every=100)


@fault("f4-sgd-lr-100x-regression", {"loss-divergence", "exploding-gradients", "non-finite"},
       "momentum SGD at lr 2.0 where 0.02 was meant (a unit slip in a sweep config) on an MSE regression MLP: "
       "the updates overshoot, the weights and loss blow up")
def _(run_dir):
    xtr, ytr, xva, yva = nonlinear_regression()
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([8, 128, 128, 1]), sgd(2.0, 0.9), task="reg")
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-rmsprop-lr-1e-7-cnn", {"no-progress", "update-too-small"},
       "RMSprop at lr 1e-7 (a '1e-4' with a dropped digit pasted as 1e-7) on a digits CNN: each step moves the "
       "weights by ~1e-7, the loss stays near chance for the whole run")
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(small_cnn(c=16), lambda p: torch.optim.RMSprop(p, lr=1e-7))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-conv-bias-init-minus-5", {"dead-units"},
       "every conv bias initialised to -5 (an init helper's constant meant for a gate's bias): pre-activations "
       "are ~N(-5, 0.6), every ReLU outputs 0 for every input, no gradient reaches the convs and the head sees "
       "zeros (loss at the class prior)")
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(small_cnn(c=16, bias_init=-5.0), adam(1e-3))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-deep-sigmoid-12-layer-regression", {"vanishing-gradients"},
       "12 sigmoid hidden layers (default init, no normalisation, no residuals) on the regression task with "
       "momentum SGD: the sigmoid's derivative (<= 0.25) compounds, the early layers get vanishing gradients and "
       "the net barely fits (val MSE 0.94 of the target variance; a ReLU MLP on the same data reaches ~0.02)")
def _(run_dir):
    xtr, ytr, xva, yva = nonlinear_regression()
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([8] + [64] * 12 + [1], act=nn.Sigmoid), sgd(0.02, 0.9), task="reg")
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


def _init_normal(model, std):
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
    return model


@fault("f4-init-std-10-relu-mlp", {"exploding-gradients", "loss-divergence", "non-finite"},
       "Linear weights initialised with normal_(std=10) (meant 1e-2): each of 4 layers multiplies the activation "
       "scale by ~80, the logits start near 1e7 and the gradients are enormous; SGD blows up")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(_init_normal(mlp([20, 128, 128, 128, 5]), 10.0), sgd(0.01, 0.9))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-batchnorm-momentum-0-running-stats-never-update", {"train-val-divergence", "validation-stalled"},
       "BatchNorm2d(momentum=0.0) (a Keras 'momentum=0.99' converted as 1-0.99 twice): running mean/var never "
       "leave 0/1, so in eval mode every layer is normalised with the wrong statistics; training (batch stats) "
       "is fine while the validation loss is poor (val acc 0.47 vs 0.98 for its twin at momentum 0.1, seed 400)")
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    model = small_cnn(c=16, norm="bn")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0
    module = Net(model, sgd(0.05, 0.9))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


class Decoupled(IterableDataset):
    """Bug: inputs and labels are shuffled with two independent permutations each epoch."""

    def __init__(self, x, y, bs):
        self.x, self.y, self.bs = x, y, bs

    def __iter__(self):
        ix, iy = torch.randperm(len(self.x)), torch.randperm(len(self.y))
        for s in range(0, len(ix) - self.bs + 1, self.bs):
            yield self.x[ix[s:s + self.bs]], self.y[iy[s:s + self.bs]]


@fault("f4-inputs-and-labels-shuffled-independently", {"no-progress"},
       "a hand-written dataset shuffles inputs and labels with two separate permutations every epoch: each pairing "
       "is random and different every epoch, so there is nothing to learn or memorise; the training loss stays at "
       "chance (validation pairs are correct)")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl = DataLoader(Decoupled(xtr, ytr, 64), batch_size=None)
    val_dl = DataLoader(TensorDataset(xva, yva), batch_size=512)
    module = Net(mlp([20, 128, 128, 5]), adam(1e-3))
    return fit(module, train_dl, val_dl, run_dir, 1200, val_every=100)


@fault("f4-uint8-cast-zeroes-all-inputs", {"no-progress", "unchanged-parameters"},
       "pixels scaled as if 8-bit ((x / 255).astype(np.uint8)) when digits' range is 0-16: every input is exactly "
       "0; the first layer's weights get zero gradient and the model can only learn the class prior")
def _(run_dir):
    xtr, ytr, xva, yva = digits(raw=True)
    xtr = torch.tensor((xtr.numpy() / 255).astype(np.uint8), dtype=torch.float32)
    xva = torch.tensor((xva.numpy() / 255).astype(np.uint8), dtype=torch.float32)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([64, 128, 128, 10]), adam(1e-3))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-adamw-weight-decay-10", {"over-regularization"},
       "AdamW(lr 3e-3, weight_decay=10) where 0.01 was meant (the config's decay in units of 1e-3): the decoupled "
       "decay takes 3% of every weight each step and holds the weights far below what the data need; the model "
       "underfits its twin (val acc 0.57 vs 0.88, seed 400). Changed before any result was seen: weight_decay=1.0 "
       "barely bit (0.85 vs 0.88)")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([20, 128, 128, 5]), adamw(3e-3, wd=10.0))
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


@fault("f4-bert-tf-keep-prob-passed-as-dropout", {"over-regularization"},
       "a TF1 port passes keep_prob=0.9 as hidden_dropout_prob and attention_probs_dropout_prob of a tiny BERT: "
       "90% of hidden units and attention weights dropped in training, the model barely fits the majority-token "
       "task (val acc 0.56 vs 1.0 for the same BERT at dropout 0.1, seed 400)")
def _(run_dir):
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=32, num_labels=3,
                     hidden_dropout_prob=0.9, attention_probs_dropout_prob=0.9)
    xtr, ytr = _majority_tokens(4000)
    xva, yva = _majority_tokens(800, seed=DATA_SEED + 1)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    steps = 1000
    module = Net(HF(BertForSequenceClassification(cfg)), adamw(2e-3), warmup_linear(100, steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=100)


@fault("f4-trainer-gradient-clip-val-1e-4", {"update-too-small", "no-progress"},
       "Trainer(gradient_clip_val=1e-4) (meant 1.0; the value came from a clip-by-value setting) with momentum "
       "SGD on a digits CNN: every step's gradient is rescaled to norm 1e-4, the weights crawl")
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(small_cnn(c=16), sgd(0.05, 0.9))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100, gradient_clip_val=1e-4)


@fault("f4-lambda-lr-multiplied-100x-at-step-1200", {"loss-divergence", "exploding-gradients", "non-finite"},
       "a LambdaLR step schedule with the factor inverted: lr x100 at step 1200 where x0.01 was meant; the run "
       "trains normally, then momentum SGD at lr 5 blows up late in the run")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)

    def sched(opt):
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 1200 else 100.0),
                "interval": "step"}
    module = Net(mlp([20, 128, 128, 5]), sgd(0.05, 0.9), sched)
    return fit(module, train_dl, val_dl, run_dir, 1800, val_every=100)


def handwritten_ce(out, y):
    p = torch.softmax(out, -1)
    return -(F.one_hot(y, out.shape[-1]).float() * torch.log(p)).sum(-1).mean()


@fault("f4-handwritten-ce-log-of-softmax-underflow-nan", {"non-finite"},
       "a hand-written cross-entropy -(onehot * log(softmax(z))).sum(): once a logit gap passes ~104 a "
       "probability underflows to 0, log gives -inf and 0 * -inf is NaN; with Adam at 1e-2 the margins grow until "
       "a NaN appears mid-run and poisons the weights")
def _(run_dir):
    xtr, ytr, xva, yva = digits()
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([64, 256, 256, 10]), adam(1e-2), loss_fn=handwritten_ce)
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


@fault("f4-regression-rows-sorted-by-target-no-shuffle", {"oscillating-loss"},
       "the training table was sorted by the target (for a plot) and the DataLoader has shuffle=False: each epoch "
       "walks from the lowest to the highest targets, the model chases the batch mean and the loss swings every "
       "epoch; it ends biased toward the last batches")
def _(run_dir):
    xtr, ytr, xva, yva = nonlinear_regression()
    order = torch.argsort(ytr[:, 0])
    train_dl, val_dl = loaders(xtr[order], ytr[order], xva, yva, 32, shuffle=False)
    module = Net(mlp([8, 128, 128, 1]), sgd(0.02, 0.9), task="reg")
    return fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)


@fault("f4-roberta-attention-mask-inverted", {"no-progress"},
       "attention_mask built as (ids == pad) instead of (ids != pad) for padded variable-length sequences: every "
       "token attends only to padding and the classifier token never sees the content (the 1 in 9 sequences "
       "without padding get an all-zero mask, i.e. uniform attention): val acc 0.43 vs 1.0 for its correctly "
       "masked twin (seed 400)")
def _(run_dir):
    from transformers import RobertaConfig, RobertaForSequenceClassification
    cfg = RobertaConfig(vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=40, num_labels=3, pad_token_id=1,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # markers 2..4, filler 5..39, padding 1 (RoBERTa's pad id); lengths 16-24
    xtr, ytr = _majority_tokens(4000, marker0=2, pad_id=1, min_len=16)
    xva, yva = _majority_tokens(800, seed=DATA_SEED + 1, marker0=2, pad_id=1, min_len=16)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    steps = 1000
    module = Net(HF(RobertaForSequenceClassification(cfg), pad_id=1, invert_mask=True), adamw(2e-3),
                 warmup_linear(100, steps))
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=100)


@fault("f4-vae-kl-summed-over-batch", {"over-regularization"},
       "the VAE's KL term is summed over the batch while the reconstruction is averaged over it: the KL weighs "
       "64x (512x in validation), the posterior collapses onto the prior, and the decoder outputs the mean digit "
       "(val reconstruction 27.2 vs 19.1 nats for its healthy twin, seed 400)")
def _(run_dir):
    xtr, _, xva, _ = digits(raw=True)
    xtr, xva = xtr / 16.0, xva / 16.0
    train_dl, val_dl = loaders(xtr, torch.zeros(len(xtr)), xva, torch.zeros(len(xva)), 64)
    module = VAENet(VAE(), adam(1e-3), anneal=500, kl_batch_sum=True)
    info = fit(module, train_dl, val_dl, run_dir, 1500, val_every=100)
    info["val_recon"] = _vae_val_recon(module, val_dl)
    return info


@fault("f4-infonce-temperature-100", {"no-progress", "update-too-small"},
       "the contrastive run with temperature 100 where 0.01-0.2 was meant (the value of 1/tau): similarities / 100 "
       "are ~0, the softmax over 255 candidates is uniform, the loss stays at log(255) and the gradients are "
       "100x-500x too small for momentum SGD")
def _(run_dir):
    train_dl, val_dl = _contrastive_data()
    steps = 1200
    model = nn.Sequential(mlp([32, 256, 128], bn=True), nn.ReLU(), nn.Linear(128, 64))
    module = InfoNCENet(model, sgd(0.3, 0.9, weight_decay=1e-5), warmup_cosine(100, steps), tau=100.0)
    return fit(module, train_dl, val_dl, run_dir, steps, val_every=100)


@fault("f4-gaussian-nll-raw-variance-head", {"non-finite"},
       "the variance head has no positivity constraint (its raw linear output is the variance) and the NLL takes "
       "torch.log(var): batches holding a negative variance give a NaN loss (131 of the first ~380 steps, seed "
       "400; log's gradient 1/var stays finite, so the weights survive) and the model ends far worse than its "
       "softplus twin (val NLL 0.39 vs -0.30). Changed before any result was seen: the first version (the head's "
       "bias initialised to 1) never produced a NaN")
def _(run_dir):
    xtr, ytr = _hetero(4000, DATA_SEED)
    xva, yva = _hetero(1000, DATA_SEED + 1)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(GaussHead(positive=False), adam(1e-3), task="reg", loss_fn=gauss_nll)
    return fit(module, train_dl, val_dl, run_dir, 2000, val_every=100)


@fault("f4-linear-probe-checkpoint-not-loaded", {"frozen-parameters"},
       "the linear-probe run whose checkpoint load silently does nothing: model.load_state_dict(pretrained, "
       "strict=False) with keys under 'backbone.' while the model's are 'encoder.', so the encoder stays random, "
       "and only the head is in the optimizer; the probe on random GRU features falls well short of its twin (val "
       "acc 0.34 vs 1.0, seed 400)")
def _(run_dir):
    pre = _pretrain_gru()
    model = SeqClassifier(3)
    model.load_state_dict(pre.state_dict(), strict=False)  # nothing matches
    train_dl, val_dl = _probe_data()
    module = HeadOnlyNet(model, adam(3e-3))
    return fit(module, train_dl, val_dl, run_dir, 800, val_every=50)


@fault("f4-label-smoothing-1.0", {"over-regularization"},
       "CrossEntropyLoss(label_smoothing=1.0) (the config's '10' percent read as a fraction of 10): the target is "
       "the uniform distribution for every sample, the optimum is to predict nothing; the CNN learns nothing")
def _(run_dir):
    xtr, ytr, xva, yva = digits(images=True)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(small_cnn(c=16), adam(1e-3), label_smoothing=1.0)
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-tanh-output-on-unscaled-targets", {"saturated-activations"},
       "a regression head ending in nn.Tanh (from a template whose targets were scaled to [-1, 1]) on targets in "
       "raw units (mean 20, sd 8): the output pins at +1 in the tanh's flat tail, the gradient through it "
       "vanishes and the MSE stays enormous")
def _(run_dir):
    xtr, ytr, xva, yva = nonlinear_regression()
    ytr, yva = 20 + 8 * ytr, 20 + 8 * yva
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 32)
    module = Net(mlp([8, 128, 128, 1], out_act=nn.Tanh()), adam(1e-3), task="reg")
    return fit(module, train_dl, val_dl, run_dir, 1200, val_every=100)


class SignBugNet(Net):
    """training_step uses a hand-written 'NLL' that returns the log-likelihood (sign dropped); validation logs the
    proper cross-entropy."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.log_softmax(self(x), -1).gather(1, y[:, None]).mean()  # bug: should be negated
        self.log("train_loss", loss)
        return loss


@fault("f4-training-loss-sign-flipped-gradient-ascent", {"train-val-divergence", "validation-stalled"},
       "the hand-written training loss returns the mean log-likelihood instead of its negative: the optimizer "
       "maximises the loss it should minimise, the logged training loss falls without bound while the "
       "validation cross-entropy climbs and accuracy drops below chance")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = SignBugNet(mlp([20, 128, 128, 5]), adam(1e-3))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


@fault("f4-features-in-wrong-units-1e-3-sgd", {"vanishing-gradients", "no-progress", "update-too-small"},
       "features converted with the wrong unit factor (x 1e-3, millimetres read as metres) after standardisation: "
       "the first layer's inputs and so its weight gradients are 1000x smaller than the rest's; with momentum SGD "
       "the first layer never learns and the net sees (almost) constant hidden features")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr * 1e-3, ytr, xva * 1e-3, yva, 64)
    module = Net(mlp([20, 128, 128, 5]), sgd(0.05, 0.9))
    return fit(module, train_dl, val_dl, run_dir, 1200, val_every=100)


@fault("f4-dying-relu-adam-lr-0.1", {"dead-units", "update-too-large"},
       "Adam at lr 0.1 (meant 1e-3) on a 3-hidden-layer ReLU MLP: the first updates move every weight by ~0.1, "
       "throw the pre-activations negative and kill ~99% of the units of the 2nd and 3rd layers; the loss stalls "
       "far above the twin's (val acc 0.33 vs ~0.87 at lr 1e-3; AUTOTRAINER's dying ReLU). Changed before any result was seen: the first version "
       "(plain SGD at lr 3) went to NaN instead of killing units")
def _(run_dir):
    xtr, ytr, xva, yva = classif(n=6000, d=20, k=5, informative=10, sep=1.2)
    train_dl, val_dl = loaders(xtr, ytr, xva, yva, 64)
    module = Net(mlp([20, 256, 256, 256, 5]), adam(0.1))
    return fit(module, train_dl, val_dl, run_dir, 1000, val_every=100)


def main(argv=None):
    run_suite("fresh_suite4", __doc__, "fresh4_runs", [400, 401], argv)


if __name__ == "__main__":
    main()
