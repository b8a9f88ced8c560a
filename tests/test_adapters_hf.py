"""The Hugging Face ``TrainerCallback`` through real ``transformers.Trainer`` runs on a tiny random-init GPT-2,
against brute-force references and the Trainer's own logged numbers."""

import math
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dyncheck import ConfigError, open_run  # noqa: E402
from dyncheck.adapters.hf import DynamicsMonitorCallback  # noqa: E402


def _model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    return transformers.GPT2LMHeadModel(cfg)


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (n, 16), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


class Reference(transformers.TrainerCallback):
    """Per-parameter gradient norms the slow obvious way, where the monitor reads them."""

    def __init__(self):
        self.grad = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grad[state.global_step] = {n: p.grad.double().norm().item() for n, p in model.named_parameters()
                                        if p.grad is not None}


def _fit(tmp_path, callbacks, steps=20, **kw):
    model = _model()
    kw = {"per_device_train_batch_size": 8, "logging_steps": 5, "save_strategy": "no", "report_to": [],
          "use_cpu": True, "seed": 0, "disable_tqdm": True, **kw}
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, **kw)
    data = _data()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:16],
                                   callbacks=list(callbacks))
    trainer.train()
    return model, trainer


def _logged(trainer, key):
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


def test_records_the_trainers_steps(tmp_path):
    ref = Reference()
    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", every_n_steps=4, report=False)
    _, trainer = _fit(tmp_path, [ref, cb], steps=20, max_grad_norm=0.0, eval_strategy="steps", eval_steps=10)
    with open_run(tmp_path / "run") as run:
        assert run.meta["status"] == "finished" and run.meta["measurement_errors"] == []
        assert run.meta["trainer"]["framework"] == "transformers.Trainer"
        loss = run.series("loss/train")
        assert list(loss.steps) == list(range(20))
        for step, value in _logged(trainer, "loss").items():  # the Trainer's mean over each logging window
            assert loss.values[step - 5:step].mean() == pytest.approx(value, rel=1e-5)
        total = run.series("grad_norm/total")
        assert list(total.steps) == list(range(20))
        for step, value in _logged(trainer, "grad_norm").items():  # the Trainer's own norm (no clipping)
            assert total.values[step - 1] == pytest.approx(value, rel=1e-5)
        for step in (0, 13, 19):
            want = math.sqrt(sum(v ** 2 for v in ref.grad[step].values()))
            assert total.values[step] == pytest.approx(want, rel=1e-5)
        name = "transformer.h.0.mlp.c_fc.weight"
        s = run.series(f"grad_norm/{name}")
        assert list(s.steps) == [0, 4, 8, 12, 16]
        np.testing.assert_allclose(s.values, [ref.grad[t][name] for t in s.steps], rtol=1e-5)
        assert list(run.series("act/mean/transformer.h.1.mlp.c_proj").steps) == [0, 4, 8, 12, 16]
        lr = run.series("lr/AdamW/pg0")
        assert len(lr.steps) == 20 and lr.values.max() <= 5e-5
        val = run.series("loss/val")
        evals = _logged(trainer, "eval_loss")
        assert list(val.steps) == sorted(evals)
        np.testing.assert_allclose(val.values, [evals[s] for s in val.steps], rtol=1e-6)
        assert "logged/learning_rate" in run.metrics()


def test_gradient_accumulation_and_clipping(tmp_path):
    ref = Reference()
    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", every_n_steps=5, report=False, rules=None)
    _, trainer = _fit(tmp_path, [ref, cb], steps=10, gradient_accumulation_steps=2, max_grad_norm=0.5)
    with open_run(tmp_path / "run") as run:
        loss = run.series("loss/train")
        assert list(loss.steps) == list(range(10))
        for step, value in _logged(trainer, "loss").items():
            assert loss.values[step - 5:step].mean() == pytest.approx(value, rel=1e-5)
        total = run.series("grad_norm/total")  # after the Trainer's clipping
        assert total.values.max() <= 0.5 * (1 + 1e-5)
        for step in (0, 9):
            assert total.values[step] == pytest.approx(math.sqrt(sum(v ** 2 for v in ref.grad[step].values())),
                                                       rel=1e-5)


def test_training_is_bit_identical_with_and_without(tmp_path):
    """Dropout (GPT-2's default 0.1), sharpness probes and activation hooks: the same final parameters."""
    plain, _ = _fit(tmp_path / "plain", [], steps=10)
    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", every_n_steps=1, sharpness_every_n_steps=4,
                                 sharpness_max_iter=4, report=False, rules=None)
    watched, _ = _fit(tmp_path / "watched", [cb], steps=10)
    with open_run(tmp_path / "run") as run:
        assert list(run.series("sharpness/top_eig").steps) == [4, 8]  # step 0 had no batch to copy yet
        assert run.meta["measurement_errors"] == []
    a, b = plain.state_dict(), watched.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"DynamicsMonitorCallback\(every_n_steps=0\): expected an int >= 1"):
        DynamicsMonitorCallback(every_n_steps=0)
    with pytest.raises(ConfigError, match=r"unexpected keyword argument 'dir_path'; did you mean 'dirpath'"):
        DynamicsMonitorCallback(dir_path="x")


def test_readme_hf_example(tmp_path, monkeypatch):
    """The README section "Hugging Face Trainer" runs as shown."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Hugging Face Trainer"):]
    section = section[:section.index("\n## ", 5)]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    with open_run(tmp_path / "hf-out" / "dyncheck") as run:
        assert run.meta["status"] == "finished"
        assert {"loss/train", "loss/val", "grad_norm/total", "act/mean/lm_head"} <= set(run.metrics())
    assert (tmp_path / "hf-out" / "dyncheck" / "report.html").exists()


def test_stop_on_stops_the_trainer(tmp_path):
    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", stop_on="error", flush_every_n_steps=5, report=False,
                                 sharpness_budget=0)
    _, trainer = _fit(tmp_path, [cb], steps=100, learning_rate=1e4, optim="sgd", max_grad_norm=0.0,
                      logging_steps=50)  # diverges: the gradients go non-finite within a few steps
    assert cb.stopped_by is not None and cb.stopped_by.severity == "error"
    assert trainer.state.global_step < 100
    with open_run(tmp_path / "run") as run:
        assert run.meta["status"] == "finished" and run.meta["stopped_by"]["check"] == cb.stopped_by.check


def test_counts_and_mirror_reach_the_trainers_tensorboard(tmp_path, monkeypatch):
    """report_to=["tensorboard"]: the finding counts and (mirror=True) the summary series land in the Trainer's own
    event files through its TensorBoardCallback, at their steps, before it closes its writer."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dyncheck._evaluation import mirrored_series

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", every_n_steps=4, mirror=True, report=False,
                                 sharpness_every_n_steps=5)
    _, trainer = _fit(tmp_path, [cb], steps=20, report_to=["tensorboard"])
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("DynamicsMonitorCallback") < names.index("TensorBoardCallback")  # moved before it
    want = mirrored_series(tmp_path / "run" / "run.db")
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/dyncheck/grad_norm_total", "train/dyncheck/sharpness",
            "train/dyncheck/errors", "train/dyncheck/warnings"} <= scalars
    got = [(e.step, e.value) for e in acc.Scalars("train/dyncheck/grad_norm_total")]
    assert got == [(s, pytest.approx(row["dyncheck/grad_norm_total"], rel=1e-6)) for s, row in sorted(want.items())
                   if "dyncheck/grad_norm_total" in row]
    sharp = [e.step for e in acc.Scalars("train/dyncheck/sharpness")]
    assert sharp == sorted(s for s, row in want.items() if "dyncheck/sharpness" in row) and len(sharp) >= 3
    assert [e.step for e in acc.Scalars("train/dyncheck/errors")] == [20]
    assert any("dyncheck/findings" in t for t in acc.Tags()["tensors"])  # add_text


CRASHING = r'''
import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, {tests!r})
import transformers
from test_adapters_hf import _fit
from dyncheck.adapters.hf import DynamicsMonitorCallback


class Boom(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 7:
            raise {exc}("simulated failure at step 7")


from pathlib import Path
_fit(Path({tmp!r}), [DynamicsMonitorCallback(dirpath={run!r}, every_n_steps=2, sharpness_budget=0), Boom()],
     steps=20)
'''


@pytest.mark.parametrize("exc, status", [("RuntimeError", "crashed"), ("KeyboardInterrupt", "interrupted")])
def test_a_trainer_that_raises_marks_the_run(tmp_path, exc, status):
    """The Trainer calls no callback when it raises: the atexit handler closes the run with the exception."""
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "crash.py"
    script.write_text(CRASHING.format(tests=here, exc=exc, tmp=str(tmp_path), run=str(tmp_path / "run")))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode != 0 and "simulated failure at step 7" in proc.stderr, proc.stderr[-2000:]
    with open_run(tmp_path / "run") as run:
        assert run.meta["status"] == status
        assert "simulated failure at step 7" in str(run.meta["exception"])
        assert run.series("loss/train").steps.max() >= 6
    assert (tmp_path / "run" / "findings.json").exists() and (tmp_path / "run" / "report.html").exists()


def test_a_caught_exception_leaves_the_run_running(tmp_path):
    """In-process, a caught exception is not seen: the run stays 'running' (the gate never passes it)."""

    class Boom(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise RuntimeError("caught")

    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", sharpness_budget=0, report=False)
    with pytest.raises(RuntimeError, match="caught"):
        _fit(tmp_path, [cb, Boom()], steps=10)
    cb._at_exit()  # what the interpreter does at exit
    with open_run(tmp_path / "run") as run:
        assert run.meta["status"] == "crashed"
        assert "exited before the Trainer's on_train_end" in str(run.meta["exception"])


def test_two_processes_through_the_trainers_accelerate_backend(tmp_path):
    """DDP on two CPU processes (gloo) through the Trainer's own accelerate backend: rank 0 alone writes the store;
    gradients are measured after the all-reduce, the loss is the mean over the ranks, sharpness does not hang."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(sys.path))
        procs.append(subprocess.Popen([sys.executable, os.path.join(here, "hf_ddp_script.py"), str(tmp_path)],
                                      env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two-process Trainer run hung")
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert [p.name for p in tmp_path.rglob("*.db")] == ["run.db"]  # only rank 0 wrote
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    with open_run(tmp_path / "run") as run:
        assert run.meta["status"] == "finished" and run.meta["trainer"]["world_size"] == 2
        assert run.meta["measurement_errors"] == []
        loss = run.series("loss/train")
        assert list(loss.steps) == list(range(12))
        # each rank's model loss is its token sum over the tokens of both ranks (average_tokens_across_devices):
        # the step's loss is their sum, the mean over the ranks of world_size x each
        step_loss = [ranks[0]["loss"][str(s)] + ranks[1]["loss"][str(s)] for s in range(12)]
        np.testing.assert_allclose(loss.values, step_loss, rtol=1e-5)
        assert ranks[0]["loss"]["0"] != pytest.approx(ranks[1]["loss"]["0"])  # the ranks saw different batches
        name = "transformer.h.1.attn.c_attn.weight"
        s = run.series(f"grad_norm/{name}")
        assert list(s.steps) == [0, 3, 6, 9]
        for r in ranks:  # all-reduced: the same final gradient on both ranks
            np.testing.assert_allclose(s.values, [r["grad"][str(t)][name] for t in s.steps], rtol=1e-5)
        assert len(run.series("sharpness/top_eig")) >= 2
        logged = {h["step"]: h["loss"] for h in ranks[0]["log"] if "loss" in h}  # the Trainer's mean over ranks
        for step, value in logged.items():
            assert loss.values[step - 4:step].mean() == pytest.approx(value, rel=1e-4)


def test_mirror_reaches_the_trainers_wandb_and_mlflow(tmp_path, monkeypatch):
    """report_to=["wandb", "mlflow"] (W&B offline, an MLflow file store): the summary series reach both through
    the Trainer's own integration callbacks, at their steps."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from test_mirror import wandb_history

    from dyncheck._evaluation import mirrored_series

    uri = f"file:{tmp_path / 'mlruns'}"
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wb"),
                 "WANDB_PROJECT": "dyncheck-test", "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_TRACKING_URI": uri,
                 "MLFLOW_EXPERIMENT_NAME": "dyncheck-test"}.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "wb").mkdir()
    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", mirror=True, report=False, sharpness_budget=0)
    _fit(tmp_path, [cb], steps=12, report_to=["wandb", "mlflow"])
    import wandb

    wandb.finish()
    want = mirrored_series(tmp_path / "run" / "run.db")
    expect = {s: row["dyncheck/grad_norm_total"] for s, row in want.items()}
    assert sorted(expect) == list(range(12))
    history, _ = wandb_history(tmp_path / "wb")
    assert "train/dyncheck/grad_norm_total" in history, {k: v[:3] for k, v in history.items()}
    assert dict(history["train/dyncheck/grad_norm_total"]) == pytest.approx(expect, rel=1e-6)
    assert "train/dyncheck/findings" in history and "train/dyncheck/errors" in history
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dyncheck-test").experiment_id])
    got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "dyncheck/grad_norm_total")}
    assert got == pytest.approx(expect, rel=1e-6)


def test_bert_sequence_classification_sharpness_activations_output(tmp_path):
    """A tiny random-init BERT classifier (SDPA attention, dropout 0) under the HF Trainer: sharpness by exact
    double backward (math attention backend), a non-leaf pattern (``bert.encoder.layer.0``) selects that layer's
    leaves, the output facts come from the logits, and the training is bit-identical with and without the
    callback. (The probe batch is the first batch the model gets, so the first probe is at step 2 here; the exact
    values of the contexts are checked against references in tests/test_probe_contexts.py.)"""

    def model():
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=16, num_labels=3,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return transformers.BertForSequenceClassification(cfg)

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64, (32, 12), generator=g)
    labels = torch.randint(0, 3, (32,), generator=g)
    data = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y} for i, y in zip(ids, labels)]

    def fit(callbacks):
        m = model()
        args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, use_cpu=True,
                                              per_device_train_batch_size=8, save_strategy="no", report_to=[],
                                              seed=0, disable_tqdm=True, logging_steps=2)
        transformers.Trainer(model=m, args=args, train_dataset=data, callbacks=callbacks).train()
        return m

    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", sharpness_every_n_steps=2, every_n_steps=2,
                                 activation_modules=["bert.encoder.layer.0"], report=False, rules=None,
                                 noise_budget=0, ntk_budget=0)
    watched = fit([cb])
    plain = fit([])
    assert all(torch.equal(a, b) for a, b in zip(watched.parameters(), plain.parameters()))
    with open_run(tmp_path / "run") as run:
        assert run.meta["measurement_errors"] == []
        assert run.meta["sharpness_probe"]["context"] == "double-backward"
        top = run.series("sharpness/top_eig")
        assert top.steps.tolist() == [2, 4] and np.all(np.isfinite(top.values)) and np.all(top.values > 0)
        acts = {m.split("/", 2)[2] for m in run.metrics() if m.startswith("act/mean/")}
        assert acts and all(a.startswith("bert.encoder.layer.0.") for a in acts)
        assert "bert.encoder.layer.0.attention.self.query" in acts
        assert run.meta["output"]["shape"] == [8, 3]
        assert run.series("output/prob_rows").values.tolist() == [0.0, 0.0, 0.0]
