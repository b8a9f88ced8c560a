"""The gradient noise scale's estimator against exact per-example gradients (``torch.func.vmap(grad)``), its algebra,
the moving averages, the batch splitting, the probe's leaving no trace, and the schedule."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from dyncheck.measure.noise import (
    NoiseEMA,
    NoiseSchedule,
    batch_size_of,
    micro_batch_sq_norms,
    noise_probe,
    split_batch,
    two_batch_estimates,
)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))


def _per_example(net, x, y):
    """Flat per-example gradients of the cross-entropy, brute force."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, xi, yi):
        return nn.functional.cross_entropy(functional_call(net, p, (xi[None],)), yi[None])

    pg = vmap(grad(f), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([pg[k].reshape(len(x), -1) for k, _ in net.named_parameters()], 1).double()


def _loss(net):
    return lambda mb: nn.functional.cross_entropy(net(mb[0]), mb[1])


def test_two_batch_estimates_invert_the_expected_squared_norms_exactly():
    g2, tr = 0.37, 12.5
    for bs, bb in [(1, 2), (4, 64), (16, 17), (3.0, 300.0)]:
        got = two_batch_estimates(g2 + tr / bs, g2 + tr / bb, bs, bb)
        assert got == pytest.approx((g2, tr), rel=1e-12)
    with pytest.raises(ValueError):
        two_batch_estimates(1.0, 0.5, 8, 8)
    with pytest.raises(ValueError):
        two_batch_estimates(1.0, 0.5, 0, 8)


def test_micro_batch_squared_norms_match_per_example_gradients_on_the_same_partition():
    """|G_small|² is the mean over the partition's micro-batches of |mean per-example gradient|², |G_big|² the
    squared norm of the batch's mean gradient; the remainder of an uneven split is left out."""
    net = _net()
    x, y = torch.randn(38, 10), torch.randint(0, 3, (38,))
    per = _per_example(net, x, y)
    for k in (2, 5, 8):
        got = micro_batch_sq_norms(_loss(net), [x, y], list(net.parameters()), k, torch.Generator().manual_seed(3))
        perm = torch.randperm(38, generator=torch.Generator().manual_seed(3))
        b = 38 // k
        groups = [per[perm[i * b:(i + 1) * b]].mean(0) for i in range(k)]
        small = float(np.mean([float(g @ g) for g in groups]))
        full = torch.stack(groups).mean(0)
        assert got[2:] == (b, b * k)
        assert got[0] == pytest.approx(small, rel=1e-5)
        assert got[1] == pytest.approx(float(full @ full), rel=1e-5)


def test_estimates_are_unbiased_against_the_exact_noise_scale():
    """Over many random batches of a population, the mean estimates of |G|² and tr(Σ) are within 10% of the exact
    values from per-example gradients of the whole population (and the single estimates vary a lot: the test
    is of the mean)."""
    net = _net(1)
    n = 512
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 10, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    per = _per_example(net, x, y)
    mean = per.mean(0)
    exact_g2 = float(mean @ mean)
    exact_tr = float(((per - mean) ** 2).sum(1).mean())
    ests = []
    for _ in range(300):
        idx = torch.randint(0, n, (64,), generator=gen)
        s, b, bs, bb = micro_batch_sq_norms(_loss(net), [x[idx], y[idx]], list(net.parameters()), 8, gen)
        ests.append(two_batch_estimates(s, b, bs, bb))
    g2s, trs = np.array(ests).T
    assert abs(g2s.mean() / exact_g2 - 1) < 0.10
    assert abs(trs.mean() / exact_tr - 1) < 0.10
    assert abs(trs.mean() / g2s.mean() / (exact_tr / exact_g2) - 1) < 0.10
    assert g2s.std() > 0.2 * exact_g2  # single draws are noisy: the mean is what converges
    # the smoothed ratio (numerator and denominator averaged separately) converges the same way
    ema = NoiseEMA(0.99)
    for g2, tr in ests:
        ema.update(g2, tr)
    assert abs(ema.b_simple / (exact_tr / exact_g2) - 1) < 0.15


def test_ema_is_bias_corrected_and_smooths_numerator_and_denominator_separately():
    ema = NoiseEMA(0.9)
    assert ema.b_simple is None and ema.trace is None
    ema.update(2.0, 10.0)
    assert (ema.grad_sq, ema.trace, ema.b_simple) == pytest.approx((2.0, 10.0, 5.0))
    vals = [(2.0, 10.0), (-1.0, 30.0), (4.0, 20.0)]
    for g2, tr in vals[1:]:
        ema.update(g2, tr)
    w = np.array([0.9 ** 2, 0.9, 1.0]) * 0.1
    g2 = float(np.dot(w, [v[0] for v in vals]) / w.sum())
    tr = float(np.dot(w, [v[1] for v in vals]) / w.sum())
    assert (ema.grad_sq, ema.trace) == pytest.approx((g2, tr))
    assert ema.b_simple == pytest.approx(tr / g2)  # ratio of the averages, not the average of ratios
    ema.update(math.nan, 1.0)  # a blow-up's gradients say nothing about the noise: ignored
    assert ema.grad_sq == pytest.approx(g2)
    neg = NoiseEMA(0.0)
    neg.update(-0.5, 3.0)
    assert neg.b_simple is None and neg.trace == 3.0  # no noise scale while |G|² is not positive
    neg.update(0.5, 3.0)
    assert neg.b_simple == pytest.approx(6.0)  # decay 0: the last values
    neg.update(0.5, -0.2)  # tr(Σ) estimated below 0 (the two squared norms' difference is noisy): no scale either
    assert neg.b_simple is None and neg.trace == -0.2


def test_split_batch_walks_containers_and_indexes_tensors_of_the_batch_size():
    Pair = namedtuple("Pair", "a b")
    batch = {"x": torch.arange(12).reshape(6, 2), "pair": Pair(torch.arange(6), "tag"), "other": torch.zeros(3),
             "list": [torch.arange(6) * 2], "scalar": torch.tensor(1.0)}
    idx = torch.tensor([4, 1])
    got = split_batch(batch, idx, 6)
    assert torch.equal(got["x"], batch["x"][[4, 1]])
    assert isinstance(got["pair"], Pair) and torch.equal(got["pair"].a, torch.tensor([4, 1]))
    assert got["pair"].b == "tag" and got["other"] is batch["other"] and got["scalar"] is batch["scalar"]
    assert torch.equal(got["list"][0], torch.tensor([8, 2]))
    assert batch_size_of(batch) == 6 and batch_size_of(["s", (torch.zeros(4, 1),)]) == 4
    assert batch_size_of(torch.tensor(3.0)) is None and batch_size_of("text") is None


def test_probe_leaves_gradients_buffers_generators_and_flags_as_it_found_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    nn.functional.cross_entropy(net(x), y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net[0].weight.grad = None  # a parameter without a gradient stays without one
    buffers = [b.clone() for b in net.buffers()]
    rng = torch.get_rng_state()
    net.eval()
    out = noise_probe(net, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), [x, y], 4,
                      torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in out[:2]) and out[2:] == (8, 32)
    assert net[0].weight.grad is None
    for p, g in list(zip(net.parameters(), grads))[1:]:
        assert torch.equal(p.grad, g)
    for b, saved in zip(net.buffers(), buffers):
        assert torch.equal(b, saved)
    assert torch.equal(torch.get_rng_state(), rng) and not net.training


def test_probe_needs_two_examples():
    net = _net()
    from dyncheck.errors import MeasureError
    with pytest.raises(MeasureError, match="at least 2"):
        micro_batch_sq_norms(_loss(net), [torch.randn(1, 10), torch.tensor([0])], list(net.parameters()), 4)


def test_schedule_fixed_budget_and_off():
    fixed = NoiseSchedule(budget=0.01, every_n=5)
    assert fixed.mode == "fixed" and fixed.due(0, 0.0)
    fixed.record(1, 0.1)
    assert not fixed.due(4, 0.0) and fixed.due(5, 0.0) and fixed.due(6, 0.0)  # a missed bucket start still counts
    # the first measurement is expected to cost 2 step times (1 s steps here): due at the second step when the
    # planned run's budget covers that (0.1 x 100 steps x 1 s = 10 s), never when it does not (0.1 x 15 s)
    budget = NoiseSchedule(budget=0.1, every_n=None, start_step=10, planned_steps=100)
    assert budget.mode == "budget" and not budget.due(10, 1.0) and budget.due(11, 1.0)
    short = NoiseSchedule(budget=0.1, every_n=None, start_step=10, planned_steps=15)
    assert not any(short.due(10 + k, float(k)) for k in range(1, 16))
    # length unknown: once the time so far pays for it (0.1 x 20 s >= 2 s)
    unknown = NoiseSchedule(budget=0.1, every_n=None, start_step=10)
    assert not unknown.due(11, 1.0) and not unknown.due(29, 19.0) and unknown.due(30, 20.0)
    budget.record(11, 0.5)  # a measurement of 0.5 s: due again once 10 s of training pay for it and the next
    assert not budget.due(12, 9.9) and budget.due(40, 10.0)
    assert budget.facts() == {"mode": "budget", "measurements": 1, "time_s": 0.5, "budget": 0.1}
    for off in (NoiseSchedule(budget=0.0, every_n=None), NoiseSchedule(budget=0.5, every_n=0)):
        assert off.mode == "off" and not off.due(100, 1e9)
    assert NoiseSchedule(budget=0.0, every_n=3).mode == "fixed"


def test_evaluating_only_some_micro_batches():
    """``evaluate=m``: the first m micro-batches of the same partition; b_big is m x b."""
    net = _net()
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    per = _per_example(net, x, y)
    got = micro_batch_sq_norms(_loss(net), [x, y], list(net.parameters()), 8, torch.Generator().manual_seed(5),
                               evaluate=2)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(5))
    groups = [per[perm[i * 4:(i + 1) * 4]].mean(0) for i in range(2)]
    mean = torch.stack(groups).mean(0)
    assert got[2:] == (4, 8)
    assert got[0] == pytest.approx(float(np.mean([float(g @ g) for g in groups])), rel=1e-5)
    assert got[1] == pytest.approx(float(mean @ mean), rel=1e-5)


def test_sq_norm_of_sparse_complex_and_float64_tensors():
    from dyncheck.measure.noise import sq_norm

    dense = torch.tensor([[0.0, 3.0], [4.0, 0.0]])
    sparse = dense.to_sparse()
    sparse_dup = torch.sparse_coo_tensor([[0, 0], [1, 1]], [1.0, 2.0], (2, 2))  # duplicates add up: 3
    cplx = torch.tensor([3 + 4j, 1j], dtype=torch.complex64)
    wide = torch.tensor([1e-3], dtype=torch.float64)
    assert float(sq_norm([dense])) == 25.0 and float(sq_norm([sparse])) == 25.0
    assert float(sq_norm([sparse_dup])) == 9.0
    assert float(sq_norm([cplx])) == pytest.approx(26.0)
    got = sq_norm([wide, dense])
    assert got.dtype == torch.float64 and float(got) == pytest.approx(25.000001, rel=1e-12)
