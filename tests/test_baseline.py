"""Baselines and `dyncheck compare`: quantities against brute force, one-sided judgement, file errors, and the
sensitivity of the comparison on real training runs (seeds pass, real degradations fail, naming what regressed)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dyncheck import ConfigError, DynamicsMonitor, open_run
from dyncheck.baseline import Quantity, _judge, compare, load_baseline, make_baseline, summarize
from dyncheck.cli import main
from dyncheck.store import RunWriter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "ci_example"))
from model import train  # noqa: E402  (the example's tiny model)


def write_run(path, loss, val=None, dead=None):
    s = np.arange(loss.size)
    with RunWriter(path / "run.db") as w:
        w.write({"loss/train": (s, loss)})
        if val is not None:
            w.write({"loss/val": (s[:: loss.size // val.size][: val.size], val)})
        if dead is not None:
            w.write({"act/dead/a": (s[::10][: dead.size], dead)})
        w.set_meta(status="finished")
    return path


def test_summary_quantities_against_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    loss = np.exp(rng.normal(-1, 0.3, 400))
    val = np.array([0.9, 0.5, 0.45, 0.6, 0.55])
    dead = np.r_[np.zeros(20), np.full(20, 0.7)]
    with open_run(write_run(tmp_path, loss, val, dead)) as run:
        q = summarize(run)
    tail = loss[-100:]
    assert q["loss/train.final"] == pytest.approx(np.prod(tail) ** (1 / tail.size))
    assert q["loss/train.mean"] == pytest.approx(np.exp(np.log(loss).mean()))
    assert q["loss/val.final"] == pytest.approx((0.45 * 0.6 * 0.55) ** (1 / 3))
    assert q["loss/val.best"] == 0.45
    assert q["act/dead.max"] == pytest.approx(0.7)


def test_non_finite_loss_is_infinitely_bad(tmp_path):
    loss = np.linspace(2, 0.1, 200)
    loss[190] = np.nan
    with open_run(write_run(tmp_path, loss)) as run:
        assert summarize(run)["loss/train.final"] == float("inf")


@pytest.mark.parametrize("better, obtained, status", [
    ("lower", 1.0, "ok"), ("lower", 1.4, "ok"), ("lower", 1.6, "regressed"), ("lower", 0.6, "better"),
    ("lower", 0.8, "ok"), ("higher", 0.6, "regressed"), ("higher", 1.6, "better"), ("lower", float("inf"),
                                                                                      "regressed"),
])
def test_judgement_is_one_sided(better, obtained, status):
    assert _judge(Quantity(1.0, better, "ratio", 1.5), obtained)[0] == status


def test_abs_tolerance():
    q = Quantity(0.1, "lower", "abs", 0.2)
    assert _judge(q, 0.29)[0] == "ok" and _judge(q, 0.31)[0] == "regressed" and _judge(q, 0.0)[0] == "ok"


def test_several_runs_widen_the_tolerance_to_their_spread(tmp_path):
    runs = [write_run(tmp_path / f"r{i}", np.full(100, v)) for i, v in enumerate([0.1, 0.3, 1.0])]
    base = make_baseline(runs, rules=None)
    q = base.quantities["loss/train.final"]
    spread = np.std(np.log([0.1, 0.3, 1.0]), ddof=1)
    assert q.value == pytest.approx(0.3) and q.spread == pytest.approx(spread)
    assert q.tolerance == pytest.approx(np.exp(3 * spread))


def test_baseline_file_round_trip_and_errors(tmp_path):
    run = write_run(tmp_path / "r", np.linspace(2, 0.1, 200))
    base = make_baseline([run])
    path = tmp_path / "b.yaml"
    path.write_text(base.to_yaml())
    again = load_baseline(path)
    assert again.quantities["loss/train.final"].value == pytest.approx(base.quantities["loss/train.final"].value,
                                                                     rel=1e-5)
    text = path.read_text()
    bad = {
        "dyncheck_baseline: 1": ("dyncheck_baseline: 7", "not a dyncheck baseline"),
        "    ratio: 1.75": ("    ratio: 0.5", "quantities.loss/train.final.ratio: expected a ratio >= 1"),
        "    better: lower\n    ratio: 1.4": ("    better: down\n    ratio: 1.4",
                                               "quantities.loss/train.mean.better: expected 'lower' or 'higher'"),
        "  loss/train.mean:": ("  loss/train.avg:", "quantities.loss/train.avg: unknown quantity; expected one of"),
    }
    for old, (new, msg) in bad.items():
        assert old in text, old
        path.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=msg.replace(".", r"\.").replace("(", r"\(")) as e:
            load_baseline(path)
        assert str(path) in str(e.value)


def test_cli_baseline_and_compare(tmp_path, capsys):
    good = write_run(tmp_path / "good", 2.3 * np.exp(-np.arange(300) / 50) + 0.05)
    worse = write_run(tmp_path / "worse", 2.3 * np.exp(-np.arange(300) / 50) + 0.5)
    better = write_run(tmp_path / "better", 2.3 * np.exp(-np.arange(300) / 30) + 0.01)
    b = tmp_path / "base.yaml"
    assert main(["baseline", str(good), "-o", str(b)]) == 0
    assert main(["compare", str(good), "--baseline", str(b)]) == 0
    assert main(["compare", str(better), "--baseline", str(b)]) == 0
    out = capsys.readouterr().out
    assert "better than the baseline: loss/train.final, loss/train.mean" in out
    assert main(["compare", str(worse), "--baseline", str(b), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "fail" and "loss/train.final" in doc["regressions"]
    assert main(["compare", str(worse), "--baseline", str(b), "--format", "junit", "-o", str(tmp_path / "j.xml")]) == 1
    assert '<failure message="loss/train.final regressed"' in (tmp_path / "j.xml").read_text()
    assert main(["compare", str(good), "--baseline", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read baseline" in capsys.readouterr().err


# -- sensitivity on real runs (the example model: 300 steps, under a second each) ----------------------------
def run_model(tmp_path, name, seed=0, **options):
    d = tmp_path / name
    train(DynamicsMonitor(dirpath=d, every_n_steps=10, report=False), seed=seed, root=d, **options)
    return d


@pytest.fixture(scope="module")
def seed0_baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    return make_baseline([run_model(tmp, "seed0")]), tmp


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_other_seeds_pass(seed0_baseline, seed):
    base, tmp = seed0_baseline
    cmp = compare(run_model(tmp, f"seed{seed}", seed=seed), base)
    assert cmp.regressions == [], [r for r in cmp.rows]


@pytest.mark.parametrize("name, options, must_name", [
    ("lr-x10", {"lr": 0.5}, "loss/train.mean"),
    ("no-batchnorm", {"norm": False}, "loss/train.mean"),
    ("poor-init", {"init_gain": 0.01}, "loss/train.mean"),
    ("frozen-first-layer", {"freeze_first": True}, "unchanged-parameters"),
    ("label-noise", {"label_noise": 0.5}, "loss/val.final"),
])
def test_degradations_fail_naming_what_regressed(seed0_baseline, name, options, must_name):
    base, tmp = seed0_baseline
    cmp = compare(run_model(tmp, name, **options), base)
    assert must_name in cmp.regressions, cmp.regressions
