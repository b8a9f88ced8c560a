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
