"""Each statistic against a brute-force reference."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dyncheck.measure import (
    ActivationRecorder,
    activation_stats,
    hvp_operator,
    lanczos_top_eig,
    nonfinite_counts,
    power_iteration_top_eig,
    preserved_training_state,
    saturation_bounds,
    stability_threshold,
    tensor_norms,
    unit_dim,
    update_ratios,
)
from dyncheck.measure.activations import first_float_tensor, select_modules


def test_tensor_norms_match_loop():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(s, generator=g) for s in [(3, 4), (7,), (2, 3, 5), (1,)]]
    ts.append(torch.randn(11, generator=g).half())
    got = tensor_norms(ts)
    ref = [math.sqrt(sum(float(v) ** 2 for v in t.double().flatten())) for t in ts]
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)


def test_nonfinite_counts_match_loop():
    a = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    b = torch.ones(3, 3)
    b[1, 1] = float("nan")
    got = nonfinite_counts([a, b, torch.zeros(2)])
    ref = [sum(1 for v in t.flatten().tolist() if not math.isfinite(v)) for t in (a, b, torch.zeros(2))]
    assert got.tolist() == ref == [3, 1, 0]


def test_update_ratios():
    before = [torch.tensor([3.0, 4.0]), torch.zeros(3), torch.tensor([1.0])]
    after = [torch.tensor([3.0, 5.0]), torch.ones(3), torch.tensor([1.0])]
    r = update_ratios(before, after).tolist()
    assert r[0] == pytest.approx(1.0 / 5.0)
    assert math.isnan(r[1])  # undefined for a zero tensor, not infinite
    assert r[2] == 0.0


def _dead_share_loop(x: torch.Tensor, dim: int) -> float:
    x = x.movedim(dim, 0)
    dead = 0
    for u in range(x.shape[0]):
        if all(v == 0 for v in x[u].flatten().tolist()):
            dead += 1
    return dead / x.shape[0]


@pytest.mark.parametrize("shape,dim", [((16, 10), 1), ((4, 6, 5, 5), 1), ((3, 7, 9), 2)])
def test_activation_stats_match_reference(shape, dim):
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(shape, generator=g))
    idx = [slice(None)] * len(shape)
    idx[dim] = [0, 2]
    x[tuple(idx)] = 0.0  # two dead units
    st = activation_stats(x, dim, None).tolist()
    xs = x.double().numpy()
    assert st[0] == pytest.approx(xs.mean(), rel=1e-5)
    assert st[1] == pytest.approx(xs.std(), rel=1e-4)
    assert st[2] == pytest.approx(np.abs(xs).max(), rel=1e-6)
    assert st[3] == 0
    assert st[4] == pytest.approx(_dead_share_loop(x, dim))
    assert st[4] >= 2 / shape[dim] - 1e-6
    assert math.isnan(st[5])


def test_saturation_share_matches_loop():
    x = torch.sigmoid(torch.linspace(-10, 10, 101)).reshape(1, -1)
    lo, hi = saturation_bounds(nn.Sigmoid())
    share = activation_stats(x, 1, (lo, hi))[5].item()
    ref = sum(1 for v in x.flatten().tolist() if v <= lo or v >= hi) / x.numel()
    assert share == pytest.approx(ref) and 0.3 < share < 0.8
    assert saturation_bounds(nn.Tanh()) == (-0.98, 0.98)
    assert saturation_bounds(nn.ReLU6()) == (0.0, 6.0)
    assert saturation_bounds(nn.ReLU()) is None


def test_nonfinite_activation_counted():
    x = torch.ones(2, 3)
    x[0, 0] = float("nan")
    x[1, 2] = float("inf")
    assert activation_stats(x, 1)[3].item() == 2


def test_unit_dim_conventions():
    assert unit_dim(nn.Conv1d(2, 3, 1), torch.zeros(4, 3, 10)) == 1
    assert unit_dim(nn.ReLU(), torch.zeros(4, 3, 10)) == 2  # (N, T, F): features last
    assert unit_dim(nn.ReLU(), torch.zeros(4, 3, 8, 8)) == 1  # images: channels
    assert unit_dim(nn.ReLU(), torch.zeros(4, 5)) == 1


def test_first_float_tensor_in_tuples_and_dicts():
    t = torch.ones(2)
    assert first_float_tensor((torch.ones(2, dtype=torch.long), (t, 3))) is t
    assert first_float_tensor({"idx": torch.zeros(1, dtype=torch.long), "out": t}) is t
    assert first_float_tensor([1, "a"]) is None


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        h = self.relu(out)
        h = self.relu(h - 10.0)  # shared module, second call: all dead
        return self.fc(self.drop(h))


def test_recorder_hooks_tuple_outputs_shared_modules_and_detaches():
    net = TupleNet()
    chosen = dict(select_modules(net))
    assert set(chosen) == {"lstm", "relu", "fc"}  # dropout skipped, root skipped
    rec = ActivationRecorder(select_modules(net))
    x = torch.randn(5, 6, 3)
    rec.attach()
    net(x)
    rec.detach()
    assert not any(m._forward_hooks for m in net.modules())
    groups = rec.collect()
    mean_names, mean_vals = groups["mean"]
    vals = dict(zip(mean_names, mean_vals.tolist()))
    out, _ = net.lstm(x)
    assert vals["act/mean/lstm"] == pytest.approx(out.mean().item(), rel=1e-5)
    d1 = _dead_share_loop(torch.relu(out), 2)
    assert vals["act/dead/relu"] == pytest.approx((d1 + 1.0) / 2)  # mean over the two calls
    assert "act/saturated/relu" not in vals
    max_names, max_vals = groups["max"]
    assert dict(zip(max_names, max_vals.tolist()))["act/max_abs/relu"] == pytest.approx(torch.relu(out).max().item())
    assert rec.collect() == {}


# -- sharpness ---------------------------------------------------------------------------------------------------
def _dense_top(net, loss_of_params):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def f(flat):
        d = {n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
        return loss_of_params(d)

    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()
    net.double()
    h = torch.func.hessian(f)(flat)
    net.float()
    return torch.linalg.eigvalsh(h)


def _mlp_case(seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(40, 4), torch.randn(40, 1)
    net = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 1))
    return net, lambda d: nn.functional.mse_loss(torch.func.functional_call(net, d, (x.to(d["0.weight"].dtype),)),
                                                 y.to(d["0.weight"].dtype)), lambda: nn.functional.mse_loss(net(x), y)


def test_lanczos_matches_dense_hessian():
    net, f, loss = _mlp_case()
    ev = _dense_top(net, f)
    mv, n = hvp_operator(loss(), list(net.parameters()))
    res = lanczos_top_eig(mv, n, max_iter=30, tol=1e-3, generator=torch.Generator().manual_seed(0))
    assert abs(res.value - ev[-1].item()) / abs(ev[-1].item()) < 1e-3
    assert res.n_hvp <= 30 and res.converged


def test_lanczos_returns_largest_algebraic_not_magnitude():
    # H = diag(-10, 1, 2, 3): the top algebraic eigenvalue is 3, the largest magnitude -10
    w = nn.Parameter(torch.randn(4))
    diag = torch.tensor([-10.0, 1.0, 2.0, 3.0])
    mv, n = hvp_operator(0.5 * (diag * w * w).sum(), [w])
    res = lanczos_top_eig(mv, n, max_iter=10, generator=torch.Generator().manual_seed(0))
    assert res.value == pytest.approx(3.0, rel=1e-4)
    pw = power_iteration_top_eig(mv, n, generator=torch.Generator().manual_seed(0))
    assert pw.value == pytest.approx(-10.0, rel=1e-2)


def test_lanczos_warm_start_needs_fewer_products():
    net, _, loss = _mlp_case(1)
    mv, n = hvp_operator(loss(), list(net.parameters()))
    cold = lanczos_top_eig(mv, n, max_iter=30, tol=1e-4, generator=torch.Generator().manual_seed(0))
    warm = lanczos_top_eig(mv, n, max_iter=30, tol=1e-4, v0=cold.vector)
    assert warm.n_hvp < cold.n_hvp and warm.value == pytest.approx(cold.value, rel=1e-3)


def test_hvp_matches_dense_product_and_skips_unused():
    net, f, loss = _mlp_case(2)
    unused = nn.Parameter(torch.ones(3))
    params = list(net.parameters())
    mv, n = hvp_operator(loss(), params + [unused])
    assert n == sum(p.numel() for p in params)
    names = [nm for nm, _ in net.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def flat_loss(flat):
        d = {nm: c.view(s) for nm, c, s in zip(names, torch.split(flat, sizes), shapes)}
        return f(d)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    h = torch.func.hessian(flat_loss)(flat)
    v = torch.randn(n)
    np.testing.assert_allclose(mv(v).numpy(), (h @ v).numpy(), rtol=1e-4, atol=1e-5)


def test_stability_thresholds():
    p = [nn.Parameter(torch.zeros(1))]
    assert stability_threshold(torch.optim.SGD(p, lr=0.1)) == pytest.approx(20.0)
    assert stability_threshold(torch.optim.SGD(p, lr=0.1, momentum=0.9)) == pytest.approx(38.0)
    assert stability_threshold(torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)) == pytest.approx(38.0 / 2.8)
    assert stability_threshold(torch.optim.Adam(p, lr=0.1)) is None


def test_preserved_state_restores_rng_buffers_grads_and_mode():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 1))
    net.train()
    x = torch.randn(8, 3)
    net(x).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    bn = [b.clone() for b in net.buffers()]
    torch.manual_seed(123)
    with preserved_training_state(net, list(net.parameters())):
        loss = net(x).pow(2).mean()  # dropout draws random numbers, BatchNorm updates running stats
        mv, n = hvp_operator(loss, list(net.parameters()))
        mv(torch.randn(n))
        net.eval()
    after = torch.rand(5)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(5))  # generator state as if the probe never ran
    assert all(torch.equal(a, b) for a, b in zip(bn, net.buffers()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters()))
    assert net.training


def test_lanczos_without_reorthogonalisation_still_returns_a_warm_start_vector():
    net, _, loss = _mlp_case(3)
    mv, n = hvp_operator(loss(), list(net.parameters()))
    res = lanczos_top_eig(mv, n, max_iter=30, reorthogonalize=False, basis_device="cpu",
                          generator=torch.Generator().manual_seed(0))
    assert res.vector is not None and res.vector.shape == (n,)
    rq = torch.dot(mv(res.vector), res.vector) / res.vector.norm() ** 2
    assert rq.item() == pytest.approx(res.value, rel=1e-3)


def test_dead_share_semantics_with_nan():
    x = torch.zeros(4, 3)
    x[0, 1] = float("nan")  # a NaN output is not a dead unit
    x[2, 2] = 1.0
    assert activation_stats(x, 1)[4].item() == pytest.approx(1 / 3)


# -- fingerprints (weight_unchanged without a copy) -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64])
def test_fingerprint_agrees_with_torch_equal_on_small_changes(monkeypatch, dtype):
    from dyncheck.measure import tensors as T

    monkeypatch.setattr(T, "FINGERPRINT_CHUNK", 16)  # several chunks: cross-chunk swaps are seen too
    monkeypatch.setattr(T, "_WEIGHTS", {})
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(7, 11, generator=gen).to(dtype)
    fp = T.fingerprint(base)
    flat = base.reshape(-1)
    cases = [base.clone()]  # unchanged
    for i in torch.randint(0, flat.numel(), (20,), generator=gen).tolist():
        c = base.clone().reshape(-1)
        real = torch.view_as_real(c) if c.is_complex() else c.unsqueeze(-1)
        real[i, 0] = torch.nextafter(real[i, 0].float(), torch.tensor(1e9)).to(real.dtype) \
            if dtype in (torch.float32, torch.float64) else real[i, 0] + 1  # the smallest change of one element
        cases.append(c.reshape(base.shape))
    for i, j in torch.randint(0, flat.numel(), (20, 2), generator=gen).tolist():
        c = base.clone().reshape(-1)
        c[[i, j]] = c[[j, i]]  # a swap (no change when the two are equal)
        cases.append(c.reshape(base.shape))
    for c in cases:
        assert bool(T.same_fingerprint(fp, T.fingerprint(c))) == torch.equal(base, c)


def test_fingerprint_takes_values_as_torch_equal_does():
    from dyncheck.measure.tensors import fingerprint, same_fingerprint

    z = torch.zeros(5)
    assert bool(same_fingerprint(fingerprint(z), fingerprint(-z))) == torch.equal(z, -z) is True
    n = torch.tensor([1.0, float("nan")])
    assert not bool(same_fingerprint(fingerprint(n), fingerprint(n.clone()))) and not torch.equal(n, n)
    assert not bool(same_fingerprint(fingerprint(torch.ones(3)), fingerprint(torch.ones(4))))
    with pytest.raises(TypeError):
        fingerprint(torch.ones(3).to_sparse())


def test_nonfinite_counts_in_chunks_equal_the_whole(monkeypatch):
    from dyncheck.measure import tensors as T

    t = torch.randn(1000)
    t[[3, 500, 999]] = float("nan")
    t[17] = float("inf")
    whole = T.nonfinite_counts([t, t[:10]]).tolist()
    monkeypatch.setattr(T, "NONFINITE_CHUNK", 64)
    assert T.nonfinite_counts([t, t[:10]]).tolist() == whole == [4.0, 1.0]


def test_update_ratios_in_place_equal_the_copying_ones():
    gen = torch.Generator().manual_seed(1)
    before = [torch.randn(5, 3, generator=gen), torch.zeros(4)]
    after = [b + 0.1 * torch.randn(b.shape, generator=gen) for b in before]
    expected = update_ratios(before, after)
    mine = [b.clone() for b in before]
    got = update_ratios(mine, after, in_place=True)
    assert torch.equal(got[:1], expected[:1]) and torch.isnan(got[1]) and torch.isnan(expected[1])


def test_shares_of_plain_tensors_in_one_process_are_their_values():
    """Without a process group every tensor is its own whole: shares equal the plain norms and counts (the shares
    of real DTensors on two processes: tests/test_fsdp.py). A plan of shares refuses to give ratios of them."""
    from dyncheck.measure.tensors import NormPlan, is_sharded, nonfinite_counts, replicas, update_norms, update_ratios

    torch.manual_seed(0)
    ts = [torch.randn(4, 3), torch.randn(5).double(), torch.tensor([1.0, float("nan")])]
    assert not any(is_sharded(t) for t in ts) and [replicas(t) for t in ts] == [1, 1, 1]
    np.testing.assert_array_equal(NormPlan(ts[:2], shares=True)(ts[:2]), NormPlan(ts[:2])(ts[:2]))
    assert nonfinite_counts(ts, shares=True).tolist() == nonfinite_counts(ts).tolist() == [0.0, 0.0, 1.0]
    after = [t + 1 for t in ts[:2]]
    num, den = update_norms(ts[:2], after, NormPlan(ts[:2], shares=True))
    np.testing.assert_allclose((num / den).numpy(), update_ratios(ts[:2], after).numpy())
    with pytest.raises(ValueError, match="update_norms"):
        update_ratios(ts[:2], after, NormPlan(ts[:2], shares=True))


def _unit_spread_loop(x: torch.Tensor, dim: int) -> float:
    """Brute force: per unit (a slice along ``dim``) its max |x| and its sum; the larger coefficient of variation."""
    units = [x.select(dim, u).double().flatten().tolist() for u in range(x.shape[dim])]

    def cv(vals):
        m = sum(vals) / len(vals)
        sd = (sum((v - m) ** 2 for v in vals) / len(vals)) ** 0.5
        return sd / (sum(abs(v) for v in vals) / len(vals))

    return max(cv([max(abs(v) for v in u) for u in units]), cv([sum(u) for u in units]))


@pytest.mark.parametrize("shape,dim", [((16, 10), 1), ((4, 6, 5, 5), 1), ((3, 7, 9), 2)])
def test_unit_spread_matches_reference(shape, dim):
    g = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(shape, generator=g))
    idx = [slice(None)] * len(shape)
    idx[dim] = [1]
    x[tuple(idx)] = 0.0  # a dead unit among live ones: no set of copies
    got = activation_stats(x, dim, None)[6].item()
    assert got == pytest.approx(_unit_spread_loop(x, dim), rel=1e-4)
    assert got > 0.01


def test_unit_spread_separates_copied_units_from_distinct_ones():
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 32, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.fill_(0.05)  # every hidden unit computes the same function
    x = torch.randn(16, 5, 8)
    same = activation_stats(lstm(x)[0], 2, None)[6].item()
    assert same < 1e-5
    distinct = activation_stats(nn.LSTM(8, 32, batch_first=True)(x)[0], 2, None)[6].item()
    assert distinct > 1e-2
    # BatchNorm's channels share their mean (beta) and variance (gamma) by construction, not their maxima
    bn = nn.BatchNorm2d(6).train()(torch.randn(8, 6, 4, 4))
    assert activation_stats(bn, 1, None)[6].item() > 1e-2
    # a clamp that every unit reaches gives equal maxima, not equal sums
    clamped = torch.clamp(torch.randn(64, 12) * 5, -1, 1)
    assert activation_stats(clamped, 1, None)[6].item() > 1e-2
    # one live unit beside dead ones is no copy of them; all dead, or a single unit: no spread to speak of
    one = torch.zeros(4, 3)
    one[:, 0] = 1.0
    assert activation_stats(one, 1, None)[6].item() > 1.0
    assert math.isnan(activation_stats(torch.zeros(4, 3), 1, None)[6].item())
    assert math.isnan(activation_stats(torch.ones(4, 1), 1, None)[6].item())
    # a non-finite output has no spread to speak of either (not 0: that would read as copies)
    bad = torch.randn(4, 6)
    bad[1, 2] = float("nan")
    assert math.isnan(activation_stats(bad, 1, None)[6].item())
    bad[1, 2] = float("inf")
    assert math.isnan(activation_stats(bad, 1, None)[6].item())


