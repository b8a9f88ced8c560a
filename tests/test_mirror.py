"""``mirror=True``: the summary series and findings land in the trainer's real loggers (CSV, TensorBoard)."""

import csv

import pytest

from dyncheck import ConfigError, DynamicsMonitor, open_run
from dyncheck._evaluation import MIRRORED, mirrored_series
from models import MLP, loaders, trainer


def test_summary_series_reach_csv_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger = CSVLogger(tmp_path / "csv", name="", version=0)
    tb_logger = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    cb = DynamicsMonitor(dirpath=tmp_path / "run", mirror=True, report=False, sharpness_every_n_steps=4)
    trainer(tmp_path, [cb], logger=[csv_logger, tb_logger]).fit(MLP(), *loaders())
    want = mirrored_series(tmp_path / "run" / "run.db")
    with open_run(tmp_path / "run") as run:  # the references, from the store itself
        total = run.series("grad_norm/total")
        dead = [run.series(n) for n in run.metrics("act/dead/*")]
    assert {step: row["dyncheck/grad_norm_total"] for step, row in want.items()
            if "dyncheck/grad_norm_total" in row} == dict(zip(total.steps.tolist(), total.values.tolist()))
    step = dead[0].steps[0]
    assert want[step]["dyncheck/dead_share_max"] == max(s.values[0] for s in dead)
    assert {k for row in want.values() for k in row} == set(MIRRORED)

    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    got = {int(r["step"]): float(r["dyncheck/grad_norm_total"]) for r in rows if r.get("dyncheck/grad_norm_total")}
    assert got == pytest.approx({s: row["dyncheck/grad_norm_total"] for s, row in want.items()
                                 if "dyncheck/grad_norm_total" in row}, rel=1e-6)
    assert "dyncheck/findings" in (tmp_path / "csv" / "version_0" / "hparams.yaml").read_text()

    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    acc.Reload()
    assert set(MIRRORED) <= set(acc.Tags()["scalars"])
    sharp = [(e.step, e.value) for e in acc.Scalars("dyncheck/sharpness")]
    assert sharp == [(s, pytest.approx(row["dyncheck/sharpness"], rel=1e-6)) for s, row in sorted(want.items())
                     if "dyncheck/sharpness" in row]


def test_off_by_default_and_validated(tmp_path):
    assert DynamicsMonitor().evaluation.mirror is False
    with pytest.raises(ConfigError, match=r"DynamicsMonitor\(mirror='yes'\): expected True or False"):
        DynamicsMonitor(mirror="yes")


def test_plain_loop_mirrors_into_a_standalone_logger(tmp_path):
    pytest.importorskip("tensorboard")
    import torch
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch import nn

    import dyncheck

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logger = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with dyncheck.watch(model, opt, dirpath=tmp_path / "run", loggers=[logger], mirror=True, report=False,
                        every_n_steps=2) as mon:
        for _ in range(10):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    logger.finalize("success")
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("dyncheck/grad_norm_total")] == list(range(10))
    assert [e.step for e in acc.Scalars("dyncheck/dead_share_max")] == [0, 2, 4, 6, 8]
    assert "dyncheck/errors" in acc.Tags()["scalars"]
    with pytest.raises(ConfigError, match=r"watch\(loggers="):
        dyncheck.watch(model, opt, dirpath=tmp_path, loggers=["tb"])


def test_readme_mirror_example(tmp_path, monkeypatch):
    """The README section "Mirror into your loggers" runs as shown."""
    pytest.importorskip("tensorboard")
    import re
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Mirror into your loggers"):]
    section = section[:section.index("\n## ", 5)]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    acc = EventAccumulator(str(tmp_path / "tb-logs" / "loop" / "version_0"))
    acc.Reload()
    assert len(acc.Scalars("dyncheck/grad_norm_total")) == 100


def _wandb_records(path):
    """The protobuf ``Record``s of a ``.wandb`` file: a LevelDB-style log (a 7-byte W&B header, 32 KiB blocks of
    records with a 7-byte header: crc, length, type)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, block, parts = [], 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if kind == 0 and length == 0:
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(parts)
            records.append(rec)
            parts = b""
    return records


def wandb_history(save_dir, timeout=30.0):
    """({key: [(step, value)]}, config) of the one offline W&B run under save_dir, with each value's step
    (Lightning's ``trainer/global_step``, the HF Trainer's ``train/global_step``, else W&B's own ``_step``).
    ``wandb.finish()`` may return before W&B's service process has written the file: it is read again until it
    holds the run's exit record."""
    import json
    import time
    from pathlib import Path

    (path,) = Path(save_dir).rglob("run-*.wandb")
    deadline = time.monotonic() + timeout
    records = _wandb_records(path)
    while not any(r.HasField("exit") for r in records):
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.1)
        records = _wandb_records(path)
    history, config = {}, {}
    for rec in records:
        if rec.HasField("history"):
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            step = next((row[k] for k in ("trainer/global_step", "train/global_step", "_step") if k in row), None)
            for k, v in row.items():
                history.setdefault(k, []).append((step, v))
        if rec.HasField("config"):
            config.update({item.key or "/".join(item.nested_key): item.value_json for item in rec.config.update})
    return history, config


def test_mirror_reaches_wandb_and_mlflow(tmp_path, monkeypatch):
    """Lightning's WandbLogger (offline) and MLFlowLogger (a file store), read back with their own formats."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store needs no database server
    uri = f"file:{tmp_path / 'mlruns'}"
    wb = WandbLogger(save_dir=str(tmp_path / "wb"), offline=True, project="dyncheck-test")
    ml = MLFlowLogger(tracking_uri=uri, experiment_name="dyncheck-test")
    cb = DynamicsMonitor(dirpath=tmp_path / "run", mirror=True, report=False, sharpness_every_n_steps=4)
    trainer(tmp_path, [cb], logger=[wb, ml]).fit(MLP(), *loaders())
    wb.experiment.finish()
    want = mirrored_series(tmp_path / "run" / "run.db")
    expect = {s: row["dyncheck/grad_norm_total"] for s, row in want.items() if "dyncheck/grad_norm_total" in row}
    assert len(expect) > 10

    history, config = wandb_history(tmp_path / "wb")
    assert dict(history["dyncheck/grad_norm_total"]) == pytest.approx(expect, rel=1e-6)
    assert {k for k in history} >= set(MIRRORED) | {"dyncheck/errors", "dyncheck/warnings"}
    assert "dyncheck/findings" in config

    client = MlflowClient(tracking_uri=uri)
    got = {m.step: m.value for m in client.get_metric_history(ml.run_id, "dyncheck/grad_norm_total")}
    assert got == pytest.approx(expect, rel=1e-6)
    assert "dyncheck/findings" in client.get_run(ml.run_id).data.params
