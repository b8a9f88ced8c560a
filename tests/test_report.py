"""The HTML report: content, self-containment, escaping of user-given names, partial runs, the callback writing it,
`dyncheck report` and `dyncheck demo`. The browser test is tests/test_report_browser.py."""

import json
import re

import numpy as np
import pytest
import pytorch_lightning as pl
from torch import nn

from dyncheck import DynamicsMonitor, open_run
from dyncheck.cli import main
from dyncheck.report import REPORT_FILENAME, render_report, write_report
from dyncheck.store import RunWriter
from models import MLP, loaders

EVIL = "<script>alert(1)</script>"
N = 600


def synthetic_run(path, *, status="finished", loss=None, layers=3, dead=None, extra_meta=None):
    s = np.arange(N)
    with RunWriter(path / "run.db") as w:
        w.write({"loss/train": (s, 2.3 * np.exp(-s / 80) + 0.05 if loss is None else loss),
                 "lr/SGD/pg0": (s, np.full(N, 0.1)),
                 "grad_norm/total": (s, np.full(N, 1.0))})
        w.write({"loss/val": (s[49::50], 2.3 * np.exp(-s[49::50] / 80) + 0.1)})
        for i in range(layers):
            w.write({f"grad_norm/fc{i}.weight": (s[::10], np.full(N // 10, 0.5 + i)),
                     f"update_ratio/fc{i}.weight": (s[::10], np.full(N // 10, 1e-3))})
        if dead is not None:
            w.write({"act/dead/fc0": (s[::10], dead)})
        w.set_meta(status=status, started=1.7e9, duration_s=12.5, start_step=0, **(extra_meta or {}))
    return path


def scripts_and_links(text):
    """External references: <script src>, <link href>, <img src>, CSS url() outside the inlined plotly.js."""
    body = text.split("<script>", 1)[0]  # everything before the first inline script: markup and CSS
    return re.findall(r"<(?:script|link|img|iframe)[^>]+(?:src|href)=", text) + re.findall(r"url\(", body)


def test_report_sections_verdict_and_self_containment(tmp_path):
    run = synthetic_run(tmp_path / "r", dead=np.r_[np.zeros(20), np.full(40, 0.97)])
    path = write_report(run)
    assert path == run / REPORT_FILENAME
    text = path.read_text(encoding="utf-8")
    # verdict: dead units is a warning
    assert re.search(r'class="verdict warn"', text) and ">WARN<" in text
    assert "WARN</div>" in text and "1 diagnosis (1 warning; 1 finding) from" in text
    # the finding, its hint and its evidence chart
    assert 'id="finding-0"' in text and "dead-units" in text and "What to try:" in text
    assert 'data-chart="chart-finding-0"' in text
    for section in ("loss", "lr", "gradients", "updates", "activations", "sharpness", "run", "checks"):
        assert f'<section id="{section}">' in text
    assert "rapid fitting" in text  # phases of the loss curve
    # skipped checks carry their reason; passed checks are listed
    assert "sharpness was not measured" in text and "Passed (" in text
    # one self-contained file: plotly.js inlined exactly once, nothing fetched
    assert text.count("<script>") == 2 and text.count("Plotly.newPlot(") == 1
    assert scripts_and_links(text) == []
    # every chart placeholder has its figure, and every figure parses as JSON with data
    ids = re.findall(r'<div class="chart" id="([^"]+)"', text)
    specs = dict(re.findall(r'<script type="application/json" data-chart="([^"]+)">(.*?)</script>', text, re.S))
    assert ids and set(ids) == set(specs)
    assert 'data-charts-expected="%d"' % len(ids) in text
    for spec in specs.values():
        fig = json.loads(spec)
        assert fig["data"], fig["layout"]


def test_pass_and_unchecked_verdicts(tmp_path):
    run = synthetic_run(tmp_path / "ok")
    assert ">PASS<" in render_report(run)
    text = render_report(run, rules=None)
    assert "NOT CHECKED" in text and "Checks were not evaluated" in text


def test_a_run_nothing_could_judge_is_not_a_green_pass(tmp_path):
    with RunWriter(tmp_path / "run.db") as w:  # only a metric no check reads: every check is skipped
        w.write({"sharpness/n_hvp": (np.arange(5), np.ones(5))})
        w.set_meta(status="finished")
    text = render_report(open_run(tmp_path))
    assert "NOT JUDGED" in text and "every check was skipped" in text
    assert ">PASS<" not in text and "look healthy" not in text


def test_long_series_are_downsampled_keeping_spikes(tmp_path):
    s = np.arange(50_000)
    loss = 2.0 * np.exp(-s / 5000) + 0.1
    loss[31_337] = 900.0  # a one-step spike must survive downsampling
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": (s, loss)})
        w.set_meta(status="finished")
    text = render_report(tmp_path, rules=None)
    spec = json.loads(re.search(r'data-chart="chart-loss">(.*?)</script>', text, re.S).group(1))
    import base64

    trace = spec["data"][0]
    y = np.frombuffer(base64.b64decode(trace["y"]["bdata"]), dtype=trace["y"]["dtype"])
    x = np.frombuffer(base64.b64decode(trace["x"]["bdata"]), dtype=trace["x"]["dtype"])
    assert len(y) <= 2000 and y.max() == pytest.approx(900.0)
    assert x[np.argmax(y)] == 31_337


@pytest.mark.parametrize("status, words", [
    ("crashed", "This run crashed at step 599 (RuntimeError: CUDA out of memory)"),
    ("interrupted", "This run was interrupted at step 599"),
    ("running", "This run has not finished"),
])
def test_partial_runs_render_with_a_banner(tmp_path, status, words):
    meta = {"exception": {"type": "RuntimeError", "message": "CUDA out of memory"}} if status == "crashed" else {}
    text = render_report(synthetic_run(tmp_path / status, status=status, extra_meta=meta))
    assert 'id="partial-banner"' in text and words in text
    assert ">PASS<" not in text and f">{status.upper()}<" in text  # checks passed, but the run did not finish


def test_finished_run_has_no_partial_banner(tmp_path):
    assert 'id="partial-banner"' not in render_report(synthetic_run(tmp_path / "done"))


def test_user_given_names_are_escaped(tmp_path):
    """A module, a metric and a rule's message/hint carrying markup end up as text, never as markup."""
    run = synthetic_run(tmp_path / "evil", extra_meta={"hyperparameters": {EVIL: EVIL}})
    with RunWriter(run / "run.db", mode="a") as w:
        w.write({f"act/dead/{EVIL}": (np.arange(0, N, 10), np.full(N // 10, 0.99))})
    rules = tmp_path / "evil.yaml"
    rules.write_text(
        "version: 1\nchecks:\n  - id: evil-check\n    summary: '<img src=x onerror=alert(2)>'\n"
        "    severity: error\n    metrics: act/dead/*\n    detector: threshold\n    params: {above: 0.9}\n"
        "    message: 'bad {metric} <b onmouseover=alert(3)>'\n    hint: '<iframe src=javascript:alert(4)>'\n")
    text = write_report(run, rules=[str(rules)]).read_text(encoding="utf-8")
    for raw in (EVIL, "<img src=x", "<b onmouseover", "<iframe"):
        assert raw not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown as text in the findings and metadata
    assert "&lt;img src=x onerror=alert(2)&gt;" in text and "&lt;iframe src=javascript:alert(4)&gt;" in text
    # inside the chart JSON the name is both HTML-escaped (plotly renders names as HTML) and \u-escaped
    assert "\\u0026lt;script\\u0026gt;alert(1)" in text


class EvilNamed(MLP):
    def __init__(self):
        super().__init__(hidden=16)
        self.net.add_module(EVIL, nn.Linear(10, 10))  # a layer named like a script tag, after the last one


def train_evil_named(tmp_path):
    """Train EvilNamed with the monitor (report on); return the run directory."""
    train, val = loaders(n=128, flat=True)
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=2)
    trainer = pl.Trainer(max_epochs=2, callbacks=[mon], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(EvilNamed(), train, val)
    return tmp_path / "run"


def test_callback_writes_the_report_and_escapes_a_module_name(tmp_path):
    report = train_evil_named(tmp_path) / REPORT_FILENAME
    text = report.read_text(encoding="utf-8")
    assert EVIL not in text
    assert f"grad_norm/net.{EVIL}.weight" in open_run(tmp_path / "run").metrics()  # it really was measured
    assert "\\u0026lt;script\\u0026gt;alert(1)\\u0026lt;\\u002fscript\\u0026gt;.weight" in text  # a chart's name
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.weight" in text  # the parameter table in the metadata


class Crashes(MLP):
    def training_step(self, batch, batch_idx):
        if self.global_step == 5:
            raise RuntimeError("boom at step 5")
        return super().training_step(batch, batch_idx)


def test_callback_writes_a_report_after_a_crash(tmp_path):
    train, val = loaders(n=128, flat=True)
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=2)
    trainer = pl.Trainer(max_epochs=3, callbacks=[mon], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Crashes(hidden=16), train, val)
    text = (tmp_path / "run" / REPORT_FILENAME).read_text(encoding="utf-8")
    assert "This run crashed at step 4 (RuntimeError: boom at step 5)" in text


def test_report_option(tmp_path):
    from dyncheck import ConfigError

    with pytest.raises(ConfigError, match=r"DynamicsMonitor\(report='yes'\): expected True or False"):
        DynamicsMonitor(report="yes")
    train, _ = loaders(n=64, flat=True, val=False)
    mon = DynamicsMonitor(dirpath=tmp_path / "run", report=False)
    pl.Trainer(max_steps=3, callbacks=[mon], logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path).fit(MLP(hidden=8), train)
    assert (tmp_path / "run" / "run.db").exists() and not (tmp_path / "run" / REPORT_FILENAME).exists()


def test_cli_report(tmp_path, capsys):
    run = synthetic_run(tmp_path / "r")
    out = tmp_path / "out" / "r.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and ">PASS<" in out.read_text(encoding="utf-8")
    assert main(["report", str(run), "--no-checks"]) == 0
    assert "NOT CHECKED" in (run / REPORT_FILENAME).read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no run store at" in capsys.readouterr().err
    assert main(["report", str(run), "--no-checks", "--rules", "default"]) == 2
    assert "--no-checks and --rules exclude each other" in capsys.readouterr().err


def test_cli_demo_list_and_bad_scenario(capsys):
    assert main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    assert "healthy-resnet-bn-cosine" in out and "(the default)" in out and "dying-relu" in out
    assert main(["demo", "--scenario", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert "--scenario 'no-such-thing' is not a scenario" in err and "dying-relu" in err


def test_cli_demo_runs_a_scenario_and_prints_the_report(tmp_path, capsys):
    assert main(["demo", "--scenario", "dying-relu", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "dying-relu" / REPORT_FILENAME
    assert f"report: {report}" in out
    text = report.read_text(encoding="utf-8")
    assert "dead-units" in text and ">WARN<" in text


def _values(arr):
    """A plotly trace's x or y: a list, or a typed array ({"dtype", "bdata"} in base64)."""
    import base64

    if isinstance(arr, dict):
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=np.dtype(arr["dtype"])).astype(float)
    return np.asarray(arr, float)


def test_report_compare_overlays_every_run_and_the_baseline_table(tmp_path, capsys):
    """`dyncheck report RUN --compare OTHER...`: one chart per key series with a trace per run (the run's own
    values), and the table of RUN against a baseline of the others: what make_baseline + compare say."""
    from dyncheck.baseline import compare, make_baseline

    s = np.arange(N)
    refs = [synthetic_run(tmp_path / "ref" / f"seed{i}", loss=2.3 * np.exp(-s / 80) + 0.05 + 0.002 * i)
            for i in range(3)]
    cand = synthetic_run(tmp_path / "candidate", loss=2.3 * np.exp(-s / 400) + 0.05)  # learns 5x slower
    out = tmp_path / "cmp.html"
    assert main(["report", str(cand), "--compare", str(tmp_path / "ref"), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert '<section id="compare">' in text and '<a href="#compare">Compared runs</a>' in text
    specs = dict(re.findall(r'<script type="application/json" data-chart="([^"]+)">(.*?)</script>', text, re.S))
    charts = {k: json.loads(v) for k, v in specs.items() if k.startswith("chart-compare-")}
    assert len(charts) == 5  # training and validation loss, gradient norm, per-layer median, learning rate
    names = {"candidate (this run)": cand, "seed0": refs[0], "seed1": refs[1], "seed2": refs[2]}
    for key, fig in zip(("loss/train", "loss/val", "grad_norm/total"), charts.values()):
        traces = {t["name"]: t for t in fig["data"]}
        assert set(traces) == set(names), key
        for name, path in names.items():
            with open_run(path) as run:
                series = run.series(key)
            np.testing.assert_array_equal(_values(traces[name]["x"]), series.steps)
            np.testing.assert_allclose(_values(traces[name]["y"]), series.values, rtol=1e-6)
    assert traces["candidate (this run)"]["line"]["color"] == "#212121"
    # the table: this run against a baseline of the other three, as dyncheck baseline + compare
    cmp = compare(cand, make_baseline(refs, allow_unfinished=True))
    rows = re.findall(r'<tr class="(\w+)"><td><code>([^<]+)</code></td><td>([^<]+)</td><td>([^<]+)</td>'
                      r'<td>([^<]+)</td><td>([^<]+)</td><td>\w+</td></tr>', text)
    assert [(r[1], r[0], r[3]) for r in rows] == [(q.quantity, q.status, f"{q.obtained:.4g}") for q in cmp.rows]
    assert ("regressed", "loss/train.mean") in {(r[0], r[1]) for r in rows}
    assert "REGRESSED (" in text and "loss/train.mean" in cmp.regressions
    traj = re.findall(r'<tr class="(\w+)"><td><code>([^<]+)</code></td><td>\w+</td><td>', text)
    assert [(t[1], t[0]) for t in traj] == [(t.series, t.status) for t in cmp.trajectories]
    assert ("loss/train", "regressed") in {(t.series, t.status) for t in cmp.trajectories}
    # bad input: no other run, a missing one
    assert main(["report", str(cand), "--compare", str(cand)]) == 2
    assert "--compare" in capsys.readouterr().err
    assert main(["report", str(cand), "--compare", str(tmp_path / "missing")]) == 2
    assert f"argument --compare {tmp_path / 'missing'}: no such file or directory" in capsys.readouterr().err
