"""The sharpness probe on real model code, through real Lightning and HF Trainers: HF GPT-2 without attention dropout
(the fused CPU attention kernel, no double backward) fed ``BatchEncoding`` batches, ``nn.TransformerEncoder``,
``torch.compile``, gradient checkpointing both ways, bf16-mixed. Each: sharpness recorded, against an exact eager
float32 reference (tolerance per context), the context and precision in meta, the training bit-identical with and
without the monitor. And a probe that cannot run in any context: its reason reaches the report and ``dyncheck
check``."""

import os

import pytest
import torch
from models import trainer
from probe_models import (
    Encoder,
    Lit,
    Weights,
    gpt2,
    lm_loss,
    mlp,
    mse_loss,
    reference_top_eig,
    seq_loader,
    token_loader,
)

from dyncheck import DynamicsMonitor, open_run

transformers = pytest.importorskip("transformers")

#: relative tolerance against the exact float32 reference, per probe context
TOL = {"double-backward": 1e-4, "finite-difference": 1e-3}

CASES = {  # case: (module, loader, loss, the context that must run)
    "gpt2-fused-attention": (lambda: Lit(gpt2(), lm_loss), token_loader, lm_loss, "double-backward"),
    "transformer-encoder": (lambda: Lit(Encoder(), mse_loss), seq_loader, mse_loss, "double-backward"),
    "checkpoint-non-reentrant": (lambda: Lit(gpt2("non-reentrant"), lm_loss), token_loader, lm_loss,
                                 "double-backward"),
    "checkpoint-reentrant": (lambda: Lit(gpt2("reentrant"), lm_loss), token_loader, lm_loss, "finite-difference"),
    "torch-compile": (lambda: Lit(mlp(), mse_loss, compiled=True), seq_loader, mse_loss, "double-backward"),
    # trainer.fit(torch.compile(module)): Lightning compiles forward and training_step (from_compiled)
    "torch-compile-lightning-module": (lambda: Lit(mlp(), mse_loss), seq_loader, mse_loss, "double-backward"),
}
COMPILED_AT_FIT = {"torch-compile-lightning-module"}


def _fit(tmp_path, lit, loader, monitor=True, precision="32-true", steps=3, compile_module=False, **options):
    weights = Weights([0, 2])
    callbacks = [weights]
    if monitor:
        callbacks.append(DynamicsMonitor(dirpath=tmp_path / "run", sharpness_every_n_steps=2, report=False,
                                         rules=None, **options))
    tr = trainer(tmp_path, callbacks, max_steps=steps, max_epochs=None, precision=precision)
    tr.fit(torch.compile(lit) if compile_module else lit, loader)
    return weights.at


def _same_training(tmp_path, build, loader, precision="32-true", compile_module=False):
    """The final weights of the same fit without the monitor are bit-identical."""
    torch._dynamo.reset()
    plain = build()
    _fit(tmp_path / "plain", plain, loader(), monitor=False, precision=precision, compile_module=compile_module)
    return plain.state_dict()


@pytest.mark.parametrize("case", list(CASES))
def test_sharpness_is_measured_on_real_model_code(tmp_path, case):
    build, loader, loss, context = CASES[case]
    compiled = case.startswith("torch-compile")
    if compiled:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    lit = build()
    at = _fit(tmp_path, lit, loader(), compile_module=case in COMPILED_AT_FIT)
    if compiled:  # the training ran compiled graphs (aot_autograd: no double backward)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    batch = next(iter(loader()))
    with open_run(tmp_path / "run") as run:
        assert run.meta["measurement_errors"] == []
        probe = run.meta["sharpness_probe"]
        assert probe["context"] == context and probe["probes"] == {context: 2}
        s = run.series("sharpness/top_eig")
        assert s.steps.tolist() == [0, 2]
        for step, value in zip(s.steps.tolist(), s.values.tolist()):
            want = reference_top_eig(lit.model, at[step], loss, batch)
            assert value == pytest.approx(want, rel=TOL[context]), (step, value, want)
    if context == "finite-difference":  # why the exact context did not run, in meta
        assert probe["precision"] == "float32"
        assert [e["context"] for e in probe["failed"]] == ["double-backward"]
        assert "use_reentrant=True" in probe["failed"][0]["message"]
        q, q4 = probe["fd_check"]  # v'Hv at the step and a quarter of it: the loss is smooth there
        assert q == pytest.approx(q4, rel=1e-3)
    else:
        assert probe["failed"] == [] and probe["precision"].startswith("32-true")
    plain = _same_training(tmp_path, build, loader, compile_module=case in COMPILED_AT_FIT)
    watched = lit.state_dict()
    for k in plain:
        assert torch.equal(plain[k], watched[k]), k


def test_the_report_says_how_the_probe_ran(tmp_path):
    """Reentrant checkpointing: the report's run facts name the context that ran, its precision, and the one that
    failed before it."""
    mon = DynamicsMonitor(dirpath=tmp_path / "run", sharpness_every_n_steps=2, report=True)
    trainer(tmp_path, [mon], max_steps=3, max_epochs=None).fit(Lit(gpt2("reentrant"), lm_loss), token_loader())
    html = (tmp_path / "run" / "report.html").read_text()
    assert "(finite-difference, float32; failed: double-backward: RuntimeError)" in html


def test_contexts_benchmark_runs(tmp_path):
    """benchmarks/sharpness_contexts.py --quick (one repeat, GPT-2 only): every context's row is printed, and the
    exact and FD rows are near the reference (accuracy figures come from the full run)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "sharpness_contexts.py"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {line[23:45].strip(): line.split() for line in proc.stdout.splitlines() if line.startswith("gpt2 (init)")}
    assert set(rows) == {"exact-math-sdpa", "fd (1e-5, default)", "fd (1e-4)", "fd (1e-6)", "bf16-autocast",
                         "fd-reentrant (1e-5)"}
    for key in ("exact-math-sdpa", "fd (1e-5, default)", "fd-reentrant (1e-5)"):
        err = float(rows[key][rows[key].index(key.split()[-1]) + 3])  # reference, probe, rel err
        assert err < 1e-3, (key, rows[key])
    assert rows["fd-reentrant (1e-5)"][-1] == "recorded"


@pytest.mark.parametrize("checkpointing", [None, "reentrant"])
def test_bf16_mixed_probe_runs_under_the_training_autocast_and_fd_in_float32(tmp_path, checkpointing):
    """bf16-mixed: the exact probe's forward runs under the precision plugin's autocast (as the training's), the
    finite-difference probe's in float32 (its value is the float32 loss's, to the FD tolerance)."""
    build = lambda: Lit(gpt2(checkpointing), lm_loss)  # noqa: E731
    lit = build()
    at = _fit(tmp_path, lit, token_loader(), precision="bf16-mixed")
    batch = next(iter(token_loader()))
    with open_run(tmp_path / "run") as run:
        assert run.meta["measurement_errors"] == []
        probe = run.meta["sharpness_probe"]
        s = run.series("sharpness/top_eig")
        assert s.steps.tolist() == [0, 2]
        for step, value in zip(s.steps.tolist(), s.values.tolist()):
            fp32 = reference_top_eig(lit.model, at[step], lm_loss, batch)
            if checkpointing is None:  # the bf16 loss's Hessian: within bf16's rounding of the float32 one
                assert value == pytest.approx(fp32, rel=2e-2) and value != pytest.approx(fp32, rel=1e-5)
            else:
                assert value == pytest.approx(fp32, rel=TOL["finite-difference"]), (value, fp32)
    if checkpointing is None:
        assert probe["context"] == "double-backward"
        assert probe["precision"] == "bf16-mixed (the precision plugin's train_step_context)"
        assert lit.autocast == [True] * 5  # 3 training steps, 2 probes (one forward each)
    else:
        assert probe["context"] == "finite-difference" and probe["precision"] == "float32"
        # the probe at step 0 comes first: its exact attempt under autocast, then its FD forwards without it; the
        # 3 training steps under autocast; the probe at step 2 by FD at once (without autocast)
        assert lit.autocast[:2] == [True, False] and lit.autocast.count(True) == 1 + 3 and len(lit.autocast) > 10
    plain = _same_training(tmp_path, build, token_loader, precision="bf16-mixed")
    watched = lit.state_dict()
    for k in plain:
        assert torch.equal(plain[k], watched[k]), k


class _FirstBatch(transformers.TrainerCallback):
    """The weights at the start of each step, the first training batch as the model gets it, and whether autocast
    was on in each forward."""

    def __init__(self):
        self.at, self.batch, self.handle, self.autocast = {}, None, None, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def pre(module, a, kw):
            if self.batch is None and module.training and kw:
                self.batch = {k: v.detach().clone() for k, v in kw.items() if k != "num_items_in_batch"}

        self.handle = model.register_forward_pre_hook(pre, with_kwargs=True)
        # inside the model's forward (accelerate wraps it in its autocast): every call, the training's and probes'
        model.lm_head.register_forward_pre_hook(lambda m, a: self.autocast.append(torch.is_autocast_enabled("cpu")))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.at[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()


def _hf_fit(tmp_path, callbacks, steps=5, **kw):
    model = gpt2()
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 64, (32, 16), generator=g)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps,
                                          per_device_train_batch_size=8, save_strategy="no", report_to=[],
                                          use_cpu=True, seed=0, disable_tqdm=True, bf16=True, logging_steps=5, **kw)
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=list(callbacks)).train()
    return model


def test_hf_trainer_gpt2_without_dropout_bf16(tmp_path):
    """HF Trainer, GPT-2 with attention dropout 0 (fused attention) and bf16: measured by double backward under
    the Trainer's autocast, the value of the bf16 loss; the training is bit-identical."""
    from dyncheck.adapters.hf import DynamicsMonitorCallback

    ref = _FirstBatch()
    # the noise scale's and the NTK's probes off: every forward of the fit is counted below
    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", sharpness_every_n_steps=2, report=False, rules=None,
                                 noise_budget=0, ntk_budget=0)
    watched = _hf_fit(tmp_path / "watched", [ref, cb])
    assert ref.autocast == [True] * (5 + 2)  # 5 training steps, 2 probes: every forward under autocast
    with open_run(tmp_path / "run") as run:
        assert run.meta["measurement_errors"] == []
        probe = run.meta["sharpness_probe"]
        assert probe["context"] == "double-backward" and probe["failed"] == []
        assert probe["precision"] == "bf16 autocast on cpu (the Trainer's mixed precision)"
        s = run.series("sharpness/top_eig")
        assert s.steps.tolist() == [2, 4]  # step 0 had no batch to copy yet

        def hf_loss(model, batch):
            return model(**batch).loss

        for step, value in zip(s.steps.tolist(), s.values.tolist()):
            fp32 = reference_top_eig(watched, ref.at[step], hf_loss, ref.batch)
            assert value == pytest.approx(fp32, rel=2e-2) and value != pytest.approx(fp32, rel=1e-5)
    plain = _hf_fit(tmp_path / "plain", [])
    a, b = plain.state_dict(), watched.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_hf_trainer_reentrant_checkpointing_bf16_probes_by_fd_in_float32(tmp_path):
    """HF Trainer with reentrant gradient checkpointing and bf16: no double backward, so finite differences, in
    float32 -- accelerate's autocast-wrapped forward is bypassed for the probe's forwards only -- at the float32
    value; the training is bit-identical."""
    from dyncheck.adapters.hf import DynamicsMonitorCallback

    kw = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}}
    ref = _FirstBatch()
    # the noise scale's and the NTK's probes off: every forward of the fit is counted below
    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", sharpness_every_n_steps=2, report=False, rules=None,
                                 noise_budget=0, ntk_budget=0)
    watched = _hf_fit(tmp_path / "watched", [ref, cb], **kw)
    # training forwards under autocast; each probe: the exact attempt (step 2 only) under it, its FD ones without
    probe_forwards = [a for a in ref.autocast if not a]
    assert ref.autocast.count(True) == 5 + 1 and len(probe_forwards) >= 2 * 2 * 4
    assert ref.autocast[:2] == [True, True] and ref.autocast[-1] is True  # step 0, step 1's; the last step's
    with open_run(tmp_path / "run") as run:
        assert run.meta["measurement_errors"] == []
        probe = run.meta["sharpness_probe"]
        assert probe["context"] == "finite-difference" and probe["precision"] == "float32"
        assert probe["failed"][0]["context"] == "double-backward"
        s = run.series("sharpness/top_eig")
        assert s.steps.tolist() == [2, 4]
        for step, value in zip(s.steps.tolist(), s.values.tolist()):
            fp32 = reference_top_eig(watched, ref.at[step], lambda m, b: m(**b).loss, ref.batch)
            assert value == pytest.approx(fp32, rel=TOL["finite-difference"]), (value, fp32)
    assert "forward" in vars(watched)  # accelerate's wrapper is back in place after the probes
    plain = _hf_fit(tmp_path / "plain", [], **kw)
    a, b = plain.state_dict(), watched.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_probe_that_fails_in_every_context_says_why_in_meta_report_and_check(tmp_path, capsys):
    """Every context fails: sharpness is off with each context's error, and the report and ``dyncheck check`` give
    that reason for the skipped sharpness checks, not 'too short for the time budget'."""
    from dyncheck.cli import main

    def broken(module, batch):
        raise RuntimeError("the probe's loss is broken")

    mon = DynamicsMonitor(dirpath=tmp_path / "run", sharpness_every_n_steps=2, sharpness_loss_fn=broken, noise_budget=0,
                          report=True)
    with pytest.warns(UserWarning, match="sharpness measurement failed"):
        trainer(tmp_path, [mon], max_steps=3, max_epochs=None).fit(Lit(mlp(), mse_loss), seq_loader())
    with open_run(tmp_path / "run") as run:
        (err,) = run.meta["measurement_errors"]
        assert err["measurement"] == "sharpness" and err["step"] == 0
        assert err["message"] == ("every probe context failed: double-backward: RuntimeError: the probe's loss is "
                                  "broken; finite-difference: RuntimeError: the probe's loss is broken")
        assert [e["context"] for e in run.meta["sharpness_probe"]["failed"]] == ["double-backward",
                                                                                 "finite-difference"]
        assert run.meta["sharpness_probe"]["context"] is None
    said = "sharpness failed at step 0 and was turned off for the rest of the run (MeasureError: every probe"
    html = (tmp_path / "run" / "report.html").read_text()
    section = html.split('id="sharpness"')[-1].split("</section>")[0]
    assert 'id="sharpness"' in html and said in section and "too short" not in section
    main(["check", str(tmp_path / "run"), "--fail-on", "never"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"skipped edge-of-stability: {said}" in out
    assert "finite-difference: RuntimeError: the probe's loss is broken)" in out  # every context's reason

