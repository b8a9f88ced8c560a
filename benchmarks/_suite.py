"""What the held-out suites (``fresh_suite.py``, ``fresh_suite2.py``, ``fresh_suite3.py``) share: the run
registry, the loaders and the ``Net``/``LM`` modules of suites 2-3 (each suite's runs, models and data stay its
own), training each run x seed in a worker process, evaluating it with the default pack, the table and the
summary. A suite module defines
``RUNS, healthy, fault = registry(SUITE_VERSION)``, its runs (``@healthy(...)`` / ``@fault(name, expected)`` on a
``build(run_dir) -> info`` function) and calls ``main(module name, __doc__, default out dir, default seeds)``."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class Spec:
    name: str
    healthy: bool
    build: Callable
    expected: frozenset = frozenset()
    note: str = ""
    ok_ratio: float = 0.6          # healthy: final val loss <= ok_ratio x initial, or
    ok_acc: float | None = None    # ... final val accuracy >= ok_acc
    extra: dict = field(default_factory=dict)
    version: int = 1               # the suite's version: a new one retrains every run

    def digest(self):
        src = inspect.getsource(self.build)
        blob = json.dumps([self.version, self.name, src, sorted(self.expected), self.ok_ratio, self.ok_acc],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def registry(version: int = 1):
    """A suite's run registry and its two decorators: ``RUNS, healthy, fault = registry(SUITE_VERSION)``."""
    runs: dict[str, Spec] = {}

    def healthy(name, note="", ok_ratio=0.6, ok_acc=None):
        def deco(fn):
            runs[name] = Spec(name, True, fn, frozenset(), note, ok_ratio, ok_acc, version=version)
            return fn
        return deco

    def fault(name, expected, note=""):
        def deco(fn):
            runs[name] = Spec(name, False, fn, frozenset(expected), note, version=version)
            return fn
        return deco

    return runs, healthy, fault


# ----------------------------------------------------------------------------------------- fitting, evaluation
@torch.no_grad()
def val_metrics(module, loader):
    was = module.training
    module.eval()
    tot, cor, n, has_acc = 0.0, 0.0, 0, False
    for b in loader:
        loss, c, k = module.shared_step(b)
        tot += float(loss) * k
        n += k
        if c is not None:
            cor += float(c)
            has_acc = True
    module.train(was)
    return tot / n, (cor / n if has_acc else None)


def fit(module, train_dl, val_dl, run_dir, steps, val_every=None, **trainer_kw):
    """Train under the monitor at its default options; returns the val loss/accuracy before and after."""
    from dyncheck import DynamicsMonitor
    l0, a0 = val_metrics(module, val_dl)
    kw = dict(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False)
    if val_every is not None:
        kw.update(val_check_interval=val_every, check_val_every_n_epoch=None)
    kw.update(trainer_kw)
    trainer = pl.Trainer(callbacks=[DynamicsMonitor(dirpath=str(run_dir))], **kw)
    trainer.fit(module, train_dl, val_dl)
    l1, a1 = val_metrics(module, val_dl)
    return {"val_loss_0": l0, "val_loss": l1, "val_acc_0": a0, "val_acc": a1, "steps": int(trainer.global_step)}


# ------------------------------------------------------------------------------- data and modules the suites share
def loaders(xtr, ytr, xva, yva, bs, shuffle=True, val_bs=512):
    return (DataLoader(TensorDataset(xtr, ytr), batch_size=bs, shuffle=shuffle, drop_last=len(xtr) > bs),
            DataLoader(TensorDataset(xva, yva), batch_size=val_bs))


# ------------------------------------------------------------------------------- helpers the suites' runs share
def tensors(x, y, ydtype=torch.long):
    """Arrays as (float32 features, ``ydtype`` targets) tensors."""
    return torch.tensor(np.asarray(x), dtype=torch.float32), torch.tensor(np.asarray(y), dtype=ydtype)


def mlp(sizes, act=nn.ReLU, dropout=0.0, bn=False, final=None):
    """Linear layers of ``sizes``, each hidden one followed by [BatchNorm1d], ``act()`` [and Dropout]; ``final``:
    a module after the last layer."""
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            if bn:
                layers.append(nn.BatchNorm1d(sizes[i + 1]))
            layers.append(act())
            if dropout:
                layers.append(nn.Dropout(dropout))
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


def adam(lr, **kw):
    return lambda p: torch.optim.Adam(p, lr=lr, **kw)


def adamw(lr, **kw):
    return lambda p: torch.optim.AdamW(p, lr=lr, **kw)


def sgd(lr, momentum=0.0, **kw):
    # (momentum may be positional: suite 4 calls sgd(0.05, 0.9))
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, **kw)


class Net(pl.LightningModule):
    """A model plus a loss; ``opt_fn(params) -> optimizer`` and ``sched_fn(opt) -> Lightning scheduler dict``."""

    def __init__(self, model, opt_fn, sched_fn=None, task="cls", label_smoothing=0.0, loss_fn=None):
        super().__init__()
        self.model, self.opt_fn, self.sched_fn = model, opt_fn, sched_fn
        self.task, self.ls, self.loss_fn = task, label_smoothing, loss_fn

    def forward(self, x):
        return self.model(x)

    def compute_loss(self, out, y):
        if self.loss_fn is not None:
            return self.loss_fn(out, y)
        if self.task == "cls":
            return F.cross_entropy(out, y, label_smoothing=self.ls)
        return F.mse_loss(out, y)

    def shared_step(self, batch):
        x, y = batch
        out = self(x)
        loss = self.compute_loss(out, y)
        if self.task == "cls":
            return loss, (out.argmax(-1) == y).sum(), len(y)
        return loss, None, len(y)

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.shared_step(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, c, n = self.shared_step(batch)
        self.log("val_loss", loss)
        if c is not None:
            self.log("val_acc", c / n)

    def optim_params(self):
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        opt = self.opt_fn(self.optim_params())
        if self.sched_fn is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.sched_fn(opt)}


class LM(Net):
    """Next-token prediction on (B, T+1) token tensors; ``model(tokens) -> logits``."""

    def __init__(self, model, opt_fn, sched_fn=None):
        super().__init__(model, opt_fn, sched_fn, task="lm")

    def shared_step(self, batch):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        inp, tgt = x[:, :-1], x[:, 1:]
        logits = self(inp)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        return loss, (logits.argmax(-1) == tgt).float().mean() * len(x), len(x)


# ------------------------------------------------------------------------------------------------------ running
def _quiet():
    import logging
    warnings.filterwarnings("ignore")
    for n in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "transformers"):
        logging.getLogger(n).setLevel(logging.ERROR)


def _runs(suite: str) -> dict[str, Spec]:
    """The registry of the suite module ``suite`` (imported by name: in a spawned worker too)."""
    return importlib.import_module(suite).RUNS


def train_one(suite: str, name: str, seed: int, out: str) -> dict:
    """Worker: train one run x seed into out/name/seed<seed>/ (stdout/stderr to train.log there)."""
    spec = _runs(suite)[name]
    run_dir = Path(out) / name / f"seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    torch.set_num_threads(1)
    _quiet()
    log = open(run_dir / "train.log", "w")
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    t0 = time.time()
    info = {"name": name, "seed": seed, "digest": spec.digest()}
    try:
        pl.seed_everything(seed, verbose=False)
        info.update(spec.build(run_dir))
    except Exception as e:  # a crashed run is still evaluated on what it recorded
        import traceback
        traceback.print_exc()
        info["error"] = f"{type(e).__name__}: {e}"
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        log.close()
    info["wall_s"] = round(time.time() - t0, 1)
    (run_dir / "train_info.json").write_text(json.dumps(info, indent=1, default=float))
    return info


def is_current(runs: dict, out: Path, name: str, seed: int) -> bool:
    d = out / name / f"seed{seed}"
    try:
        info = json.loads((d / "train_info.json").read_text())
    except (OSError, ValueError):
        return False
    from dyncheck.store import STORE_FILENAME
    return info.get("digest") == runs[name].digest() and (d / STORE_FILENAME).exists()


def trained_ok(spec: Spec, info: dict):
    l0, l1, acc = info.get("val_loss_0"), info.get("val_loss"), info.get("val_acc")
    if l1 is None or not np.isfinite(l1):
        return False
    if spec.ok_acc is not None and acc is not None and acc >= spec.ok_acc:
        return True
    return l0 is not None and l1 <= spec.ok_ratio * l0


def evaluate_one(runs: dict, out: Path, name: str, seed: int) -> dict:
    from dyncheck.checks.engine import evaluate
    from dyncheck.checks.rules import load_rules
    from dyncheck.store import STORE_FILENAME
    spec = runs[name]
    d = out / name / f"seed{seed}"
    try:
        info = json.loads((d / "train_info.json").read_text())
    except (OSError, ValueError):
        info = {}
    row = {"name": name, "seed": seed, "healthy": spec.healthy, "expected": sorted(spec.expected),
           "val_loss_0": info.get("val_loss_0"), "val_loss": info.get("val_loss"),
           "val_acc_0": info.get("val_acc_0"), "val_acc": info.get("val_acc"), "wall_s": info.get("wall_s"),
           "error": info.get("error"), "trained_ok": trained_ok(spec, info)}
    try:
        res = evaluate(d / STORE_FILENAME, load_rules(["default"]))
    except Exception as e:
        row.update(alarms=[], diagnoses=[], info=[], eval_error=f"{type(e).__name__}: {e}")
        return row
    row["alarms"] = sorted({f.check for f in res.findings if f.severity in ("error", "warning")})
    row["info"] = sorted({f.check for f in res.findings if f.severity == "info"})
    row["diagnoses"] = [dg.check for dg in res.diagnoses if dg.severity in ("error", "warning")]
    row["run_status"] = res.run_status
    if not spec.healthy:
        row["diagnosed"] = bool(set(row["alarms"]) & spec.expected)
        row["first_correct"] = bool(row["diagnoses"]) and row["diagnoses"][0] in spec.expected
    return row


def _f(v, nd=3):
    return "-" if v is None else f"{v:.{nd}g}" if isinstance(v, float) else str(v)


def summarize(rows: list[dict]) -> dict:
    h = [r for r in rows if r["healthy"]]
    f = [r for r in rows if not r["healthy"]]
    per_check: dict[str, int] = {}
    for r in h:
        for c in r["alarms"]:
            per_check[c] = per_check.get(c, 0) + 1
    n_diag = [len(r["diagnoses"]) for r in f]
    return {
        "healthy_runs": len(h), "healthy_trained_ok": sum(r["trained_ok"] for r in h),
        "healthy_with_alarm": sum(bool(r["alarms"]) for r in h),
        "false_alarms": [f"{r['name']}/seed{r['seed']}: {','.join(r['alarms'])}" for r in h if r["alarms"]],
        "false_alarms_per_check": dict(sorted(per_check.items(), key=lambda kv: -kv[1])),
        "fault_runs": len(f), "faults_diagnosed": sum(r.get("diagnosed", False) for r in f),
        "faults_first_diagnosis_correct": sum(r.get("first_correct", False) for r in f),
        "faults_silent": sum(not r["alarms"] for r in f),
        "misses": [f"{r['name']}/seed{r['seed']}: alarms {','.join(r['alarms']) or '-'}" for r in f
                   if not r.get("diagnosed")],
        "diagnoses_per_fault": {"mean": float(np.mean(n_diag)) if n_diag else None,
                                "histogram": {str(k): n_diag.count(k) for k in sorted(set(n_diag))}},
    }


def print_table(rows, summary):
    print(f"\n{'run':42s} {'seed':>4s} {'kind':7s} {'ok':3s} {'val loss 0->end':>17s} {'acc':>5s}  "
          f"alarms | diagnoses (root first)")
    for r in rows:
        kind = "healthy" if r["healthy"] else "FAULT"
        if r["healthy"]:
            ok = "ok" if r["trained_ok"] else "BAD"
            mark = "" if not r["alarms"] else "  <- FALSE ALARM"
        else:
            ok = ""
            mark = ("  [diagnosed" + (", first correct]" if r.get("first_correct") else ", first wrong]")
                    if r.get("diagnosed") else "  <- MISS") + f"  expected {{{','.join(r['expected'])}}}"
        vl = f"{_f(r['val_loss_0'])}->{_f(r['val_loss'])}"
        acc = "-" if r["val_acc"] is None else f"{r['val_acc']:.2f}"
        err = f" ERROR {r['error']}" if r.get("error") else ""
        print(f"{r['name']:42s} {r['seed']:>4d} {kind:7s} {ok:3s} {vl:>17s} {acc:>5s}  "
              f"{','.join(r['alarms']) or '-'} | {' > '.join(r['diagnoses']) or '-'}{mark}{err}")
    s = summary
    print("\nSUMMARY")
    print(f"  healthy: {s['healthy_runs']} run x seeds, trained ok {s['healthy_trained_ok']}, "
          f"with any alarm (false alarm) {s['healthy_with_alarm']}")
    print(f"  false alarms per check: {s['false_alarms_per_check'] or '-'}")
    print(f"  faults: {s['fault_runs']} run x seeds, diagnosed (an expected id among the alarms) "
          f"{s['faults_diagnosed']}, first diagnosis correct {s['faults_first_diagnosis_correct']}, "
          f"silent {s['faults_silent']}")
    print(f"  diagnoses per fault: mean {_f(s['diagnoses_per_fault']['mean'])}, "
          f"histogram {s['diagnoses_per_fault']['histogram']}")
    for m in s["misses"]:
        print(f"  miss: {m}")


def main(suite: str, doc: str, out: str, seeds: list[int], argv=None):
    """The command line of a suite: train what is not current, evaluate every run, print and write the summary."""
    RUNS = _runs(suite)
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=out)
    ap.add_argument("--seeds", type=int, nargs="+", default=seeds)
    ap.add_argument("--only", nargs="+", default=None, help="run names (or prefixes)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--no-train", action="store_true", help="evaluate what DIR holds, train nothing")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    if a.list:
        for s in RUNS.values():
            print(f"{s.name:42s} {'healthy' if s.healthy else 'FAULT  '} {','.join(sorted(s.expected)):60s} {s.note}")
        return
    names = [n for n in RUNS if a.only is None or any(n == o or n.startswith(o) for o in a.only)]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(n, s) for n in names for s in a.seeds if not a.no_train and not is_current(RUNS, out, n, s)]
    if todo:
        import multiprocessing as mp
        print(f"training {len(todo)} run x seeds ({len(names) * len(a.seeds) - len(todo)} current, skipped), "
              f"{a.jobs} job(s)", flush=True)
        t0 = time.time()
        with ProcessPoolExecutor(max_workers=a.jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(train_one, suite, n, s, str(out)): (n, s) for n, s in todo}
            for fu in as_completed(futs):
                n, s = futs[fu]
                try:
                    info = fu.result()
                    print(f"  trained {n}/seed{s} in {info['wall_s']}s"
                          + (f"  ERROR {info['error']}" if info.get("error") else ""), flush=True)
                except Exception as e:
                    print(f"  FAILED {n}/seed{s}: {type(e).__name__}: {e}", flush=True)
        print(f"training took {time.time() - t0:.0f}s", flush=True)
    _quiet()
    rows = [evaluate_one(RUNS, out, n, s) for n in names for s in a.seeds
            if (out / n / f"seed{s}" / "train_info.json").exists()]
    summary = summarize(rows)
    print_table(rows, summary)
    (out / "summary.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=1, default=float))
    print(f"\nwrote {out / 'summary.json'}")
