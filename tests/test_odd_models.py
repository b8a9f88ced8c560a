"""The monitor never breaks training: odd models through real Trainers.

Every model here trains without the monitor (checked by the plain run of each case). With the monitor, each must
(a) finish, (b) train bit for bit as without it (same seed: final parameters, buffers and per-step losses), and
(c) record what can be measured -- against brute-force references -- while what cannot is turned off with one
warning and listed in the run's meta under ``measurement_errors`` (and in the report).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dyncheck import DynamicsMonitor, open_run
from dyncheck.errors import ConfigError, MeasureError
from dyncheck.measure.activations import ActivationRecorder, activation_stats, select_modules
from dyncheck.measure.tensors import NormPlan, nonfinite_counts, tensor_norms, update_ratios
from dyncheck.report import render_report
from dyncheck.store import RunWriter
from models import trainer

N, BATCH = 48, 8  # 6 optimizer steps per epoch


def _ref_norm(t: torch.Tensor) -> float:
    """The obvious way: densify, complex -> (real, imag) pairs, float64."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    return float(torch.linalg.vector_norm(t.double()))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bit pattern (NaN compares equal to the same NaN)."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
    return t.contiguous().view(ints[t.element_size()])


class Reference(pl.Callback):
    """Records, read-only, the gradient and weight norms (step -> {name: norm}) and the losses."""

    def __init__(self):
        self.grad, self.weight = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grad[self.step] = {n: _ref_norm(p.grad) for n, p in pl_module.named_parameters()
                                if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weight[self.step] = {n: _ref_norm(p) for n, p in pl_module.named_parameters() if p.requires_grad}


class _Base(pl.LightningModule):
    lr = 0.1

    def __init__(self):
        super().__init__()
        self.losses: list[torch.Tensor] = []  # of the real training steps (not of the monitor's probes)
        self._live = False

    def on_train_batch_start(self, batch, batch_idx):
        self._live = True  # after the callbacks' hook, where the sharpness probe runs training_step

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._live = False

    def keep(self, loss):
        if self._live:
            self.losses.append(loss.detach().clone())

    def data(self):
        g = torch.Generator().manual_seed(1)
        return TensorDataset(torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g))

    def forward(self, x):
        return self.net(x)

    def loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.keep(loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


# -- the odd models -----------------------------------------------------------------------------------------------
class SparseEmbedding(_Base):
    """nn.Embedding(sparse=True): sparse gradients (SGD supports them). The Hessian probe cannot handle them."""

    lr = 0.5
    expected_errors = [("sharpness", None)]

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 8, sparse=True)
        self.head = nn.Linear(8, 3)

    def data(self):
        g = torch.Generator().manual_seed(1)
        return TensorDataset(torch.randint(0, 30, (N, 5), generator=g), torch.randint(0, 3, (N,), generator=g))

    def forward(self, tokens):
        return self.head(self.emb(tokens).mean(1))


class Float64(_Base):
    """The whole model and its data in float64 (precision='64-true')."""

    expected_errors: list = []
    trainer_kw = {"precision": "64-true"}

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


class MixedPrecisionLayers(_Base):
    """A float64 layer between float32 ones."""

    expected_errors: list = []

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 16).double()
        self.act = nn.Tanh()
        self.c = nn.Linear(16, 3)

    def forward(self, x):
        return self.c(self.act(self.b(self.a(x).double())).float())


class ComplexLinear(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.w = nn.Parameter(0.3 * torch.randn(n_in, n_out, dtype=torch.cfloat))

    def forward(self, x):  # a complex matmul, returned as (real, imag) features
        return torch.view_as_real(x.to(torch.cfloat) @ self.w).flatten(1)


class ComplexParameter(_Base):
    """A complex weight. Its norms are real 2-norms; the Hessian probe works on real parameters only."""

    expected_errors = [("sharpness", None), ("ntk", None)]  # the NTK too, for the same reason

    def __init__(self):
        super().__init__()
        self.cl = ComplexLinear(6, 5)
        self.act = nn.Tanh()
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        return self.head(self.act(self.cl(x)))


class NoTrainableManual(_Base):
    """Every parameter frozen; manual optimization with an optimizer over an empty param group. (A frozen model
    with automatic optimization does not train without the monitor either: its loss has no grad_fn.)"""

    expected_errors = [("sharpness", None), ("ntk", None)]  # the NTK too, for the same reason
    monitor_kw = {"sharpness_loss_fn": lambda module, batch: module.loss(batch)}

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Linear(6, 3).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.keep(loss)
        self.optimizers().step()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return torch.optim.SGD([{"params": []}], lr=0.1)


class NoOptimizer(_Base):
    """Every parameter frozen, configure_optimizers returns None, training_step logs its loss and returns None."""

    expected_errors = [("sharpness", None), ("ntk", None)]  # the NTK too, for the same reason

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(6, 3).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.keep(loss)
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return None


class Pair(nn.Module):
    """A leaf module returning a tuple: an integer tensor first, then a float one."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 6) / 6 ** 0.5)
        self.bias = nn.Parameter(torch.zeros(16))
        self.means: list[float] = []

    def forward(self, x):
        h = nn.functional.linear(x, self.weight, self.bias)
        if self.training_live:
            self.means.append(float(h.detach().double().mean()))
        return h.argmax(1), h


class DictOut(nn.Module):
    def forward(self, h):
        return {"mask": h > 0, "h": torch.relu(h)}


class DictAndTupleOutputs(_Base):
    """forward returns a dict; sub-modules return a tuple (long first) and a dict (bool first); training_step
    returns a dict with more than the loss."""

    expected_errors: list = []

    def __init__(self):
        super().__init__()
        self.pair = Pair()
        self.pair.training_live = False
        self.dict_out = DictOut()
        self.head = nn.Linear(16, 3)

    def on_train_batch_start(self, batch, batch_idx):
        super().on_train_batch_start(batch, batch_idx)
        self.pair.training_live = True

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.pair.training_live = False

    def forward(self, x):
        idx, h = self.pair(x)
        return {"logits": self.head(self.dict_out(h)["h"]), "idx": idx}

    def loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self(x)["logits"], y)

    def training_step(self, batch, batch_idx):
        return {"loss": super().training_step(batch, batch_idx), "extra": (1, "two")}


class UnusedParameters(_Base):
    """A parameter never used, and a layer used on odd batches only (no gradient on the others)."""

    expected_errors: list = []

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(6, 3)
        self.sometimes = nn.Linear(6, 3)
        self.unused = nn.Parameter(torch.ones(4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x) + (self.sometimes(x) if batch_idx % 2 else 0)
        loss = nn.functional.cross_entropy(out, y)
        self.keep(loss)
        return loss


class NaNBatch(_Base):
    """One batch (the third) holds a NaN input: the loss, gradients and then the weights are NaN."""

    expected_errors: list = []

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def data(self):
        x, y = super().data().tensors
        x = x.clone()
        x[2 * BATCH + 1, 3] = float("nan")
        return TensorDataset(x, y)


class GrowingModel(_Base):
    """A parameter created at step 3 (in on_train_batch_start) and added to the optimizer as a new param group."""

    expected_errors: list = []

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(6, 3)

    def on_train_batch_start(self, batch, batch_idx):
        super().on_train_batch_start(batch, batch_idx)
        if self.global_step == 3 and not hasattr(self, "extra"):
            self.extra = nn.Parameter(torch.zeros(3))
            self.trainer.optimizers[0].add_param_group({"params": [self.extra], "lr": 0.05})

    def forward(self, x):
        out = self.net(x)
        return out + self.extra if hasattr(self, "extra") else out


def _fresh_scripted_encoder() -> torch.jit.ScriptModule:
    """A scripted module of a class of its own: TorchScript's profiling executor specialises a compiled class's
    graphs by its call history, shared by every instance in the process, so two fits of instances of one class
    would not run the same kernels (a new class per model keeps fits independent)."""

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 16)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.lin(x))

    return torch.jit.script(Encoder())


class ScriptedSubmodule(_Base):
    """A TorchScript sub-module: TorchScript modules take no forward hooks, so their activations are off. The
    sharpness probe runs TorchScript unoptimised, so that its forward does not advance the executor's profiling
    (with it, training after the first probe would differ in the last bits)."""

    expected_errors = [("activations", "enc.lin"), ("activations", "enc.act")]

    def __init__(self):
        super().__init__()
        self.enc = _fresh_scripted_encoder()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(x))


class NoNumericLR(_Base):
    """transformers' Adafactor with relative steps: its learning rate is None (computed inside the step)."""

    expected_errors = [("lr", "lr/Adafactor/pg0")]

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def configure_optimizers(self):
        from transformers.optimization import Adafactor

        return Adafactor(self.parameters(), lr=None, relative_step=True, scale_parameter=True, warmup_init=False)


CASES = [SparseEmbedding, Float64, MixedPrecisionLayers, ComplexParameter, NoTrainableManual, NoOptimizer,
         DictAndTupleOutputs, UnusedParameters, NaNBatch, GrowingModel, ScriptedSubmodule, NoNumericLR]


def _fit(tmp_path, cls, monitored: bool):
    """Train a fresh model (seed 0) for one epoch; returns the model, the reference, the dyncheck warnings and
    (monitored) the run."""
    pl.seed_everything(0)
    model = cls()
    ref = Reference()
    cbs: list = [ref]
    run_dir = tmp_path / ("run" if monitored else "plain")
    if monitored:
        kw = {"every_n_steps": 1, "activations_every_n_steps": 1, "sharpness_every_n_steps": 2,
              **getattr(cls, "monitor_kw", {})}
        cbs.insert(0, DynamicsMonitor(dirpath=run_dir, **kw))
    t = trainer(run_dir, cbs, max_epochs=1, **getattr(cls, "trainer_kw", {}))
    loader = DataLoader(model.data(), batch_size=BATCH)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(model, loader)
    ours = [str(w.message) for w in caught if str(w.message).startswith("dyncheck")]
    model.other_warnings = {str(w.message) for w in caught if not str(w.message).startswith("dyncheck")}
    return model, ref, ours, (open_run(run_dir) if monitored else None)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Each case trained twice, without and with the monitor (once per module: several tests read them)."""
    cache: dict = {}

    def get(cls):
        if cls not in cache:
            if cls is NoNumericLR:
                pytest.importorskip("transformers")
            tmp = tmp_path_factory.mktemp(cls.__name__)
            plain = _fit(tmp, cls, monitored=False)  # must train without the monitor: else it is not a case
            cache[cls] = (plain, _fit(tmp, cls, monitored=True))
        return cache[cls]

    return get


@pytest.mark.parametrize("cls", CASES, ids=lambda c: c.__name__)
def test_fit_completes_and_training_is_bit_identical(fitted, cls):
    (plain, _, plain_warnings, _), (model, _, ours, run) = fitted(cls)
    assert run.meta["status"] == "finished" and run.meta["exception"] is None
    assert not plain_warnings
    assert model.other_warnings <= plain.other_warnings  # no warning of torch's or Lightning's from the monitor
    assert len(model.losses) == len(plain.losses) == N // BATCH
    for a, b in zip(model.losses, plain.losses):
        assert torch.equal(_bits(a), _bits(b))
    sd, sd_plain = model.state_dict(), plain.state_dict()
    assert sd.keys() == sd_plain.keys()
    for k in sd:
        assert sd[k].dtype == sd_plain[k].dtype and torch.equal(_bits(sd[k]), _bits(sd_plain[k])), k


@pytest.mark.parametrize("cls", CASES, ids=lambda c: c.__name__)
def test_what_cannot_be_measured_is_turned_off_with_one_warning(fitted, cls):
    _, (_, _, ours, run) = fitted(cls)
    errors = run.meta["measurement_errors"]
    got = [(e["measurement"], e.get("metric", e.get("layer"))) for e in errors]
    assert got == cls.expected_errors
    for e in errors:
        assert set(e) <= {"measurement", "metric", "layer", "error", "message", "step"}
        assert e["error"] and e["message"] and isinstance(e["step"], int)
    # one warning per failure found (modules found at once share one), none otherwise
    assert len(ours) == len({(e["measurement"], e["step"]) for e in errors}), ours
    html = (run.dir / "report.html").read_text(encoding="utf-8")
    assert ('id="measurement-errors"' in html) == bool(errors)
    for e in errors:
        assert e["measurement"] in html and (e.get("metric") or e.get("layer") or "") in html


def _series(run, name):
    s = run.series(name)
    return dict(zip(s.steps.tolist(), s.values.tolist()))


def _assert_norms_match(run, ref, rtol):
    """grad_norm/<p> and grad_norm/total at every step, weight_norm/<p> at every step, against the reference."""
    for step, grads in ref.grad.items():
        for name, value in grads.items():
            assert _series(run, f"grad_norm/{name}")[step] == pytest.approx(value, rel=rtol), (step, name)
        total = math.sqrt(sum(v * v for v in grads.values()))
        assert _series(run, "grad_norm/total")[step] == pytest.approx(total, rel=rtol)
    for step, weights in ref.weight.items():
        for name, value in weights.items():
            assert _series(run, f"weight_norm/{name}")[step] == pytest.approx(value, rel=rtol, nan_ok=True)


def test_sparse_gradients_measured_as_the_dense_gradient(fitted):
    _, (model, ref, ours, run) = fitted(SparseEmbedding)
    _assert_norms_match(run, ref, 1e-5)
    assert set(_series(run, "grad_norm/emb.weight")) == set(range(6))
    assert set(_series(run, "grad_nonfinite/emb.weight").values()) == {0.0}
    assert all(v > 0 for v in _series(run, "update_ratio/emb.weight").values())
    assert "act/mean/head" in run and run.metrics("act/*/emb") == []  # embeddings are not hooked
    (err,) = run.meta["measurement_errors"]
    assert err["step"] == 0 and "sparse" in err["message"]
    assert run.metrics("sharpness/*") == []


@pytest.mark.parametrize("cls", [Float64, MixedPrecisionLayers])
def test_float64_measured_in_float64(fitted, cls):
    _, (model, ref, ours, run) = fitted(cls)
    # float32 arithmetic would be off by ~1e-7: the float64 parameters are measured in float64 end to end
    doubles = {n for n, p in model.named_parameters() if p.dtype == torch.float64}
    assert doubles
    for step, grads in ref.grad.items():
        for name, value in grads.items():
            rtol = 1e-12 if name in doubles else 1e-5
            assert _series(run, f"grad_norm/{name}")[step] == pytest.approx(value, rel=rtol)
    _assert_norms_match(run, ref, 1e-5)
    assert run.metrics("sharpness/top_eig") == ["sharpness/top_eig"]  # the probe handles float64
    assert run.metrics("act/mean/*") == sorted(f"act/mean/{n}" for n, _ in select_modules(model))


def test_complex_parameter_norms_are_real_2_norms(fitted):
    _, (model, ref, ours, run) = fitted(ComplexParameter)
    _assert_norms_match(run, ref, 1e-5)
    assert all(0 < v < 1 for v in _series(run, "update_ratio/cl.w").values())
    assert _series(run, "weight_unchanged/cl.w")[5] == 0.0
    assert "act/mean/cl" in run  # its output is real
    for err in run.meta["measurement_errors"]:  # sharpness and the NTK
        assert err["error"] == "MeasureError" and "complex" in err["message"] and "cl.w" in err["message"]
    assert run.metrics("sharpness/*") == [] and "complex" in ours[0]


@pytest.mark.parametrize("cls", [NoTrainableManual, NoOptimizer])
def test_no_trainable_parameters(fitted, cls):
    _, (model, ref, ours, run) = fitted(cls)
    assert run.metrics("grad_norm/*") == [] and run.metrics("weight_norm/*") == []
    losses = _series(run, "loss/train")  # the logged train_loss on measuring steps
    assert len(losses) == 6
    np.testing.assert_allclose(list(losses.values()), [float(v) for v in model.losses], rtol=1e-6)
    assert "act/mean/net" in run
    assert "no trainable parameters" in run.meta["measurement_errors"][0]["message"]


def test_dict_and_tuple_outputs(fitted):
    _, (model, ref, ours, run) = fitted(DictAndTupleOutputs)
    # the first floating-point tensor of each output: the tuple's second item, the dict's "h"
    got = _series(run, "act/mean/pair")
    np.testing.assert_allclose([got[s] for s in range(6)], model.pair.means, rtol=1e-5)
    assert "act/dead/dict_out" in run and "act/mean/head" in run
    _assert_norms_match(run, ref, 1e-5)
    assert len(_series(run, "loss/train")) == 6


def test_unused_parameters(fitted):
    _, (model, ref, ours, run) = fitted(UnusedParameters)
    _assert_norms_match(run, ref, 1e-5)
    assert run.metrics("grad_norm/unused") == []
    assert sorted(_series(run, "grad_norm/sometimes.weight")) == [1, 3, 5]  # the steps it had a gradient
    assert set(_series(run, "weight_unchanged/unused").values()) == {1.0}
    assert run.meta["unchanged_parameters"] == ["unused"]


def test_nan_batch_is_recorded(fitted):
    _, (model, ref, ours, run) = fitted(NaNBatch)
    loss = _series(run, "loss/train")
    assert all(math.isfinite(loss[s]) for s in (0, 1)) and all(math.isnan(loss[s]) for s in (2, 3, 4, 5))
    assert _series(run, "grad_nonfinite/net.0.weight")[1] == 0 and _series(run, "grad_nonfinite/net.0.weight")[2] > 0
    assert _series(run, "act/nonfinite/net.0")[2] == 16  # one sample's 16 outputs
    assert math.isnan(_series(run, "grad_norm/total")[2])
    assert math.isnan(_series(run, "weight_norm/net.0.weight")[5])


def test_parameters_added_mid_fit(fitted):
    _, (model, ref, ours, run) = fitted(GrowingModel)
    _assert_norms_match(run, ref, 1e-5)
    assert sorted(_series(run, "grad_norm/extra")) == [3, 4, 5]
    assert sorted(_series(run, "weight_norm/extra")) == [3, 4, 5]
    assert set(_series(run, "weight_unchanged/extra").values()) == {0.0}  # changed by its first step
    assert sorted(_series(run, "update_ratio/extra")) == [3, 4, 5]
    assert math.isnan(_series(run, "update_ratio/extra")[3])  # ||w|| = 0 before its first update
    assert sorted(_series(run, "lr/SGD/pg1")) == [4, 5] and set(_series(run, "lr/SGD/pg1").values()) == {0.05}


def test_scripted_submodule_activations_off_the_rest_measured(fitted):
    _, (model, ref, ours, run) = fitted(ScriptedSubmodule)
    _assert_norms_match(run, ref, 1e-5)
    assert run.metrics("act/*/enc*") == [] and "act/mean/head" in run
    assert len(ours) == 1 and "enc.lin" in ours[0] and "enc.act" in ours[0]
    assert run.metrics("sharpness/top_eig") == ["sharpness/top_eig"]


def test_optimizer_without_numeric_lr(fitted):
    _, (model, ref, ours, run) = fitted(NoNumericLR)
    assert run.metrics("lr/*") == []
    (err,) = run.meta["measurement_errors"]
    assert err["error"] == "TypeError" and err["step"] == 0
    _assert_norms_match(run, ref, 1e-5)


# -- the measurements alone ---------------------------------------------------------------------------------------
def test_norm_plan_groups_dtypes_layouts_against_loop():
    g = torch.Generator().manual_seed(0)
    sparse = torch.sparse_coo_tensor([[0, 2, 2, 5]], torch.randn(4, generator=g), (7,))  # uncoalesced: 2 twice
    ts = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g, dtype=torch.float64),
          torch.randn(2, 3, generator=g, dtype=torch.cfloat), sparse, torch.randn(6, generator=g).half(),
          torch.randn(4, generator=g, dtype=torch.cdouble), torch.zeros(0)]
    got = tensor_norms(ts)
    assert got.dtype == torch.float64  # some tensor is float64
    np.testing.assert_allclose(got.numpy(), [_ref_norm(t) for t in ts], rtol=1e-6)
    assert not sparse.is_coalesced()  # measured, not changed
    f32 = tensor_norms(ts[:1] + ts[2:4])
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), [_ref_norm(t) for t in ts[:1] + ts[2:4]], rtol=1e-6)
    plan = NormPlan(ts)
    assert torch.equal(plan([t * 2 for t in ts]), 2 * got)  # reusable for tensors of the same make-up


def test_norm_plan_fast_path_is_one_foreach_norm(monkeypatch):
    ts = [torch.randn(3), torch.randn(2, 2).bfloat16(), torch.randn(4).half()]
    calls = []
    real = torch._foreach_norm
    monkeypatch.setattr(torch, "_foreach_norm", lambda *a, **k: calls.append(k) or real(*a, **k))
    NormPlan(ts)(ts)
    assert calls == [{"dtype": torch.float32}]
    calls.clear()
    mixed = ts + [torch.randn(2, dtype=torch.float64), torch.randn(3, dtype=torch.cfloat)]
    NormPlan(mixed)(mixed)
    assert sorted(map(str, calls)) == ["{'dtype': torch.float32}", "{}", "{}"]  # one call per dtype group


def test_norm_plan_probe_leaves_out_what_fails():
    class Odd(torch.Tensor):  # a tensor subclass whose norm kernel fails
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if "norm" in getattr(func, "__name__", ""):
                raise NotImplementedError("no norm for Odd")
            return super().__torch_function__(func, types, args, kwargs or {})

    ts = [torch.ones(4), torch.ones(3).as_subclass(Odd), torch.full((2,), 3.0)]
    plan, values, failures = NormPlan.probe(ts)
    assert [i for i, _ in failures] == [1] and isinstance(failures[0][1], NotImplementedError)
    assert plan.kept == (0, 2) and values.tolist() == [2.0, pytest.approx(math.sqrt(18))]
    assert plan(ts).tolist() == values.tolist()


def test_nonfinite_counts_and_update_ratios_of_odd_tensors():
    sparse = torch.sparse_coo_tensor([[0, 1, 1]], [float("nan"), 1.0, float("inf")], (4,))
    z = torch.tensor([1 + 1j, complex(float("nan"), 0.0), 2j])
    assert nonfinite_counts([sparse, z, torch.ones(2, dtype=torch.float64)]).tolist() == [2.0, 1.0, 0.0]
    before = [torch.tensor([3 + 4j]), torch.tensor([1.0, 0.0], dtype=torch.float64)]
    after = [torch.tensor([3 + 5j]), torch.tensor([1.0, 1.0], dtype=torch.float64)]
    r = update_ratios(before, after)
    assert r.dtype == torch.float64 and r.tolist() == [pytest.approx(0.2), pytest.approx(1.0)]


def test_activation_recorder_turns_off_what_it_cannot_measure():
    class Sparse(nn.Module):
        def forward(self, x):
            return x.to_sparse()

    class Complex(nn.Module):
        def forward(self, x):
            return x.to(torch.cfloat)

    model = nn.Sequential(nn.Linear(4, 4), Sparse(), nn.Identity())
    model2 = nn.Sequential(nn.Linear(4, 4).double(), nn.Tanh(), Complex())
    scripted = torch.jit.script(nn.Linear(4, 4))
    rec = ActivationRecorder(select_modules(model) + [(f"m2.{n}", m) for n, m in select_modules(model2)] +
                             [("scripted", scripted)])
    rec.attach()
    out = model(torch.randn(3, 4))  # never raises into the forward
    model2(torch.randn(3, 4, dtype=torch.float64))
    rec.detach()
    assert out.layout == torch.sparse_coo
    errors = dict(rec.take_errors())
    assert set(errors) == {"1", "m2.2", "scripted"} and rec.take_errors() == []
    assert isinstance(errors["1"], MeasureError) and isinstance(errors["m2.2"], MeasureError)
    names, values = rec.collect()["max"]
    assert names == ["act/max_abs/0", "act/max_abs/m2.0", "act/max_abs/m2.1"]
    assert values.dtype == torch.float64  # float64 outputs measured in float64 (the float32 one joins them)
    assert {n for n, _ in rec.modules} == {"0", "m2.0", "m2.1"}  # the others are not hooked again


def test_float64_activations_beyond_float32_range():
    x = torch.tensor([[1e200, -3e200], [0.0, 1.0]], dtype=torch.float64)
    st = activation_stats(x, 1)
    assert st.dtype == torch.float64
    assert st[2].item() == 3e200 and st[3].item() == 0  # in float32: inf, and counted as non-finite
    assert st[0].item() == pytest.approx(-0.5e200)


# -- the report ---------------------------------------------------------------------------------------------------
EVIL = "<script>alert(1)</script>"


def _store_with(tmp_path, errors):
    with RunWriter(tmp_path / "run.db") as w:
        s = np.arange(20)
        w.write({"loss/train": (s, np.exp(-s / 5.0)), "grad_norm/total": (s, np.ones(20))})
        w.set_meta(status="finished", started=1.7e9, duration_s=1.0, start_step=0, measurement_errors=errors)
    return tmp_path


def test_report_lists_measurement_errors_escaped(tmp_path):
    errors = [{"measurement": "sharpness", "error": "RuntimeError", "message": f"bad {EVIL}", "step": 3},
              {"measurement": "activations", "layer": f"enc.{EVIL}", "error": "RuntimeError",
               "message": "register_forward_hook is not supported on ScriptModules", "step": 0},
              "a bare string"]
    html = render_report(_store_with(tmp_path, errors), rules=None)
    notice = html.split('id="measurement-errors"', 1)[1].split("</div>", 1)[0]
    assert "3 measurements could not be taken and were turned off" in notice
    assert "<code>sharpness</code> (step 3): RuntimeError: bad &lt;script&gt;" in notice
    assert "<code>activations of enc.&lt;script&gt;alert(1)&lt;/script&gt;</code> (step 0)" in notice
    assert "a bare string" in notice and EVIL not in html


def test_report_caps_the_list_and_omits_the_notice_without_errors(tmp_path):
    errors = [{"measurement": "grad_norm", "metric": f"grad_norm/p{i}", "error": "E", "message": "m", "step": 0}
              for i in range(25)]
    html = render_report(_store_with(tmp_path / "a", errors), rules=None)
    assert "25 measurements could not be taken" in html and "grad_norm/p19" in html and "grad_norm/p20" not in html
    assert "and 5 more" in html
    for empty in ([], None):
        assert 'id="measurement-errors"' not in render_report(_store_with(tmp_path / str(empty), empty), rules=None)


# -- argument validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"activation_modules": 5}, r"DynamicsMonitor\(activation_modules=5\): expected a list of glob patterns"),
    ({"activation_modules": ["a", 3]}, r"DynamicsMonitor\(activation_modules=\['a', 3\]\): expected a list"),
    ({"every_n_step": 3}, r"^DynamicsMonitor\(\) got an unexpected keyword argument 'every_n_step'; "
                          r"did you mean 'every_n_steps'\?$"),
    ({"sharpnes_budget": 0.1}, r"did you mean 'sharpness_budget'\?"),
    ({"zzz": 1}, r"unexpected keyword argument 'zzz'; expected one of: dirpath, every_n_steps"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        DynamicsMonitor(**kwargs)
    # a wrong call shape is also the TypeError Python raises for one
    assert isinstance(info.value, TypeError) == any(k not in ("activation_modules",) for k in kwargs)


def test_positional_argument_is_a_config_error():
    with pytest.raises(ConfigError, match=r"DynamicsMonitor\(\) takes keyword arguments only, got 1 positional "
                                          r"argument \('runs'\)"):
        DynamicsMonitor("runs")


def test_signature_is_the_documented_one():
    import inspect

    params = inspect.signature(DynamicsMonitor).parameters
    assert "every_n_steps" in params and "rules" in params and all(p.kind is p.KEYWORD_ONLY for p in params.values())


@pytest.mark.parametrize("content,match", [  # (the rule loader may name the problem itself, or not)
    (b"\xff\xfe\x00binary", r"bad.yaml.*(UnicodeDecodeError|not a text file)"),
    ("caf\u00e9: 1\n".encode("latin-1"), r"bad.yaml.*(UnicodeDecodeError|not UTF-8)"),
    (b"&a [*a]", r"(RecursionError|recursive)"),
    (b"a: [1, 2\n", r"invalid rule file\n.*bad.yaml:2:1: not valid YAML"),
    (b"- 1\n", r"invalid rule file\n.*expected an object, got a list"),
])
def test_bad_rule_file_is_a_config_error(tmp_path, content, match):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    for rules in (str(path), path, ["default", str(path)]):
        with pytest.raises(ConfigError, match=r"^DynamicsMonitor\(rules=.*bad.yaml.*\): ") as info:
            DynamicsMonitor(rules=rules)
        assert info.match(match)
        assert "expected" in str(info.value) or "save the rule file as UTF-8" in str(info.value)


@pytest.mark.parametrize("exc", [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
                                 ValueError("odd value"), RecursionError("maximum recursion depth exceeded")])
def test_any_rule_loading_failure_is_a_config_error(tmp_path, monkeypatch, exc):
    import dyncheck.checks.rules as rules_module

    def failing(sources):
        raise exc

    path = tmp_path / "mine.yaml"
    path.write_bytes(b"\xff not utf-8" if isinstance(exc, UnicodeDecodeError) else b"checks: []\n")
    monkeypatch.setattr(rules_module, "load_rules", failing)
    with pytest.raises(ConfigError) as info:
        DynamicsMonitor(rules=["default", str(path)])
    msg = str(info.value)
    assert msg.startswith("DynamicsMonitor(rules=['default', ") and type(exc).__name__ in msg
    assert "expected 'default', a path to a YAML rule file (UTF-8), a list of them, or None" in msg
    assert (f"cannot read rule file {str(path)!r}" in msg) == isinstance(exc, UnicodeDecodeError)


def test_lightning_adapter_names_itself():
    pytest.importorskip("lightning")
    from dyncheck.lightning import DynamicsMonitor as LMonitor

    with pytest.raises(ConfigError, match=r"^DynamicsMonitor\(\) got an unexpected keyword argument 'dirpat'; "
                                          r"did you mean 'dirpath'\?"):
        LMonitor(dirpat="x")
