"""The monitor never disturbs training; it survives crashes, interrupts and resumes; it rejects bad options."""

import signal

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from dyncheck import ConfigError, DynamicsMonitor, open_run
from models import CNN, MLP, loaders, trainer


def _train(tmp_path, monitor, model_cls, **tr):
    pl.seed_everything(1234)
    model = model_cls()
    losses = []

    class Rec(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    cbs = [Rec()] + ([monitor] if monitor else [])
    trainer(tmp_path, cbs, **tr).fit(model, *loaders(shuffle=True, flat=model_cls is MLP))
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_cls", [CNN, lambda: MLP(dropout=0.3, batchnorm=True, momentum=0.9)])
def test_monitor_does_not_change_training(tmp_path, model_cls):
    """Same seed, bit-identical losses and final weights with and without the monitor measuring everything
    every step (dropout draws random numbers, BatchNorm keeps running statistics, sharpness probes run)."""
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=1, activations_every_n_steps=1,
                          sharpness_every_n_steps=2, flush_every_n_steps=3)
    with_losses, with_state = _train(tmp_path / "a", mon, model_cls)
    plain_losses, plain_state = _train(tmp_path / "b", None, model_cls)
    assert with_losses == plain_losses
    assert with_state.keys() == plain_state.keys()
    for k in plain_state:
        assert torch.equal(with_state[k], plain_state[k]), k
    assert len(open_run(tmp_path / "run").series("sharpness/top_eig")) == 8


class Crashing(MLP):
    def __init__(self, at, exc):
        super().__init__()
        self.hparams.pop("exc", None)  # keep the checkpoint loadable with weights_only=True
        self.at, self.exc = at, exc

    def training_step(self, batch, batch_idx):
        if self.global_step == self.at:
            raise self.exc
        return super().training_step(batch, batch_idx)


def test_crash_keeps_everything_measured_and_records_the_ending(tmp_path):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=2, flush_every_n_steps=100)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [mon], max_epochs=3).fit(Crashing(11, RuntimeError("boom")), *loaders(flat=True))
    run = open_run(tmp_path / "run")
    np.testing.assert_array_equal(run.series("loss/train").steps, np.arange(11))
    np.testing.assert_array_equal(run.series("grad_norm/net.0.weight").steps, [0, 2, 4, 6, 8, 10])
    assert run.series("loss/val").steps.tolist() == [8]
    assert run.meta["status"] == "crashed"
    assert run.meta["exception"] == {"type": "RuntimeError", "message": "boom"}


def test_keyboard_interrupt_recorded_as_interrupted(tmp_path):
    mon = DynamicsMonitor(dirpath=tmp_path / "run")
    old = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning shuts down gracefully, then exits
            trainer(tmp_path, [mon]).fit(Crashing(5, KeyboardInterrupt()), *loaders(flat=True))
    finally:
        signal.signal(signal.SIGINT, old)
    run = open_run(tmp_path / "run")
    assert run.meta["status"] == "interrupted" and run.meta["exception"]["type"] == "KeyboardInterrupt"
    assert run.series("loss/train").steps.tolist() == [0, 1, 2, 3, 4]


def test_resume_continues_series_without_duplicates_or_gaps(tmp_path):
    """Uninterrupted run vs. a run that checkpoints each epoch, crashes in epoch 3 and resumes from the epoch-2
    checkpoint in a new Trainer with a new monitor: the same series, step for step."""
    kw = dict(every_n_steps=3, flush_every_n_steps=2)
    pl.seed_everything(7)
    trainer(tmp_path / "ref", [DynamicsMonitor(dirpath=tmp_path / "ref_run", **kw)], max_epochs=4).fit(
        MLP(), *loaders(flat=True))

    pl.seed_everything(7)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    model = Crashing(20, RuntimeError("preempted"))
    with pytest.raises(RuntimeError):
        trainer(tmp_path / "a", [DynamicsMonitor(dirpath=tmp_path / "run", **kw), ckpt], max_epochs=4,
                enable_checkpointing=True).fit(model, *loaders(flat=True))
    assert open_run(tmp_path / "run").series("loss/train").steps.max() == 19  # it got past the checkpoint
    last = sorted((tmp_path / "ckpt").glob("epoch=1*.ckpt"))[0]
    state = torch.load(last, weights_only=False)["callbacks"]
    assert any(k.startswith("DynamicsMonitor") for k in state)

    pl.seed_everything(7)
    resumed = MLP()
    trainer(tmp_path / "b", [DynamicsMonitor(dirpath=tmp_path / "run", **kw)], max_epochs=4,
            enable_checkpointing=True).fit(resumed, *loaders(flat=True), ckpt_path=last)
    run, ref = open_run(tmp_path / "run"), open_run(tmp_path / "ref_run")
    for name in ("loss/train", "loss/val", "grad_norm/total", "grad_norm/net.0.weight", "lr/SGD/pg0"):
        a, b = run.series(name), ref.series(name)
        np.testing.assert_array_equal(a.steps, b.steps, err_msg=name)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-5, err_msg=name)
    assert run.meta["status"] == "finished" and run.meta["resumed_from_step"] == 16
    assert run.meta["resume_dropped_chunks"] > 0
    # not only hidden by the reader's last-write-wins: the file holds each step once
    import sqlite3

    con = sqlite3.connect(run.path)
    stored = con.execute("SELECT SUM(c.n) FROM chunks c JOIN metrics m ON m.id = c.metric_id "
                         "WHERE m.name = 'loss/train'").fetchone()[0]
    assert stored == len(run.series("loss/train")) == 32


@pytest.mark.parametrize("kwargs,match", [
    ({"every_n_steps": -1}, r"every_n_steps=-1\): expected an int >= 1 or None"),
    ({"every_n_steps": 2.5}, r"every_n_steps=2.5\): expected an int"),
    ({"scalars_every_n_steps": 0}, r"scalars_every_n_steps=0\): expected an int >= 1"),
    ({"flush_every_n_steps": True}, r"flush_every_n_steps=True\)"),
    ({"sharpness_budget": 1.5}, r"sharpness_budget=1.5\): expected a number in \[0.0, 1.0\]"),
    ({"sharpness_budget": "2%"}, r"sharpness_budget='2%'\)"),
    ({"sharpness_tol": 0}, r"sharpness_tol=0\): expected a number in \(0.0, 1.0\]"),
    ({"sharpness_loss_fn": 3}, r"sharpness_loss_fn=3\): expected a callable"),
    ({"activation_modules": "fc*"}, r"activation_modules='fc\*'\): expected a list of glob patterns"),
    ({"dirpath": 5}, r"dirpath=5\): expected a path"),
    ({"val_loss_key": 1}, r"val_loss_key=1\): expected the name of a logged metric"),
])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DynamicsMonitor(**kwargs)


def test_unknown_option_names_it():
    with pytest.raises(TypeError, match="every_n_step'"):
        DynamicsMonitor(every_n_step=5)


def test_state_keys_tell_instances_apart(tmp_path):
    a, b = DynamicsMonitor(dirpath=tmp_path / "a"), DynamicsMonitor(dirpath=tmp_path / "b")
    assert a.state_key != b.state_key and "DynamicsMonitor" in a.state_key


def test_checkpoint_saved_after_fit_resumes_without_losing_data(tmp_path):
    """A checkpoint written after fit ended carries the final store position: resuming appends, drops nothing."""
    mon = DynamicsMonitor(dirpath=tmp_path / "run")
    t = trainer(tmp_path, [mon], max_epochs=1)
    model = MLP()
    t.fit(model, *loaders(flat=True))
    t.save_checkpoint(tmp_path / "end.ckpt")
    trainer(tmp_path, [DynamicsMonitor(dirpath=tmp_path / "run")], max_epochs=2).fit(
        MLP(), *loaders(flat=True), ckpt_path=tmp_path / "end.ckpt")
    np.testing.assert_array_equal(open_run(tmp_path / "run").series("loss/train").steps, np.arange(16))
