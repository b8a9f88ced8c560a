"""Activation statistics: hooks registered for the whole fit, recording only on the steps that measure, removed at
the end; what the patterns select; what is listed when something cannot be measured."""

import pytest
import pytorch_lightning as pl
import torch
from loop import drive
from models import loaders, trainer
from torch import nn

from dyncheck import DynamicsMonitor, open_run
from dyncheck.checks import evaluate
from dyncheck.collect import ActivationCollector
from dyncheck.measure.activations import activation_stats, select
from dyncheck.measure.naming import named_modules, named_parameters
from dyncheck.monitor import Monitor, MonitorConfig
from dyncheck.names import canonical_name
from dyncheck.report import write_report


def test_hooks_record_only_on_measuring_steps_and_values_match(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    hooked, active = [], []

    x, y = torch.randn(16, 3), torch.randn(16, 1)
    last = {}

    def on_step_record(step):  # after the step's forward and backward: the hooks of this step are still on
        hooked.append(bool(model[1]._forward_hooks))
        col = next(c for c in mon_ref[0].collectors if isinstance(c, ActivationCollector))
        active.append(col.fit.recorder.active)
        with torch.no_grad():  # lr 0: the weights never change, so this is the forward the hooks saw
            last[step] = activation_stats(torch.relu(model[0](x)), 1)

    mon_ref = [Monitor(MonitorConfig(sharpness_budget=0, activations_every_n_steps=3))]
    mon = drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.0), 6, every_n_steps=1, data=(x, y),
                monitor=mon_ref[0], on_step=on_step_record)
    # an eager model carries the hooks on the measuring steps only (a hooked module takes PyTorch's slow call
    # path on every step); a compiled one keeps them for the whole fit (test_compiled_model_keeps_hooks_all_fit)
    assert hooked == [True, False, False, True, False, False]
    assert active == [True, False, False, True, False, False]  # recording on the measuring steps only
    assert not model[1]._forward_hooks  # nothing left attached after the fit
    run = open_run(tmp_path / "run.db")
    s = run.series("act/mean/1")
    assert s.steps.tolist() == [0, 3]
    assert abs(s.values[0] - float(last[0][0])) < 1e-6  # lr 0: the weights never change
    assert "act/saturated/1" not in run and "act/dead/2" in run
    assert isinstance(next(c for c in mon.collectors if isinstance(c, ActivationCollector)), ActivationCollector)


def test_compiled_model_keeps_hooks_all_fit(tmp_path):
    """Under torch.compile the hooks stay for the whole fit (dynamo would not see one added after it traced),
    recording on the measuring steps only, and are removed at the end."""
    import torch._dynamo as dynamo

    dynamo.reset()
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    model = torch.compile(inner, backend="eager")
    hooked = []
    mon = Monitor(MonitorConfig(sharpness_budget=0, noise_budget=0, ntk_budget=0, activations_every_n_steps=3))
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.0), 6, every_n_steps=1,
          data=(torch.randn(16, 3), torch.randn(16, 1)), monitor=mon,
          on_step=lambda step: hooked.append(bool(inner[1]._forward_hooks)))
    dynamo.reset()
    assert hooked == [True] * 6
    assert not inner[1]._forward_hooks
    assert open_run(tmp_path / "run.db").series("act/mean/1").steps.tolist() == [0, 3]


# -- what the patterns select -------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0))
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(x + self.mlp(x + self.attn(x)))


def _nested():
    torch.manual_seed(0)
    return nn.Sequential(Block(), Block(), nn.Linear(4, 1))


_SKIPPED = (nn.Dropout,)


def _brute_select(model, patterns):
    """Leaves (not dropout) whose own name, or some ancestor's, matches a pattern; patterns that give none."""
    import fnmatch

    names = [n for n, _ in model.named_modules() if n]
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children()) and not isinstance(m, _SKIPPED)]
    chosen, unmatched = set(), []
    for p in patterns:
        got = {n for n, _ in leaves for a in names if fnmatch.fnmatchcase(a, p) and (n == a or n.startswith(a + "."))}
        chosen |= got
        if not got:
            unmatched.append(p)
    return [n for n, _ in leaves if n in chosen], unmatched


@pytest.mark.parametrize("patterns", [["0"], ["*.attn"], ["1.mlp", "2"], ["0.mlp.1", "*.norm"], ["*"],
                                      ["nomatch", "0.attn.1", "1.*"], ["0.attn.1"], ["?.mlp.?"]])
def test_patterns_select_leaves_and_subtrees(patterns):
    model = _nested()
    sel = select(model, patterns)
    assert ([n for n, _ in sel.modules], sel.unmatched) == _brute_select(model, patterns)
    assert all(not list(m.children()) for _, m in sel.modules)


def test_patterns_match_the_names_of_the_uncompiled_model():
    model = _nested()
    compiled = torch.compile(model)  # wrapping only: nothing is traced here
    assert [n for n, _ in compiled.named_modules()][1] == "_orig_mod"
    for patterns in (None, ["0"], ["*.attn"], ["1.mlp.0"]):
        ours, eager = select(compiled, patterns), select(model, patterns)
        assert [n for n, _ in ours.modules] == [n for n, _ in eager.modules]
        assert [m for _, m in ours.modules] == [m for _, m in eager.modules]


def test_canonical_names():
    assert canonical_name("_orig_mod.net.0.weight") == "net.0.weight"
    assert canonical_name("net._orig_mod.0.weight") == "net.0.weight"
    assert canonical_name("enc._checkpoint_wrapped_module.lin") == "enc.lin"
    assert canonical_name("_fsdp_wrapped_module.layer._orig_mod.bias") == "layer.bias"
    assert canonical_name("my_orig_mod.x") == "my_orig_mod.x" and canonical_name("a_b.c_d") == "a_b.c_d"
    assert canonical_name("module.fc.weight", "module.") == "fc.weight" and canonical_name("module", "module.") == ""
    assert canonical_name("module.fc.weight") == "module.fc.weight"  # a child called 'module' stays


def test_ddp_and_compile_wrappers_record_the_plain_names():
    model = _nested()
    plain = [n for n, _ in model.named_parameters()]
    assert [n for n, _ in named_parameters(torch.compile(model))] == plain
    assert [n for n, _ in named_parameters(nn.DataParallel(model))] == plain
    assert [n for n, _ in named_modules(nn.DataParallel(torch.compile(model)))] == \
        [n for n, _ in model.named_modules() if n]


# -- gaps are listed, warned about, reported and given as skip reasons ---------------------------------------------
def test_unmatched_patterns_are_listed_warned_and_reach_the_report_and_checks(tmp_path):
    model = _nested()
    with pytest.warns(UserWarning, match=r"patterns \['nomatch\.\*'\] match no module"):
        drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 4, every_n_steps=2,
              config=MonitorConfig(sharpness_budget=0, activation_modules=("nomatch.*",)))
    run = open_run(tmp_path / "run.db")
    acts = run.meta["activations"]
    assert acts["selected"] == [] and acts["unmatched_patterns"] == ["nomatch.*"] and run.metrics("act/*") == []
    result = evaluate(run)
    reason = {s.check: s.reason for s in result.skipped}["dead-units"]
    assert "no module was selected" in reason and "nomatch.*" in reason
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert "patterns that match no module worth measuring: nomatch.*" in text


class Attention(pl.LightningModule):
    """Self-attention over 4 tokens of the digits image rows: nn.MultiheadAttention computes its output projection
    with out_proj's weights (F.multi_head_attention_forward) without calling out_proj."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        h = self.inp(x.reshape(len(x), 4, 16))
        h, _ = self.attn(h, h, h)
        return nn.functional.cross_entropy(self.head(self.act(h).reshape(len(x), -1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_multihead_attention_out_proj_is_listed_as_never_ran(tmp_path):
    torch.manual_seed(0)
    train, _ = loaders(n=64, batch_size=16, val=False)
    mon = DynamicsMonitor(dirpath=tmp_path, sharpness_budget=0, every_n_steps=2)
    with pytest.warns(UserWarning, match=r"1 selected modules never ran .*\(attn\.out_proj\)"):
        trainer(tmp_path, [mon], max_steps=4, max_epochs=1, limit_val_batches=0).fit(Attention(), train)
    run = open_run(tmp_path / "run.db")
    acts = run.meta["activations"]
    assert acts["selected"] == ["inp", "attn.out_proj", "act", "head"]
    assert acts["never_ran"] == ["attn.out_proj"] and "MultiheadAttention" in acts["note"]
    assert acts["steps_without_statistics"] == [] and acts["measured_steps"] == 2
    assert run.metrics("act/mean/*") == ["act/mean/act", "act/mean/head", "act/mean/inp"]
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "1 selected modules never ran on a measuring step and have no statistics: attn.out_proj." in text


def test_gpt2_block_pattern_selects_the_block(tmp_path):
    """An HF GPT-2 from a tiny config; ``transformer.h.0`` names a block: its leaves are measured, not dropout."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    seen = {}
    ln2 = model.transformer.h[0].ln_2

    def keep(module, inputs, output):  # the reference: this module's output at each forward
        seen[len(seen)] = output.detach().double()

    ln2.register_forward_hook(keep)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(MonitorConfig(sharpness_budget=0, activation_modules=("transformer.h.0",)))
    mon.start(module=model, optimizers=[opt], store_path=tmp_path / "run.db", meta={}, every_n_steps=2)
    for step in range(3):
        mon.batch_start(step, ids)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        mon.before_optimizer_step(step, opt)
        opt.step()
        opt.zero_grad()
        mon.batch_end(step, loss.detach(), stepped=True)
    mon.finish("finished")
    run = open_run(tmp_path / "run.db")
    block = [n for n, m in model.named_modules() if n.startswith("transformer.h.0.") and not list(m.children())
             and not isinstance(m, nn.Dropout)]
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.0.ln_2"} <= set(block)
    acts = run.meta["activations"]
    assert acts["selected"] == block and acts["never_ran"] == [] and acts["unmatched_patterns"] == []
    assert run.metrics("act/mean/*") == sorted(f"act/mean/{n}" for n in block)
    s = run.series("act/std/transformer.h.0.ln_2")
    assert s.steps.tolist() == [0, 2]
    ref = seen[0]
    assert s.values[0] == pytest.approx(float((ref - ref.mean()).square().mean().sqrt()), rel=1e-5)


def test_skip_reasons_name_the_activation_gaps():
    from dyncheck.checks._activation_gaps import activation_gap_reason

    base = "no recorded metric matches act/dead/*: activation statistics were not recorded (...)"
    meta = {"activations": {"selected": ["a", "b"], "never_ran": ["b"], "unmatched_patterns": ["x*"],
                            "measured_steps": 4, "n_steps_without_statistics": 1, "note": "why"}}
    partial = activation_gap_reason(["act/dead/*"], "not enough points", meta)
    assert partial == ("not enough points; activation_modules patterns x* match no module; 1 selected modules "
                       "never ran (b); 1 of 4 measuring steps recorded no activation statistic (why)")
    assert activation_gap_reason(["loss/train"], "not enough points", meta) == "not enough points"
    assert activation_gap_reason(["act/dead/*"], base, {}) == base
    every_step = {"activations": {**meta["activations"], "never_ran": [], "n_steps_without_statistics": 4}}
    assert activation_gap_reason(["act/dead/*"], base, every_step) == (
        "no recorded metric matches act/dead/*: none of the 4 measuring steps recorded an activation statistic (why)")
    none_ran = {"activations": {**meta["activations"], "never_ran": ["a", "b"]}}
    assert "none of the 2 selected modules ran on a measuring step (why)" in \
        activation_gap_reason(["act/dead/*"], base, none_ran)


class _Elman(nn.Module):
    def __init__(self, nonlinearity: str, gain: float):
        super().__init__()
        self.rnn = nn.RNN(4, 16, batch_first=True, nonlinearity=nonlinearity)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_a_tanh_rnn_records_the_saturation_of_its_output_sequence(tmp_path, nonlinearity):
    torch.manual_seed(0)
    model = _Elman(nonlinearity, gain=5.0)
    x, y = torch.randn(32, 12, 4), torch.randn(32, 1)
    with torch.no_grad():
        seq, _ = model.rnn(x)  # lr 0: the forward the hooks see at every step
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.0), 2, every_n_steps=1, data=(x, y),
          monitor=Monitor(MonitorConfig(sharpness_budget=0, activations_every_n_steps=1)))
    run = open_run(tmp_path / "run.db")
    if nonlinearity == "relu":  # unbounded: no flat tails
        assert "act/saturated/rnn" not in run and "act/dead/rnn" in run
        return
    ref = sum(1 for v in seq.flatten().tolist() if abs(v) >= 0.98) / seq.numel()  # brute force
    got = run.series("act/saturated/rnn").values
    assert ref > 0.5 and got[0] == pytest.approx(ref, abs=1e-6)  # gain 5: a chaotic, saturated recurrence
