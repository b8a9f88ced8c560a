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
