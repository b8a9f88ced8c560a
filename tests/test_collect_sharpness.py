"""Sharpness: on its schedule, at the weights of the step's forward; off (with its meta) when it cannot run."""

import numpy as np
import pytest
import torch
from loop import drive
from torch import nn

from dyncheck import open_run
from dyncheck.measure.sharpness import hvp_operator, lanczos_top_eig
from dyncheck.monitor import Monitor, MonitorConfig


def _loss(module, batch):
    x, y = batch
    return nn.functional.mse_loss(module(x), y)


def test_fixed_schedule_values_are_the_top_eigenvalue_at_the_steps_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    expected, weights = {}, {}
    mon = Monitor(MonitorConfig(sharpness_every_n_steps=2))
    orig_start = mon.batch_start

    def batch_start(step, batch):
        if step % 2 == 0 and step not in weights:
            weights[step] = [p.detach().clone() for p in model.parameters()]
        orig_start(step, batch)

    mon.batch_start = batch_start
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 5, monitor=mon, data=(x, y),
          probe_loss=_loss)
    for step, ws in weights.items():
        probe = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
        with torch.no_grad():
            for p, w in zip(probe.parameters(), ws):
                p.copy_(w)
        matvec, n = hvp_operator(_loss(probe, (x, y)), list(probe.parameters()))
        expected[step] = lanczos_top_eig(matvec, n, max_iter=20, tol=1e-4).value
    run = open_run(tmp_path / "run.db")
    s = run.series("sharpness/top_eig")
    assert s.steps.tolist() == [0, 2, 4]
    np.testing.assert_allclose(s.values, [expected[k] for k in (0, 2, 4)], rtol=1e-3)
    assert run.meta["sharpness_probes"] == 3 and run.meta["sharpness_schedule"]["mode"] == "fixed"
    assert run.series("sharpness/threshold").values.tolist() == pytest.approx([2 / 0.1] * 3)


def test_off_without_a_probe_loss_or_budget_but_meta_is_written(tmp_path):
    model = nn.Linear(3, 1)
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 3,
          config=MonitorConfig(sharpness_budget=0))
    meta = open_run(tmp_path / "run.db").meta
    assert meta["sharpness_probes"] == 0 and meta["sharpness_time_s"] == 0 and "sharpness_schedule" in meta
    assert meta["measurement_errors"] == []


def test_complex_parameters_turn_it_off_with_one_warning(tmp_path):
    class C(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 1, dtype=torch.cfloat))

        def forward(self, x):
            return (x.to(torch.cfloat) @ self.w).real

    model = C()
    with pytest.warns(UserWarning, match=r"sharpness measurement failed.*complex parameters \(w\)"):
        drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 3, data=(torch.randn(8, 3),
              torch.randn(8, 1)), config=MonitorConfig(sharpness_every_n_steps=1), probe_loss=_loss)
    run = open_run(tmp_path / "run.db")
    assert "sharpness/top_eig" not in run and run.meta["measurement_errors"][0]["measurement"] == "sharpness"


# -- the finite-difference operator and the probe batch copy (dyncheck.measure) --------------------------------
def _tanh_mlp(dtype=torch.float64, dropout=0.0):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Dropout(dropout), nn.Linear(12, 2)).to(dtype)


def test_fd_hvp_matches_the_exact_product_and_restores_the_weights_bit_exactly():
    from dyncheck.measure.sharpness import fd_hvp_operator

    model = _tanh_mlp()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    marker = [torch.full_like(p, 7.0) for p in params]
    for p, g in zip(params, marker):
        p.grad = g
    exact, n = hvp_operator(nn.functional.mse_loss(model(x), y), params)
    g = torch.Generator().manual_seed(3)
    vs = [scale * torch.randn(n, generator=g, dtype=torch.float64) for scale in (1.0, 1e-3, 50.0)]
    want = [exact(v) for v in vs]  # before the weights move (the exact graph saved them)
    fd, n_fd = fd_hvp_operator(lambda: nn.functional.mse_loss(model(x), y), params)
    assert n_fd == n == sum(p.numel() for p in params)
    for v, w in zip(vs, want):  # eps follows ||v||: the product is linear in v
        np.testing.assert_allclose(fd(v).numpy(), w.numpy(), rtol=1e-6, atol=1e-9 * float(v.norm()))
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # copied back, not added and subtracted
    assert all(p.grad is m for p, m in zip(params, marker))


def test_fd_hvp_sees_the_same_dropout_mask_in_every_evaluation():
    """In training mode with dropout, every gradient evaluation starts from the RNG state at the operator's
    creation: the product is the exact one of the loss with that mask (a fresh mask per evaluation would make the
    difference noise)."""
    from dyncheck.measure.sharpness import fd_hvp_operator

    model = _tanh_mlp(dropout=0.5).train()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    params = list(model.parameters())
    state = torch.get_rng_state()
    fd, n = fd_hvp_operator(lambda: nn.functional.mse_loss(model(x), y), params)
    v = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = fd(v)
    torch.set_rng_state(state)  # the mask of the operator's evaluations
    exact, _ = hvp_operator(nn.functional.mse_loss(model(x), y), params)
    np.testing.assert_allclose(got.numpy(), exact(v).numpy(), rtol=1e-6, atol=1e-9)
    other, _ = hvp_operator(nn.functional.mse_loss(model(x), y), params)  # another mask: another product
    assert not torch.allclose(other(v), exact(v), rtol=1e-3)


def test_fd_hvp_through_reentrant_checkpointing_falls_back_to_backward():
    """Reentrant checkpointing refuses autograd.grad (and so double backward): the operator takes its gradients by
    loss.backward() and leaves the .grad fields as they were."""
    from torch.utils.checkpoint import checkpoint

    from dyncheck.measure.sharpness import fd_hvp_operator

    model = _tanh_mlp()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)

    def loss(ckpt):
        h = model[0](x)
        h = checkpoint(model[1], h, use_reentrant=True) if ckpt else model[1](h)
        return nn.functional.mse_loss(model[3](h), y)

    params = list(model.parameters())
    with pytest.raises(RuntimeError, match="use_reentrant=True"):
        hvp_operator(loss(True), params)
    exact, n = hvp_operator(loss(False), params)
    v = torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = exact(v)
    del exact
    fd, _ = fd_hvp_operator(lambda: loss(True), params)
    np.testing.assert_allclose(fd(v).numpy(), want.numpy(), rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in params)


def test_fd_top_eigenvalue_in_float32_is_within_1e3_of_the_exact_one():
    from dyncheck.measure.sharpness import fd_hvp_operator

    model = _tanh_mlp(torch.float32)
    x, y = torch.randn(64, 4), torch.randn(64, 2)
    params = list(model.parameters())
    matvec, n = hvp_operator(nn.functional.mse_loss(model(x), y), params)
    exact = lanczos_top_eig(matvec, n, max_iter=40, tol=1e-7, generator=torch.Generator().manual_seed(0)).value
    del matvec
    fd, n = fd_hvp_operator(lambda: nn.functional.mse_loss(model(x), y), params)
    got = lanczos_top_eig(fd, n, max_iter=40, generator=torch.Generator().manual_seed(0)).value
    assert got == pytest.approx(exact, rel=1e-3)


def test_the_probe_batch_copy_keeps_container_types():
    import collections
    import dataclasses

    from dyncheck.monitor import _clone_batch

    transformers = pytest.importorskip("transformers")

    @dataclasses.dataclass
    class Batch:
        x: torch.Tensor
        n: int = 3

    Pair = collections.namedtuple("Pair", "a b")
    t = torch.arange(4.0)
    cases = [transformers.BatchEncoding({"input_ids": t}), Batch(t), Pair(t, [t, (t, "tag")]), {"a": t},
             collections.OrderedDict(a=t)]
    for batch in cases:
        copy = _clone_batch(batch)
        assert type(copy) is type(batch)
        leaves = [copy.input_ids] if isinstance(copy, transformers.BatchEncoding) else \
            [copy.x] if isinstance(copy, Batch) else [copy.a, copy.b[0], copy.b[1][0]] if isinstance(copy, Pair) \
            else [copy["a"]]
        for leaf in leaves:
            assert torch.equal(leaf, t) and leaf.data_ptr() != t.data_ptr()
    assert _clone_batch(cases[0]).input_ids.shape == (4,)  # attribute access of a BatchEncoding still works
    assert _clone_batch(cases[1]).n == 3 and _clone_batch(cases[2]).b[1][1] == "tag"


def test_plain_loop_meta_names_the_context_and_the_loss_functions_own_precision(tmp_path):
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 3,
          config=MonitorConfig(sharpness_every_n_steps=1), data=(torch.randn(8, 3), torch.randn(8, 1)),
          probe_loss=_loss)
    probe = open_run(tmp_path / "run.db").meta["sharpness_probe"]
    assert probe["context"] == "double-backward" and probe["failed"] == []
    assert probe["precision"] == "as the loss function computes it (its own autocast, if any)"
    assert probe["probes"] == {"double-backward": 3}


def test_finite_differences_across_relu_kinks_are_refused_not_recorded(tmp_path):
    """A ReLU/max-pool CNN under reentrant checkpointing: no double backward, and the central difference crosses
    kinks (Lanczos finds the directions where it does: values off by 25x, benchmarks/sharpness_contexts.py). The
    check along the eigenvector catches it: sharpness is off with that reason, no value is recorded."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16, 10))
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    targets = nn.functional.one_hot(y, 10).float()  # the loop trains on mse_loss(model(x), y)

    def loss(module, batch):
        h = checkpoint(module[1:], module[0](batch[0]), use_reentrant=True)
        return nn.functional.cross_entropy(h, batch[1].argmax(1))

    with pytest.warns(UserWarning, match="finite-difference Hessian is unreliable here"):
        drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 2, data=(x, targets), probe_loss=loss,
              config=MonitorConfig(sharpness_every_n_steps=1))
    run = open_run(tmp_path / "run.db")
    assert "sharpness/top_eig" not in run
    (err,) = run.meta["measurement_errors"]
    assert err["message"].startswith("every probe context failed: double-backward: RuntimeError: When use_reentrant")
    q, q4 = run.meta["sharpness_probe"]["fd_check"]
    assert abs(q - q4) > 0.1 * max(abs(q), abs(q4))
    assert run.meta["sharpness_probe"]["precision"] == ("float32 (autocast off around the loss function; an "
                                                        "autocast inside it still applies)")


def test_fd_refuses_half_precision_weights():
    """bf16/fp16 weights (precision='bf16-true'): the perturbation would round away and the product be zero."""
    from dyncheck.errors import MeasureError
    from dyncheck.measure.sharpness import fd_hvp_operator

    model = _tanh_mlp(torch.bfloat16)
    x = torch.randn(8, 4, dtype=torch.bfloat16)
    with pytest.raises(MeasureError, match="finite differences need float32 or float64 weights, some are bfloat16"):
        fd_hvp_operator(lambda: model(x).float().pow(2).mean(), list(model.parameters()))
