"""The evaluation policy alone (no Trainer): options, the live budget and the one collective, the end of a run."""

import json

import numpy as np
import pytest

from dyncheck import ConfigError
from dyncheck._evaluation import FINDINGS_FILENAME, Evaluation, EvaluationOptions
from dyncheck.store import RunWriter


def _store(path, nan_from=None):
    steps = np.arange(200)
    loss = np.exp(-steps / 50.0)
    if nan_from is not None:
        loss[nan_from:] = np.nan
    with RunWriter(path) as w:
        w.set_meta(status="finished")
        w.write({"loss/train": (steps, loss), "grad_norm/total": (steps, np.ones(200))})
    return path


def _evaluation(**kw):
    logs, warns = [], []
    ev = Evaluation(EvaluationOptions(**kw), warn=lambda k, m: warns.append(m), info=logs.append)
    return ev, logs, warns


def test_options_are_validated_once_with_the_callers_name():
    with pytest.raises(ConfigError, match=r"^Mine\(stop_on='fatal'\): expected 'error', 'warning' or None"):
        EvaluationOptions(stop_on="fatal", owner="Mine")
    with pytest.raises(ConfigError, match="needs rules to evaluate"):
        EvaluationOptions(rules=None, stop_on="error")
    with pytest.raises(ConfigError, match=r"report=1\): expected True or False"):
        EvaluationOptions(report=1)
    assert EvaluationOptions(rules=None).loaded is None


def test_final_writes_findings_report_and_logs_counts(tmp_path):
    store = _store(tmp_path / "run.db", nan_from=150)

    class Logger:
        got = None

        def log_metrics(self, metrics, step):
            Logger.got = (metrics, step)

    ev, logs, warns = _evaluation()
    ev.final(store, step=200, loggers=[Logger()])
    doc = json.loads((tmp_path / FINDINGS_FILENAME).read_text())
    assert doc["step"] == 200 and doc["rules"] == ["default"] and any(f["check"] == "non-finite"
                                                                      for f in doc["findings"])
    assert (tmp_path / "report.html").exists() and not warns
    assert Logger.got[1] == 200 and Logger.got[0]["dyncheck/errors"] >= 1
    assert "report:" in logs[-1] and FINDINGS_FILENAME in logs[-1]


def test_report_only_and_nothing(tmp_path):
    store = _store(tmp_path / "run.db")
    ev, logs, _ = _evaluation(rules=None)
    ev.final(store, step=1)
    assert (tmp_path / "report.html").exists() and not (tmp_path / FINDINGS_FILENAME).exists()
    (tmp_path / "report.html").unlink()
    ev, logs, _ = _evaluation(rules=None, report=False)
    ev.final(store, step=1)
    assert not (tmp_path / "report.html").exists() and logs == []


def test_live_stops_all_processes_together_and_respects_its_budget(tmp_path):
    store = _store(tmp_path / "run.db", nan_from=100)
    ev, logs, _ = _evaluation(stop_on="error")
    asked, stopped, meta = [], [], {}
    ev.live(store, lambda fired: asked.append(fired) or fired, lambda: stopped.append(True), step=120,
            set_meta=meta.update)
    assert asked == [True] and stopped == [True] and ev.stopped_by.check == "non-finite"
    assert meta["stopped_by"]["check"] == "non-finite" and "stopping training at step 120" in logs[-1]
    # the first evaluation of a fit (cold: imports, rules) does not set the pace: the next flush evaluates again
    ev.live(store, lambda fired: asked.append(fired) or fired, lambda: stopped.append(True), step=121,
            set_meta=meta.update)
    assert asked == [True, True] and stopped == [True, True]
    # right after a (warm) evaluation the budget (2% of the time since) does not allow another: rank 0 asks "no"
    ev.live(store, lambda fired: asked.append(fired) or fired, lambda: stopped.append(True), step=122,
            set_meta=meta.update)
    assert asked == [True, True, False] and stopped == [True, True]
    # another process's finding stops this one too (the collective says so), without a finding of its own
    ev2, _, _ = _evaluation(stop_on="error")
    ev2.live(None, lambda fired: True, lambda: stopped.append("other"), step=5, set_meta=meta.update)
    assert stopped[-1] == "other" and ev2.stopped_by is None


def test_a_failing_evaluation_warns_and_never_raises(tmp_path):
    ev, logs, warns = _evaluation()
    ev.final(tmp_path / "missing" / "run.db", step=0)
    assert any("evaluating the checks failed" in w for w in warns)


def test_the_end_of_a_run_and_the_cli_use_one_blas_thread_and_restore_it(tmp_path, monkeypatch):
    """The checks and the report (the trajectory PCA's eigh, the detectors' fits) run with BLAS limited to one
    thread (dyncheck._threads: a multi-threaded BLAS on a busy host took seconds for a 200 x 200 eigh)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from dyncheck import cli
    from dyncheck.checks import engine

    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not blas:
        pytest.skip("no BLAS library threadpoolctl can see")
    before = [i["num_threads"] for i in blas]
    seen = []
    real = engine.evaluate

    def spy(*args, **kwargs):
        seen.append([i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"])
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", spy)
    store = _store(tmp_path / "run.db")
    ev, _, warns = _evaluation()
    ev.final(store, step=200)
    assert not warns and (tmp_path / "report.html").exists()
    assert cli.main(["check", str(tmp_path)]) in (0, 1)
    assert len(seen) == 2 and all(n == 1 for got in seen for n in got), seen
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"] == before
