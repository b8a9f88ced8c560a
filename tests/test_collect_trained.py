"""model/untrained_share: the share of the model's parameter elements that no optimizer trains, on the per-layer
schedule."""

import pytest
import torch
from loop import drive
from torch import nn

from dyncheck import open_run


def _brute(model, opts):
    """By hand: elements of parameters that are not (held by an optimizer and requiring grad), over all."""
    held = [p for o in opts for g in o.param_groups for p in g["params"] if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if not any(p is q for q in held)) / total


def test_frozen_and_left_out_parameters_count_as_untrained(tmp_path):
    model = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 5), nn.Linear(5, 1))
    model[0].requires_grad_(False)  # frozen, but the optimizer holds it (a freeze loop after model.parameters())
    opt = torch.optim.SGD([*model[0].parameters(), *model[2].parameters()], lr=0.1)  # model[1] left out
    want = _brute(model, [opt])
    assert want == pytest.approx((3 * 8 + 8 + 8 * 5 + 5) / (3 * 8 + 8 + 8 * 5 + 5 + 5 + 1))
    drive(tmp_path, model, opt, 5, every_n_steps=2)
    s = open_run(tmp_path / "run.db").series("model/untrained_share")
    assert s.steps.tolist() == [0, 2, 4]
    assert s.values.tolist() == pytest.approx([want] * 3)


@pytest.mark.filterwarnings("ignore:dyncheck. activations")  # the tied head never runs in this forward
def test_all_trained_is_zero_and_tied_weights_count_once(tmp_path):
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    extra = nn.Linear(4, 1)
    model = nn.ModuleDict({"emb": emb, "head": head, "extra": extra})
    model.forward = lambda x: extra(x)  # drive's regression batch goes through the unfrozen part

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    drive(tmp_path / "a", model, opt, 1, data=(torch.randn(16, 4), torch.randn(16, 1)))
    assert open_run(tmp_path / "a" / "run.db").series("model/untrained_share").values.tolist() == [0.0]
    emb.requires_grad_(False)  # the tied matrix: 40 of 45 elements, counted once
    drive(tmp_path / "b", model, torch.optim.SGD(extra.parameters(), lr=0.1), 1,
          data=(torch.randn(16, 4), torch.randn(16, 1)))
    got = open_run(tmp_path / "b" / "run.db").series("model/untrained_share").values.tolist()
    assert got == pytest.approx([40 / 45])


def test_unfreezing_shows_on_the_next_per_layer_step(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def unfreeze(step):
        if step == 1:
            model[0].requires_grad_(True)

    drive(tmp_path, model, opt, 4, on_step=unfreeze)
    vals = open_run(tmp_path / "run.db").series("model/untrained_share").values.tolist()
    assert vals == pytest.approx([16 / 21, 16 / 21, 0.0, 0.0])


def test_an_optimizer_over_master_copies_counts_only_the_frozen(tmp_path):
    """An optimizer that holds copies of the weights (DeepSpeed, fp32 masters), none of the module's own
    parameters: holding says nothing, so only requires_grad=False counts -- not 100% untrained."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    masters = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
    opt = torch.optim.SGD(masters, lr=0.1)
    drive(tmp_path, model, opt, 1)
    got = open_run(tmp_path / "run.db").series("model/untrained_share").values.tolist()
    assert got == pytest.approx([16 / 21])


def test_max_dropout_is_the_largest_drop_probability_of_the_models_dropout_modules(tmp_path):
    model = nn.Sequential(nn.Dropout(0.9), nn.Linear(3, 8), nn.ReLU(), nn.Dropout1d(0.2), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    drive(tmp_path / "a", model, opt, 5, every_n_steps=2)
    s = open_run(tmp_path / "a" / "run.db").series("model/max_dropout")
    assert s.steps.tolist() == [0, 2, 4]
    assert s.values.tolist() == pytest.approx([0.9] * 3)
    plain = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    drive(tmp_path / "b", plain, torch.optim.SGD(plain.parameters(), lr=0.1), 3, every_n_steps=2)
    assert open_run(tmp_path / "b" / "run.db").series("model/max_dropout").values.tolist() == [0.0, 0.0]
