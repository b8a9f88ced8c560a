"""What the model hands to its loss: which module's output that is, and two facts about its values that give away
the classic wrong-last-layer bugs (DeepFD's "activation" and "loss function" fault types; Humbatova et al.'s
"wrong activation function of the output layer"):

- ``prob_rows``: the share of output rows (along the last dimension, at least 2 wide) that are probability
  vectors -- every entry in [0, 1], summing to 1 within 1e-3. A softmax in ``forward`` whose output then goes into
  ``CrossEntropyLoss`` (which applies log-softmax itself) gives 1.0: the loss is floored far above zero (1.46 for
  10 classes) and its gradient is squashed.
- ``zero_share``: the share of output elements exactly 0 -- a ReLU (or a clamp) after the last layer.
- ``blocked_share`` (from the gradient the loss sends back to the output, :func:`blocked_share`): the share of
  output elements that are exactly 0 *and* that the loss pushes further down (a positive gradient): a clamp that
  stands between the loss and what it wants. Logits behind a ReLU (the loss pushes every wrong class's logit down)
  and a regression head behind a ReLU with negative targets show it; an output that is 0 where its target is 0 (a
  non-negative target fitted) has a zero gradient there and does not count.
- ``softmax_floor``: ``log(1 + (K - 1) / e)`` for K outputs per row: the lowest value cross-entropy can take when its
  input is already a probability vector (softmax applied twice: 1.46 for 10 classes). A loss settling at this
  value, with probability rows, is that bug.
- ``softmax_grad`` (from the same gradient, :func:`softmax_grad_rows`): the share of the rows with a gradient (at
  least 1e-3 of the largest row's) whose gradient sums to 0 along the last dimension. A softmax cross-entropy (any
  reduction, weights, label smoothing, soft targets) sends back ``w * (softmax(z) - target)``, a difference of two
  probability vectors, which sums to 0; squared error, BCE on sigmoids or a hinge loss almost never do. With it the
  loss is known to be a cross-entropy over the output's K classes, so ``chance_loss`` = ``log K`` -- the loss of a
  uniform guess, where a freshly initialised classifier starts -- is the run's chance level.

- ``var`` (:func:`output_var`): the variance of the output across the batch's rows, averaged over its columns. A
  loss below it (squared error: ``MSE < Var(out)`` needs ``Cov(out, y) > Var(y) / 2``) says the predictions already
  explain the targets -- a regression resumed at its noise floor, not one that cannot learn. Under several
  processes it is the mean of the processes' variances (of each one's part of the batch): the whole batch's less
  the variance between the parts' means -- at most the whole's, close to it for batches drawn at random.

No host synchronisation: all are 0-d float32 tensors on the output's device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .activations import runs_compiled

__all__ = ["PROB_TOL", "blocked_share", "model_output", "output_facts", "outermost_calls", "softmax_floor",
           "softmax_grad_rows"]

#: how far from 1 a row's sum may be for the row to count as a probability vector (float32 softmax rows are
#: within ~1e-6; a logit row almost never sums to 1 this closely with every entry in [0, 1])
PROB_TOL = 1e-3
#: rows of the output's gradient that ``softmax_grad_rows`` judges: those at least this share of the largest row's
SOFTMAX_ROW_SHARE = 1e-3

#: keys of a mapping output that hold the model's prediction, in order of preference (Hugging Face ModelOutput)
_PREDICTION_KEYS = ("logits", "prediction_logits", "predictions", "last_hidden_state")


def model_output(output: Any) -> Tensor | None:
    """The prediction in a module's output: the tensor itself; a mapping's ``logits`` (Hugging Face ModelOutput)
    or its first floating tensor that is not a scalar loss; a tuple's first floating tensor. None when there is no
    floating tensor of more than one element."""
    if isinstance(output, Tensor):
        return output if output.is_floating_point() and output.numel() > 1 else None
    if isinstance(output, dict) or hasattr(output, "keys") and hasattr(output, "__getitem__"):
        try:
            keys = list(output.keys())
        except Exception:
            return None
        for k in _PREDICTION_KEYS:
            if k in keys:
                found = model_output(output[k])
                if found is not None:
                    return found
        items = [output[k] for k in keys if k != "loss"]
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        return None
    for item in items:
        found = model_output(item)
        if found is not None:
            return found
    return None


def output_facts(x: Tensor) -> Tensor:
    """``[zero_share, prob_rows]`` of a model output (see the module docstring), float32 on its device;
    ``prob_rows`` is NaN when the last dimension is narrower than 2 (no rows to be probability vectors)."""
    x = x.detach()
    if x.is_complex():
        raise TypeError(f"output facts need a real tensor, got {x.dtype}")
    x = x.float()
    zero = (x == 0).float().mean()
    if x.dim() == 0 or x.shape[-1] < 2:
        return torch.stack([zero, torch.full_like(zero, float("nan"))])
    rows = x.reshape(-1, x.shape[-1])
    prob = (rows.amin(-1) >= 0) & (rows.amax(-1) <= 1) & ((rows.sum(-1) - 1).abs() <= PROB_TOL)
    return torch.stack([zero, prob.float().mean()])


def output_var(x: Tensor) -> Tensor:
    """The variance of the model's output across the rows of the batch (along every dimension but the last, whose
    entries are the output's columns: targets, classes, logits of a token), averaged over the columns; a 1-D output
    is one column of rows. 0-d float32 tensor on ``x``'s device; NaN for a 0-d output or a single row. How much the
    predictions vary: a freshly initialised model's barely do, a trained regressor's about as much as its targets."""
    x = x.detach()
    if x.is_complex():
        raise TypeError(f"output facts need a real tensor, got {x.dtype}")
    x = x.float()
    if x.dim() == 0:
        return torch.full((), float("nan"), device=x.device)
    rows = x.reshape(-1, 1) if x.dim() == 1 else x.reshape(-1, x.shape[-1])
    if rows.shape[0] < 2:
        return torch.full((), float("nan"), device=x.device)
    return rows.var(dim=0, correction=0).mean()


def blocked_share(x: Tensor, grad: Tensor) -> Tensor:
    """Share of the elements of output ``x`` that are exactly 0 while the loss's gradient at them is positive
    (0-d float32 tensor on ``x``'s device)."""
    return ((x.detach() == 0) & (grad.detach() > 0)).float().mean()


def softmax_grad_rows(grad: Tensor) -> Tensor:
    """Share of the rows (along the last dimension) of the loss's gradient at the output that sum to 0 within
    1e-3 of their absolute sum, among the rows whose absolute sum is at least 1e-3 of the largest row's (0-d
    float32 tensor on ``grad``'s device; NaN when no row has a gradient). A row the model already predicts with
    probability 1 - eps has a gradient of about 2 eps, whose sum is 0 only to float32's rounding of 1 - eps
    (6e-8): below eps ~ 3e-5 that is more than 1e-3 of it, and a classifier at its floor has many such rows."""
    g = grad.detach().float()
    rows = g.reshape(-1, g.shape[-1])
    l1 = rows.abs().sum(-1)
    live = (l1 > 0) & (l1 >= SOFTMAX_ROW_SHARE * l1.max())
    zero_sum = (rows.sum(-1).abs() <= PROB_TOL * l1) & live
    n = live.sum()
    return torch.where(n > 0, zero_sum.sum() / n.clamp(min=1), torch.full_like(l1[0], float("nan")))


def softmax_floor(k: int) -> float:
    """The minimum of cross-entropy over inputs that are probability vectors of ``k`` entries:
    ``log(1 + (k - 1) / e)`` (the target's entry 1, the others 0)."""
    return math.log1p((k - 1) / math.e)


def _is_loss(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.loss._Loss)


def outermost_calls(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module of ``model`` whose output may be what the loss gets: all but loss modules (an
    ``nn.CrossEntropyLoss`` held as an attribute is called after the model and would hide its output) and the
    modules inside a compiled one (hooks there would be traced into its graph, and removing them recompiles it;
    the compiled module's own hooks run outside the graph)."""
    todo = [("", model)]
    while todo:
        name, mod = todo.pop(0)
        if _is_loss(mod):
            continue
        yield name, mod
        if not runs_compiled(mod):
            todo.extend((f"{name}.{n}" if name else n, c) for n, c in mod.named_children())
