"""Checks inside a real Trainer: findings.json at the end of fit and after a crash, logger counts, stop_on."""

import json

import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

from dyncheck import ConfigError, DynamicsMonitor, open_run
from models import MLP, loaders, trainer


class NaNAfter(MLP):
    """Its inputs turn NaN from optimizer step ``at`` on."""

    def __init__(self, at=30, **kw):
        super().__init__(**kw)
        self.at = at

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.trainer.global_step >= self.at:
            x = torch.full_like(x, float("nan"))
        return super().training_step((x, y), batch_idx)


class Crash(MLP):
    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 12:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_findings_json_summary_and_logger_counts(tmp_path, caplog):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=2)
    logger = CSVLogger(tmp_path, name="csv")
    t = trainer(tmp_path, [mon], max_epochs=3, logger=logger)
    with caplog.at_level("INFO"):
        t.fit(NaNAfter(at=20, log_acc=False), *loaders(n=256, batch_size=16))
    doc = json.loads((tmp_path / "run" / "findings.json").read_text())
    assert doc["status"] == "fail" and doc["rules"] == ["default"]
    nf = [f for f in doc["findings"] if f["check"] == "non-finite"]
    assert nf and min(f["first_step"] for f in nf) == 20
    assert mon.result.status == "fail"
    assert "FAIL: " in caplog.text and "non-finite" in caplog.text and "findings.json" in caplog.text
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "dyncheck/errors" in metrics.splitlines()[0]
    assert t.global_step == 3 * 16  # without stop_on, training goes on


def test_stop_on_error_stops_training(tmp_path):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=5, flush_every_n_steps=5, stop_on="error")
    t = trainer(tmp_path, [mon], max_epochs=20)
    t.fit(NaNAfter(at=30, log_acc=False), *loaders(n=256, batch_size=16))
    # stopped at a flush soon after the NaNs began (live checks take <= 2% of the time), not after 320 steps
    assert 30 < t.global_step < 200
    assert mon.stopped_by is not None and mon.stopped_by.check == "non-finite"
    assert mon.stopped_by.first_step == 30
    run = open_run(tmp_path / "run")
    assert run.meta["stopped_by"]["check"] == "non-finite"
    assert json.loads((tmp_path / "run" / "findings.json").read_text())["stopped_by"]["check"] == "non-finite"


def test_stop_on_does_not_stop_a_healthy_run(tmp_path):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=5, flush_every_n_steps=5, stop_on="warning")
    t = trainer(tmp_path, [mon], max_epochs=3)
    t.fit(MLP(lr=0.1, momentum=0.9, log_acc=False), *loaders(n=256, batch_size=16))
    assert t.global_step == 48 and mon.stopped_by is None
    assert mon.result.status == "pass", mon.result.findings


def test_crash_still_writes_findings(tmp_path):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=2)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [mon]).fit(Crash(log_acc=False), *loaders(n=256, batch_size=16))
    doc = json.loads((tmp_path / "run" / "findings.json").read_text())
    assert doc["step"] == 12 and "status" in doc


def test_rules_off_and_bad_rules(tmp_path):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", rules=None)
    trainer(tmp_path, [mon], max_epochs=1).fit(MLP(log_acc=False), *loaders(n=64, batch_size=16))
    assert not (tmp_path / "run" / "findings.json").exists() and mon.result is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks:\n  - id: loss-spike\n    params: {factor: -1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:22: check 'loss-spike': 'factor': expected a number > 0"):
        DynamicsMonitor(rules=["default", bad])
    with pytest.raises(ConfigError, match=r"DynamicsMonitor\(stop_on='fatal'\): expected 'error', 'warning'"):
        DynamicsMonitor(stop_on="fatal")
    with pytest.raises(ConfigError, match=r"stop_on='error'\): needs rules"):
        DynamicsMonitor(stop_on="error", rules=None)
    with pytest.raises(ConfigError, match=r"rules=3\): expected 'default'"):
        DynamicsMonitor(rules=3)
