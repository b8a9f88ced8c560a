"""dyncheck.measure.output against brute-force references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dyncheck.measure.output import (PROB_TOL, blocked_share, model_output, output_facts, output_var,
                                     outermost_calls, softmax_floor, softmax_grad_rows)


def _brute_facts(x: torch.Tensor) -> tuple[float, float]:
    flat = x.reshape(-1).tolist()
    zero = sum(v == 0 for v in flat) / len(flat)
    rows = x.reshape(-1, x.shape[-1]).tolist()
    prob = sum(all(0 <= v <= 1 for v in r) and abs(sum(r) - 1) <= PROB_TOL for r in rows) / len(rows)
    return zero, prob


@pytest.mark.parametrize("kind", ["logits", "softmax", "relu", "mixed", "3d"])
def test_output_facts_match_a_loop(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=g)
    if kind == "softmax":
        x = x.softmax(-1)
    elif kind == "relu":
        x = x.relu()
    elif kind == "mixed":  # some rows probabilities, some not, some clamped entries
        x = torch.cat([x[:6].softmax(-1), x[6:].relu()])
    elif kind == "3d":
        x = torch.randn(4, 3, 7, generator=g).softmax(-1)
        x[0, 0] = x[0, 0] * 2  # one row summing to 2
    zero, prob = output_facts(x).tolist()
    want_zero, want_prob = _brute_facts(x)
    assert zero == pytest.approx(want_zero)
    assert prob == pytest.approx(want_prob)


def test_a_row_in_the_unit_box_that_does_not_sum_to_one_is_not_a_probability_vector():
    x = torch.tensor([[0.2, 0.3, 0.4], [0.2, 0.3, 0.5], [0.5, 0.5, 0.0]])
    assert output_facts(x).tolist() == pytest.approx([1 / 9, 2 / 3])


def test_narrow_outputs_have_no_probability_rows():
    zero, prob = output_facts(torch.tensor([[0.0], [1.5], [2.0], [0.0]])).tolist()
    assert zero == 0.5 and math.isnan(prob)


def test_softmax_floor_is_the_minimum_of_cross_entropy_on_probability_vectors():
    """Brute force: cross-entropy of softmax(p) over a grid of probability vectors p for K = 3 (and the corners
    for K = 10): the minimum is log(1 + (K-1)/e), reached at the one-hot vector of the target."""
    steps = [i / 40 for i in range(41)]
    grid = torch.tensor([(a, b, 1 - a - b) for a, b in itertools.product(steps, steps) if a + b <= 1 + 1e-9])
    ce = F.cross_entropy(grid, torch.zeros(len(grid), dtype=torch.long), reduction="none")
    assert ce.min().item() == pytest.approx(softmax_floor(3), rel=1e-6)
    assert ce.argmin().item() == grid[:, 0].argmax().item()
    one_hot = torch.eye(10)[:1]
    assert F.cross_entropy(one_hot, torch.tensor([0])).item() == pytest.approx(softmax_floor(10), rel=1e-6)
    assert softmax_floor(10) == pytest.approx(1.4612, abs=1e-4)


def test_blocked_share_counts_zero_outputs_the_loss_pushes_down():
    x = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    g = torch.tensor([[0.5, -0.5, 0.3], [0.0, 0.2, 1.0]])
    # (0,0): zero, pushed down; (0,1): zero, pushed up; (1,0): zero, no gradient; (1,2): zero, pushed down
    assert blocked_share(x, g).item() == pytest.approx(2 / 6)


def test_blocked_share_of_relu_logits_under_cross_entropy():
    """Logits behind a ReLU under cross-entropy: every wrong class's clamped logit gets gradient p_j > 0."""
    z = torch.tensor([[-1.0, 2.0, -3.0, 0.5]], requires_grad=True)
    out = z.relu()
    out.retain_grad()
    F.cross_entropy(out, torch.tensor([1])).backward()
    assert blocked_share(out, out.grad).item() == pytest.approx(2 / 4)  # entries 0 and 2


class _HFLike(dict):
    """A Hugging Face ModelOutput is an OrderedDict subclass with attribute access."""


@pytest.mark.parametrize("output, want", [
    (torch.ones(2, 3), (2, 3)),
    ((torch.ones(2, 3), torch.ones(2)), (2, 3)),
    ({"loss": torch.tensor(1.0), "logits": torch.ones(4, 5)}, (4, 5)),
    (_HFLike(loss=torch.tensor(1.0), hidden=torch.ones(2, 2)), (2, 2)),
    ([torch.tensor(1.0), torch.arange(3), torch.ones(2, 6)], (2, 6)),
])
def test_model_output_finds_the_prediction(output, want):
    assert tuple(model_output(output).shape) == want


@pytest.mark.parametrize("output", [torch.tensor(1.5), torch.arange(4), {"loss": torch.tensor(2.0)}, None, "text"])
def test_model_output_is_none_without_a_prediction(output):
    assert model_output(output) is None


def test_loss_modules_are_not_candidates():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 2)
            self.criterion = nn.CrossEntropyLoss()

    names = [n for n, _ in outermost_calls(M())]
    assert names == ["", "net"]


def test_modules_inside_a_compiled_one_are_not_candidates():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.compile(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
            self.head = nn.Linear(2, 2)

    names = [n for n, _ in outermost_calls(M())]
    assert names == ["", "net", "head"]


def _zero_sum_share_loop(g: torch.Tensor) -> float:
    rows = [r for r in g.double().reshape(-1, g.shape[-1]).tolist() if any(v != 0 for v in r)]
    top = max((sum(abs(v) for v in r) for r in rows), default=0.0)
    rows = [r for r in rows if sum(abs(v) for v in r) >= 1e-3 * top]  # rows of at least 1e-3 of the largest's
    if not rows:
        return float("nan")
    return sum(abs(sum(r)) <= PROB_TOL * sum(abs(v) for v in r) for r in rows) / len(rows)


@pytest.mark.parametrize("loss", ["ce", "ce_smooth", "ce_soft", "ce_weighted", "mse", "bce", "ce_ignore"])
def test_softmax_grad_rows_tells_cross_entropy_from_other_losses(loss):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, 7, generator=g, requires_grad=True)
    y = torch.randint(0, 7, (6, 5), generator=g)
    flat, yf = z.reshape(-1, 7), y.reshape(-1)
    if loss == "ce":
        out = F.cross_entropy(flat, yf)
    elif loss == "ce_smooth":
        out = F.cross_entropy(flat, yf, label_smoothing=0.3, reduction="sum")
    elif loss == "ce_soft":
        out = F.cross_entropy(flat, torch.softmax(torch.randn(30, 7, generator=g), -1))
    elif loss == "ce_weighted":
        out = F.cross_entropy(flat, yf, weight=torch.rand(7, generator=g) + 0.1)
    elif loss == "ce_ignore":
        out = F.cross_entropy(flat, torch.where(yf < 3, -100, yf))  # ignored rows get no gradient
    elif loss == "mse":
        out = F.mse_loss(flat, F.one_hot(yf, 7).float())
    else:
        out = F.binary_cross_entropy_with_logits(flat, F.one_hot(yf, 7).float())
    out.backward()
    got = softmax_grad_rows(z.grad).item()
    assert got == pytest.approx(_zero_sum_share_loop(z.grad))
    assert got == (1.0 if loss.startswith("ce") else 0.0)


def test_softmax_grad_rows_without_any_gradient_is_nan():
    assert math.isnan(softmax_grad_rows(torch.zeros(3, 4)).item())


def test_softmax_grad_rows_of_a_classifier_at_its_floor_is_still_cross_entropy():
    """Rows predicted with probability 1 - 1e-7 have gradients whose sum is 0 only to float32 rounding of 1 - eps:
    they are left out, judged on the rows that still carry a gradient (a fine-tuned classifier at its floor)."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (64,), generator=g)
    z = torch.randn(64, 10, generator=g)
    z[torch.arange(64), y] += torch.where(torch.arange(64) < 8, 2.0, 16.0)  # 8 uncertain rows, 56 at the floor
    z.requires_grad_(True)
    F.cross_entropy(z, y).backward()
    rows = z.grad.reshape(-1, 10)
    l1 = rows.abs().sum(-1)
    assert ((rows.sum(-1).abs() > 1e-3 * l1) & (l1 > 0)).sum() > 0  # judged on every row, some fail
    assert softmax_grad_rows(z.grad).item() == 1.0
    assert softmax_grad_rows(z.grad).item() == pytest.approx(_zero_sum_share_loop(z.grad))


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 7), (16,), (9, 1)])
def test_output_var_matches_a_loop(shape):
    """The population variance of each column (the last dimension) over the rows (every other dimension), averaged
    over the columns; a 1-D output is one column."""
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(*shape, generator=g, dtype=torch.float64) + 1.0
    cols = x.reshape(-1, 1) if x.dim() == 1 else x.reshape(-1, shape[-1])
    want = []
    for j in range(cols.shape[1]):
        v = cols[:, j].tolist()
        m = sum(v) / len(v)
        want.append(sum((a - m) ** 2 for a in v) / len(v))
    assert output_var(x).item() == pytest.approx(sum(want) / len(want), rel=1e-5)
    assert output_var(x).dtype == torch.float32


def test_output_var_of_a_single_row_or_a_scalar_is_nan():
    assert math.isnan(output_var(torch.randn(1, 5)).item())
    assert math.isnan(output_var(torch.tensor(2.0)).item())
    with pytest.raises(TypeError):
        output_var(torch.randn(4, 2, dtype=torch.complex64))
