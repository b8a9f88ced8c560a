"""Hostile rule files, baselines and command lines get a clear error, never a traceback or a hang.

Inputs: the committed corpus (``tests/fuzz_corpus/``: invalid UTF-8 and UTF-16, binary files, a run store given as a
YAML file, unbalanced braces, attribute and index fields, huge format widths, a 1,200-'*' glob, 1,000-deep nesting,
self-referencing aliases, keys that are not strings, integers of 5,000 digits, ``window: 1.0e+20`` and
``1000000000000``, ...), what hypothesis draws (the default pack and a valid baseline with bytes flipped, inserted
or deleted, truncated, random YAML values at random keys, random message templates, globs and detector parameters,
deep nesting, anchors and aliases; command lines made of the CLI's own words and of those files), and, in a child
process with a timeout, the inputs that would hang or exhaust memory (a "billion laughs" document, 50 MB files,
files just under the 1 MB limit that are as costly as they can be).

Each input goes through ``load_rules([path])`` (or layered on ``default``), ``load_baseline(path)`` or
``dyncheck.cli.main(argv)``. It must work or fail with a :class:`dyncheck.errors.DyncheckError` whose message names
the file (a rule file: ``file:line:col``); from the CLI: exit 0-3, and 2 with ``dyncheck ...: error:`` on stderr
(argparse's own usage errors: SystemExit 2). A rule file that loads is then evaluated on a synthetic run (every
message formatted) and a baseline that loads is compared and formatted as text, JSON and JUnit: those must not
raise at all. Any other exception is a traceback and fails the test; an input that takes longer than ``HANG_S`` is a
hang and fails it too.

Profiles: the default (``quick``) runs the corpus and a fixed, derandomized set of drawn examples in a few seconds.
``DYNCHECK_FUZZ=deep`` draws many more random examples and shrinks a failure to a minimal one (minutes):
``DYNCHECK_FUZZ=deep python -m pytest tests/test_fuzz_inputs.py``. The counts (inputs tried, loaded fine, clean
errors, tracebacks, hangs, unclear errors) are printed at the end of the module; ``DYNCHECK_FUZZ_STATS=FILE`` also
writes them to FILE as JSON.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dyncheck.baseline import compare, format_comparison, format_comparison_junit, load_baseline
from dyncheck.checks import rules as rules_module
from dyncheck.checks.detectors import DETECTORS
from dyncheck.checks.engine import evaluate
from dyncheck.checks.rules import LIMITS, default_rules_path, load_rules
from dyncheck.cli import main
from dyncheck.errors import DyncheckError, RuleError
from dyncheck.store import RunWriter, open_run
from timelimit import time_limit as _time_limit

PROFILE = os.environ.get("DYNCHECK_FUZZ", "quick")
if PROFILE not in ("quick", "deep"):
    raise ValueError(f"DYNCHECK_FUZZ={PROFILE!r}: expected 'quick' or 'deep'")
DEEP = PROFILE == "deep"
N = 1500 if DEEP else 12  # hypothesis examples per property (the CLI properties: a fifth)
HANG_S = 20  # one input, every call on it, in this process (SIGALRM)
CHILD_CASE_S = 10  # one input of the child-process cases, timed in the child (Python's start-up left out)

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
COUNTS: collections.Counter = collections.Counter()
FUZZ = dict(deadline=None, database=None, derandomize=not DEEP,
            phases=tuple(Phase) if DEEP else (Phase.explicit, Phase.generate),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture])

DEFAULT_TEXT = default_rules_path().read_bytes()
DEFAULT_DATA = yaml.safe_load(DEFAULT_TEXT)
BASELINE_TEXT = (CORPUS / "baselines" / "ok-baseline.yaml").read_bytes()
BASELINE_DATA = yaml.safe_load(BASELINE_TEXT)
TRAJ_TEXT = (CORPUS / "baselines" / "ok-trajectories.yaml").read_bytes()  # with trajectory bands and phases
TRAJ_DATA = yaml.safe_load(TRAJ_TEXT)

# a synthetic run on which most default checks fire, so that their messages are formatted
_s = np.arange(300)
_loss = 2.3 * np.exp(-_s / 60) + 0.05
_loss[150] *= 30
_loss[290] = np.nan
SERIES = {
    "loss/train": (_s, _loss), "loss/val": (_s[::30], np.linspace(2, 1, 10)),
    "lr/SGD/pg0": (_s, np.where(_s < 100, 0.1, 0.5)), "lr/SGD/pg1": (_s, np.full(300, 1e-7)),
    "grad_norm/total": (_s, np.exp(_s / 30)), "grad_norm/fc.weight": (_s[::10], np.ones(30)),
    "grad_norm/fc.bias": (_s[::10], np.full(30, 1e-9)), "grad_norm/out.weight": (_s[::10], np.full(30, 1e-8)),
    "grad_nonfinite/fc.weight": (_s[::10], np.zeros(30)), "weight_norm/fc.weight": (_s[::10], np.linspace(5, .1, 30)),
    "act/dead/fc1": (_s[::10], np.full(30, .97)), "act/saturated/sig": (_s[::10], np.full(30, .9)),
    "act/nonfinite/fc1": (_s[::10], np.zeros(30)), "act/mean/fc1": (_s[::10], np.linspace(0, 1, 30)),
    "update_ratio/fc.weight": (_s[::10], np.full(30, 1e-6)), "weight_unchanged/fc.bias": (_s[::10], np.ones(30)),
    "sharpness/top_eig": (_s[::50], np.linspace(1, 30, 6)), "sharpness/threshold": (_s[::50], np.full(6, 20.0)),
    "logged/acc": (_s[::10], np.linspace(0, 1, 30)),
}


# -- bookkeeping ----------------------------------------------------------------------------------------------------
class Hang(Exception):
    pass


def time_limit(seconds: int):
    return _time_limit(seconds, Hang)


class Unclear(AssertionError):
    pass


def attempt(kind: str, fn, names: list[str], *, where_re: str | None = None) -> str:
    """Run ``fn`` on one input; 'ok' if it worked, 'clean' for a DyncheckError naming one of ``names`` (and matching
    ``where_re``, e.g. file:line:col); anything else fails the test and is counted: a hang (no answer after HANG_S),
    an unclear error (one that does not say where), a traceback (any other exception, or a check in ``fn``)."""
    COUNTS["inputs"] += 1
    COUNTS[f"{kind}.inputs"] += 1
    try:
        with time_limit(HANG_S):
            try:
                outcome = fn() or "ok"
            except DyncheckError as exc:
                msg = str(exc)
                if not (any(n in msg for n in names) or not names) or (where_re and not re.search(where_re, msg)):
                    raise Unclear(f"{kind}: the error does not say where ({names}): {msg}") from None
                outcome = "clean"
    except Hang:
        COUNTS["hang"] += 1
        raise
    except Unclear:
        COUNTS["unclear"] += 1
        raise
    except BaseException:
        COUNTS["traceback"] += 1
        raise
    COUNTS[outcome] += 1
    COUNTS[f"{kind}.{outcome}"] += 1
    return outcome


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    parts = [f"dyncheck input fuzz ({PROFILE}): {COUNTS['inputs']} inputs, {COUNTS['ok']} worked, "
             f"{COUNTS['clean']} clean errors, {COUNTS['traceback']} tracebacks, {COUNTS['hang']} hangs, "
             f"{COUNTS['unclear']} unclear errors"]
    for kind in sorted({k.split(".")[0] for k in COUNTS if "." in k}):
        parts.append(f"  {kind}: {COUNTS[kind + '.inputs']} inputs, {COUNTS[kind + '.ok']} worked, "
                     f"{COUNTS[kind + '.clean']} clean errors")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n" + "\n".join(parts), flush=True)
    stats = os.environ.get("DYNCHECK_FUZZ_STATS")
    if stats:
        Path(stats).write_text(json.dumps(dict(COUNTS), indent=1))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_inputs")


@pytest.fixture(scope="module")
def run_dir(work) -> Path:
    """A small finished run store (for the CLI and for comparisons)."""
    d = work / "run"
    with RunWriter(d / "run.db") as w:
        w.write({name: series for name, series in SERIES.items() if name != "loss/train"})
        w.write({"loss/train": (_s, np.nan_to_num(_loss, nan=0.1))})
        w.set_meta(status="finished")
    return d


@pytest.fixture(scope="module")
def comparison_inputs(run_dir):
    with open_run(run_dir) as run:
        yield run, evaluate(run, load_rules("default"))


# -- what one input goes through -------------------------------------------------------------------------------------
_WHERE = r":\d+:\d+: "  # a rule file's errors: file:line:column


def rules_input(path: Path, *, layered: bool = False, kind: str = "rules") -> str:
    def run():
        rules = load_rules(["default", str(path)] if layered else [str(path)])
        result = evaluate(SERIES, rules)  # every message formatted: must not raise
        for f in result.findings:
            assert isinstance(f.message, str) and len(f.message) < 20_000, (f.check, len(f.message))
        assert len(result.to_json()) < 5_000_000
    return attempt(kind, run, [str(path)], where_re=_WHERE)


def baseline_input(path: Path, comparison_inputs, *, kind: str = "baseline") -> str:
    def run():
        base = load_baseline(path)
        run, result = comparison_inputs
        cmp = compare(run, base, rules=None, result=result)
        text = format_comparison(cmp, title="fuzz") + format_comparison_junit(cmp, "fuzz")
        text += json.dumps(cmp.to_dict(), allow_nan=False)
        assert len(text) < 1_000_000
    return attempt(kind, run, [str(path)])


def cli_input(argv: list[str], *, kind: str = "cli") -> str:
    def run():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help (0), usage errors (2)
                code = exc.code
                assert code in (0, 2), (argv, code)
        msg = err.getvalue()
        assert "Traceback" not in msg, msg
        assert code in (0, 1, 2, 3), (argv, code, msg)
        if code == 2:
            if not re.search(r"dyncheck( \S+)*: error:", msg) or len(msg) > 200_000:
                raise Unclear(f"exit 2 without a 'dyncheck COMMAND: error:' line on stderr: {argv}: {msg[:2000]}")
            return "clean"
        return "ok"
    return attempt(kind, run, [])


def write(work: Path, name: str, data: bytes | str) -> Path:
    p = work / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


# -- the committed corpus -------------------------------------------------------------------------------------------
RULE_CASES = sorted(p.name for p in (CORPUS / "rules").iterdir())
BASELINE_CASES = sorted(p.name for p in (CORPUS / "baselines").iterdir())


@pytest.mark.parametrize("name", RULE_CASES)
def test_corpus_rule_file(name):
    """``ok-*`` files load; every other one is a RuleError naming the file, line and column."""
    path = CORPUS / "rules" / name
    outcome = rules_input(path, kind="corpus-rules")
    assert outcome == ("ok" if name.startswith("ok-") else "clean"), name
    if not name.startswith("ok-"):
        with pytest.raises(RuleError) as info:
            load_rules(["default", str(path)])
        assert all(p.file == str(path) and p.line >= 1 and p.column >= 1 for p in info.value.problems)


@pytest.mark.parametrize("name", BASELINE_CASES)
def test_corpus_baseline(name, comparison_inputs):
    outcome = baseline_input(CORPUS / "baselines" / name, comparison_inputs, kind="corpus-baseline")
    assert outcome == ("ok" if name.startswith("ok-") else "clean"), name


@pytest.mark.parametrize("name", [n for n in RULE_CASES if not n.startswith("ok-")][::3])
def test_corpus_rule_file_from_the_cli(name, run_dir, capsys):
    """From the CLI: exit 2, the file:line:col message on stderr, no traceback."""
    path = CORPUS / "rules" / name
    for argv in (["rules", "validate", str(path)], ["check", str(run_dir), "--rules", "default", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(re.escape(str(path)) + _WHERE, err) and "Traceback" not in err, err


def test_the_limits_in_messages(tmp_path):
    """What the tester measured, one by one, with the message a user sees."""
    def problems(text: str) -> list[str]:
        p = tmp_path / "r.yaml"
        p.write_text(textwrap.dedent(text))
        with pytest.raises(RuleError) as info:
            load_rules(["default", str(p)])
        return [f"{x.line}:{x.column}: {x.message}" for x in info.value.problems]

    head = """\
        checks:
          - id: c1
            summary: s
            severity: warning
            metrics: loss/train
            detector: spike
        """
    assert problems(head + "    params: {window: 1.0e+20}\n") == [
        "7:22: 'window': expected an integer, got a number 1e+20"]
    assert problems(head + "    params: {window: 1000000000000}\n") == [
        "7:22: 'window': expected an integer <= 1000, got 1000000000000"]
    assert problems(head + "    message: '{value:>1000000000}'\n") == [
        "7:14: message field {value:>1000000000}: format width 1000000000 is too large; expected at most 200"]
    assert problems(head + "    message: '{check.__class__.__mro__}'\n") == [
        "7:14: message field {check.__class__.__mro__}: attribute and index access are not allowed; name a field "
        "itself, e.g. {check}"]
    assert problems(head + "    message: '{value at {step}'\n")[0].startswith("7:14: message is not a valid template")
    assert problems(head.replace("loss/train", "'loss/" + "*a" * 30 + "'")) == [
        "5:14: metric pattern has 30 '*'; expected at most 20"]
    # {step:d} is an integer field: accepted, and formatted at check time
    p = tmp_path / "ok.yaml"
    p.write_text(textwrap.dedent(head.replace("spike", "nonfinite") + "    message: 'step {step:d} {points:,}'\n"))
    (f,) = [f for f in evaluate(SERIES, load_rules([str(p)])).findings if f.check == "c1"]
    assert f.message == "step 290 1"


def test_the_longest_glob_is_checked_deep_in_a_call_stack(tmp_path):
    """A glob of the maximum length against ``logged/*`` (the overlap check recurses once per character), called
    from 300 frames down: a result, not a RecursionError."""
    n = LIMITS["glob_chars"]
    p = tmp_path / "long.yaml"
    p.write_text(f"checks:\n  - {{id: c1, summary: s, severity: info, detector: nonfinite, "
                 f"metrics: 'logged/{'a' * (n - 7)}'}}\n")

    def down(k):
        return load_rules([str(p)]) if k == 0 else down(k - 1)
    assert len(down(300)) == 1


def test_formatting_at_check_time_is_safe():
    """A check made in code (never validated) still formats safely: no attribute access, bounded widths."""
    from dyncheck.checks.rules import render_message

    fields = {"value": 1.5, "step": 3, "metric": "loss/train"}
    assert render_message("{value.__class__.__mro__} {value[0]}", fields) == "{value.__class__.__mro__} {value[0]}"
    got = render_message("{value:>1000000000}|{step:d}|{metric:.3f}|{nope:.2f}", fields)
    assert got == "1.5|3|loss/train|{nope:.2f}"
    assert render_message("{value", fields) == "{value"


# -- drawn inputs: the default pack, mutated --------------------------------------------------------------------------
_frac = st.floats(0, 1, allow_nan=False, exclude_max=True)
_byte_edits = st.lists(st.tuples(_frac, st.sampled_from(["flip", "insert", "delete", "truncate"]),
                                 st.binary(min_size=1, max_size=6)), min_size=1, max_size=6)


def edit_bytes(data: bytes, edits) -> bytes:
    for frac, op, blob in edits:
        i = int(frac * len(data)) if data else 0
        if op == "flip":
            data = data[:i] + bytes([blob[0]]) + data[i + 1:]
        elif op == "insert":
            data = data[:i] + blob + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + len(blob) * 7:]
        else:
            data = data[:i]
    return data


NASTY = ["{value[0]}", "{check.__class__.__mro__}", "{value:>1000000000}", "{step:d}", "{", "}", "{}", "{0}",
         "{value!r:>{step}}", "{value:.1000f}", "{metric:d}", "loss/" + "*" * 30, "*" * 1200, "[z-a]", "[!]", "%",
         "100%", "1e20", "default", "\t", "a" * 600, "~", "yes", "2001-13-45", ".nan", "-.inf", "<<", "*a", "&a"]
_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=16)
            | st.sampled_from(NASTY + [10**12, 10**9 + 1, 10_001, 10**99, 10**150, 1e20, 20.0, -1, 0]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.integers(-3, 3) | st.booleans() | st.none(), inner, max_size=4), max_leaves=12)
_CHECK_KEYS = list(rules_module.CHECK_SCHEMA["properties"]) + ["treshold", "enabled", "id"]
_PARAMS = sorted({k for d in DETECTORS.values() for k in d.params})
_numbers = (st.integers(-2**70, 2**70) | st.floats() | st.sampled_from(
    [0, 1, 2, 10**4, 10**4 + 1, 10**6, 10**6 + 1, 10**9, 10**12, 1e20, 20.0, 0.5, True, False, "20", None,
     float("nan"), float("inf"), 100, 101, 10**99]))

_TEMPLATE_TOKENS = list("{}:!.[]<>^=+-#0123456789,_%sdfegxrXcnbo z") + [
    "value", "step", "first_step", "steps", "metric", "check", "points", "ratio", "level", "__class__", "{value",
    "{step:", "{metric", "}", "{{", "}}", "!r", "!s", "!a", ":>", ":.3g", ":d", ":1000000", "__mro__", "[0]"]
_templates = st.lists(st.sampled_from(_TEMPLATE_TOKENS), max_size=24).map("".join)
_GLOB_TOKENS = ["*", "?", "[", "]", "!", "-", "/", "loss", "train", "grad_norm", "act", "dead", "a", "z", ".",
                "**", "lr", "logged", "^", "\\", "{", "$"]
_globs = (st.lists(st.sampled_from(_GLOB_TOKENS), min_size=1, max_size=30).map("".join)
          | st.integers(0, 1500).map(lambda n: "*" * n) | st.integers(0, 700).map(lambda n: "loss/" + "a" * n)
          | st.integers(0, 400).map(lambda n: "logged/" + "a" * n)
          | st.integers(0, 30).map(lambda n: "logged/" + "*a" * n))


@st.composite
def mutated_pack(draw) -> bytes:
    """The default pack with 1-4 structural edits, dumped back to YAML."""
    data = copy.deepcopy(DEFAULT_DATA)
    for _ in range(draw(st.integers(1, 4))):
        checks = data.get("checks") if isinstance(data, dict) and isinstance(data.get("checks"), list) else None
        op = draw(st.sampled_from(["set", "delete", "param", "template", "glob", "condition", "top", "nest"]))
        if op == "top" or not checks:
            key = draw(st.sampled_from(["checks", "disable", "version", "extra", "checks"]))
            if isinstance(data, dict):
                data[key] = draw(_values)
            continue
        i = draw(st.integers(0, len(checks) - 1))
        check = checks[i]
        if not isinstance(check, dict):
            checks[i] = draw(_values)
            continue
        if op == "set":
            check[draw(st.sampled_from(_CHECK_KEYS))] = draw(_values)
        elif op == "delete" and check:
            check.pop(draw(st.sampled_from(sorted(check, key=str))), None)
        elif op == "param":
            params = check.setdefault("params", {})
            if isinstance(params, dict):
                params[draw(st.sampled_from(_PARAMS))] = draw(_numbers)
            else:
                check["params"] = {draw(st.sampled_from(_PARAMS)): draw(_numbers)}
            if draw(st.booleans()):
                check[draw(st.sampled_from(["for", "warmup"]))] = draw(_numbers)
        elif op == "template":
            check["message"] = draw(_templates)
        elif op == "glob":
            check[draw(st.sampled_from(["metrics", "exclude"]))] = draw(_globs | st.lists(_globs, max_size=3))
        elif op == "condition":
            cond = {"metrics": draw(_globs), "detector": draw(st.sampled_from(sorted(DETECTORS))),
                    "params": {draw(st.sampled_from(_PARAMS)): draw(_numbers)}, "within": draw(_numbers)}
            if draw(st.booleans()):
                cond = {draw(st.sampled_from(["all", "any"])): [cond, draw(_values)]}
            check[draw(st.sampled_from(["when", "unless"]))] = [cond]
        else:  # nest: a value inside 1..120 lists
            v: object = draw(_scalars)
            for _ in range(draw(st.integers(1, 120))):
                v = [v]
            check[draw(st.sampled_from(_CHECK_KEYS))] = v
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()),
                          default_flow_style=draw(st.sampled_from([False, None, True]))).encode()


@st.composite
def aliased(draw) -> bytes:
    """Documents made of anchors and aliases: wide and deep expansions, self-references, merges."""
    width, depth = draw(st.integers(1, 12)), draw(st.integers(1, 10))
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for k in range(1, depth):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * width) + "]")
    form = draw(st.sampled_from(["laughs", "self", "merge", "checks", "mapping-self"]))
    if form == "self":
        lines.append(f"x: &s [*a{depth - 1}, &t [*t]]")
    elif form == "merge":
        lines.append(f"m: &m {{k: *a{depth - 1}}}\nn: {{<<: *m, j: 1}}")
    elif form == "checks":
        lines.append(f"checks: [{{id: c1, summary: s, severity: info, metrics: loss/train, detector: spike, "
                     f"params: *a{depth - 1}}}]")
    elif form == "mapping-self":
        lines.append("q: &q {r: *q}")
    return ("\n".join(lines) + "\n").encode()


@settings(max_examples=N, **FUZZ)
@given(edits=_byte_edits, layered=st.booleans())
def test_default_pack_with_damaged_bytes(edits, layered, work):
    rules_input(write(work, "bytes.yaml", edit_bytes(DEFAULT_TEXT, edits)), layered=layered, kind="rules-bytes")


@settings(max_examples=N, **FUZZ)
@given(text=mutated_pack(), layered=st.booleans())
def test_default_pack_with_random_values(text, layered, work):
    rules_input(write(work, "values.yaml", text), layered=layered, kind="rules-values")


@settings(max_examples=N, **FUZZ)
@given(template=_templates, glob=_globs, detector=st.sampled_from(["nonfinite", "spike", "threshold"]))
def test_random_templates_and_globs(template, glob, detector, work):
    """A check that always fires (a NaN in loss/train) with a random message, one with a random glob."""
    text = yaml.safe_dump({"checks": [
        {"id": "t1", "summary": "s", "severity": "info", "metrics": "loss/train", "detector": detector,
         "message": template},
        {"id": "t2", "summary": "s", "severity": "info", "metrics": glob, "exclude": [glob], "detector": "threshold",
         "params": {"above": 0.5}, "message": "{metric} {value:.3g}"},
    ]})
    rules_input(write(work, "templates.yaml", text), kind="rules-templates")


@settings(max_examples=N, **FUZZ)
@given(depth=st.integers(1, 3000), flow=st.booleans(), where=st.sampled_from(["top", "checks", "params", "message"]))
def test_deep_nesting(depth, flow, where, work):
    inner = "[" * depth + "1" + "]" * depth if flow else "".join(
        "  " * k + "-\n" for k in range(depth)) + "  " * depth + "- 1\n"
    if where == "top":
        text = inner
    elif where == "checks":
        text = "checks: " + inner if flow else "checks:\n" + textwrap.indent(inner, "  ")
    else:
        text = ("checks:\n  - id: c1\n    summary: s\n    severity: info\n    metrics: loss/train\n"
                f"    detector: spike\n    {where}: " + (inner if flow else "\n" + textwrap.indent(inner, "      ")))
    rules_input(write(work, "deep.yaml", text), kind="rules-deep")


@settings(max_examples=N, **FUZZ)
@given(text=aliased())
def test_anchors_and_aliases(text, work):
    rules_input(write(work, "alias.yaml", text), kind="rules-aliases")


@settings(max_examples=N, **FUZZ)
@given(text=aliased())
def test_anchors_and_aliases_in_a_baseline(text, work, comparison_inputs):
    baseline_input(write(work, "alias-base.yaml", BASELINE_TEXT + text), comparison_inputs,
                   kind="baseline-aliases")


def _edge_values(name: str, schema: dict) -> list:
    """Values at the edges of what a detector parameter accepts (and just past them)."""
    if "enum" in schema:
        return list(schema["enum"]) + ["nope"]
    types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    out: list = [None] if "null" in types else []
    if "boolean" in types:
        out += [True, False]
    if "integer" in types:
        lo, hi = schema.get("minimum", 0), LIMITS.get(name, LIMITS["count"])
        out += [lo, lo + 1, hi - 1, hi, hi + 1, (lo + hi) // 2]
    if "number" in types:
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -1e300))
        hi = schema.get("maximum", 1e300)
        out += [lo, hi, lo + 1e-12, 5e-324, 1e-300, 1e300, -1e300, 0.0, 0.5, 1.0, 2.0, 1e6]
    return out


@st.composite
def edge_params(draw) -> bytes:
    """The default pack with a few parameters, ``for``, ``warmup`` or ``within`` at the edges of their bounds:
    most load, and then run at check time with those values."""
    data = copy.deepcopy(DEFAULT_DATA)
    for _ in range(draw(st.integers(1, 3))):
        check = draw(st.sampled_from(data["checks"]))
        det = DETECTORS[check["detector"]]
        what = draw(st.sampled_from(["param", "param", "for", "warmup", "within"]))
        if what == "param" and det.params:
            name = draw(st.sampled_from(sorted(det.params)))
            check.setdefault("params", {})[name] = draw(st.sampled_from(_edge_values(name, det.params[name][0])))
        elif what == "for":
            check["for"] = draw(st.sampled_from([1, 2, 10**9, 10**9 + 1]))
        elif what == "warmup":
            check["warmup"] = draw(st.sampled_from([0, 10**9, "0%", "100%", "99.999999%", "100.5%"]))
        elif check.get("unless") or check.get("when"):
            conds = check.get("unless") or check.get("when")
            if "metrics" in conds[0]:
                conds[0]["within"] = draw(st.sampled_from([0, 10**9, 10**9 + 1]))
    return yaml.safe_dump(data, sort_keys=False).encode()


_n = np.arange(3000)
_rng = np.random.default_rng(0)
LONG = {"loss/train": (_n, np.exp(_rng.normal(0, 1, _n.size)) * np.exp(-_n / 1000)),
        "loss/val": (_n[::100], np.linspace(2, 1, 30)), "lr/SGD/pg0": (_n, np.exp(_rng.normal(0, 1, _n.size))),
        "grad_norm/total": (_n, np.exp(_rng.normal(0, 1, _n.size))),
        "grad_norm/a.weight": (_n[::5], np.exp(_rng.normal(0, 3, 600))),
        "grad_norm/b.weight": (_n[::5], np.exp(_rng.normal(-9, 3, 600))),
        "grad_norm/c.weight": (_n[::5], np.exp(_rng.normal(-4, 3, 600))),
        "update_ratio/a.weight": (_n[::5], np.exp(_rng.normal(-7, 2, 600))),
        "act/dead/fc1": (_n[::5], _rng.uniform(0, 1, 600)), "sharpness/top_eig": (_n[::50], np.linspace(1, 30, 60)),
        "sharpness/threshold": (_n[::50], np.full(60, 20.0))}


@settings(max_examples=N, **FUZZ)
@given(text=edge_params())
def test_parameters_at_the_edges_of_their_bounds(text, work):
    """Values the loader takes run at check time, on a noisy 3,000-step run, in bounded time and memory."""
    path = write(work, "edges.yaml", text)

    def run():
        rules = load_rules([str(path)])
        for series in (SERIES, LONG):
            for f in evaluate(series, rules).findings:
                assert isinstance(f.message, str)
    attempt("rules-edges", run, [str(path)], where_re=_WHERE)


# -- drawn inputs: a valid baseline, mutated -------------------------------------------------------------------------
@st.composite
def mutated_baseline(draw) -> bytes:
    data = copy.deepcopy(BASELINE_DATA)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["top", "quantity", "value", "rename"]))
        q = data.get("quantities") if isinstance(data, dict) else None
        if op == "top" or not isinstance(q, dict) or not q:
            if isinstance(data, dict):
                data[draw(st.sampled_from(["dyncheck_baseline", "quantities", "findings", "runs", "created",
                                           "extra"]))] = draw(_values)
            continue
        name = draw(st.sampled_from(sorted(q, key=str)))
        if op == "quantity":
            q[name] = draw(_values)
        elif op == "value" and isinstance(q[name], dict):
            q[name][draw(st.sampled_from(["value", "better", "ratio", "abs", "spread", "extra"]))] = draw(
                _numbers | _values)
        else:
            q[draw(st.text(max_size=20) | st.sampled_from(["loss/val.best", "loss/val.final"]))] = q.pop(name)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=draw(st.sampled_from([False, None]))).encode()


@st.composite
def mutated_trajectories(draw) -> bytes:
    """A valid baseline with trajectory bands, its ``trajectories`` and ``phases`` sections mutated: a series, a
    key of one (a band's lo/hi lists too: a value, its length), the phases, or a series renamed."""
    data = copy.deepcopy(TRAJ_DATA)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["top", "series", "key", "cell", "cells", "phases", "rename"]))
        t = data.get("trajectories") if isinstance(data, dict) else None
        if op == "top" or not isinstance(t, dict) or not t:
            if isinstance(data, dict):
                data[draw(st.sampled_from(["trajectories", "phases"]))] = draw(_values)
            continue
        name = draw(st.sampled_from(sorted(t, key=str)))
        band = t[name]
        if op == "series":
            t[name] = draw(_values)
        elif op == "key" and isinstance(band, dict):
            band[draw(st.sampled_from(["log", "steps", "fail", "span", "widen", "lo", "hi", "extra"]))] = draw(
                _numbers | _values | st.sampled_from(["above", "below", "either", "never", True, False, [0, 1]]))
        elif op == "cell" and isinstance(band, dict):
            key = draw(st.sampled_from(["lo", "hi"]))
            if isinstance(band.get(key), list) and band[key]:
                band[key][draw(st.integers(0, len(band[key]) - 1))] = draw(_numbers | _values)
        elif op == "cells" and isinstance(band, dict):
            n = draw(st.sampled_from([0, 1, 4, 7, 1001]))
            band[draw(st.sampled_from(["lo", "hi"]))] = [0.5] * n
        elif op == "phases":
            ph = data.get("phases")
            if isinstance(ph, dict):
                ph[draw(st.sampled_from(["first", "end", "runs", "extra"]))] = draw(
                    _numbers | _values | st.sampled_from(["plateau", "warp", [1, 2], [1.5]]))
        else:
            t[draw(st.text(max_size=20) | st.sampled_from(list(TRAJ_DATA["trajectories"])))] = t.pop(name)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=draw(st.sampled_from([False, None]))).encode()


@settings(max_examples=N, **FUZZ)
@given(text=mutated_trajectories())
def test_baseline_with_random_trajectory_values(text, work, comparison_inputs):
    baseline_input(write(work, "b-traj.yaml", text), comparison_inputs, kind="baseline-trajectories")


@settings(max_examples=N, **FUZZ)
@given(edits=_byte_edits)
def test_trajectory_baseline_with_damaged_bytes(edits, work, comparison_inputs):
    baseline_input(write(work, "b-traj-bytes.yaml", edit_bytes(TRAJ_TEXT, edits)), comparison_inputs,
                   kind="baseline-trajectories-bytes")


@settings(max_examples=N, **FUZZ)
@given(edits=_byte_edits)
def test_baseline_with_damaged_bytes(edits, work, comparison_inputs):
    baseline_input(write(work, "b-bytes.yaml", edit_bytes(BASELINE_TEXT, edits)), comparison_inputs,
                   kind="baseline-bytes")


@settings(max_examples=N, **FUZZ)
@given(text=mutated_baseline())
def test_baseline_with_random_values(text, work, comparison_inputs):
    baseline_input(write(work, "b-values.yaml", text), comparison_inputs, kind="baseline-values")


# -- drawn inputs: command lines ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_words(work, run_dir) -> list[str]:
    good = write(work, "mine.yaml", "disable: [dead-units]\n")
    bad = CORPUS / "rules" / "template-attribute.yaml"
    base = work / "cli-base.yaml"
    assert main(["baseline", str(run_dir), "-o", str(base)]) == 0
    out = work / "out"
    out.mkdir(exist_ok=True)
    return ["check", "baseline", "compare", "rules", "list", "validate", "detectors", "--rules", "--format", "json",
            "junit", "text", "--fail-on", "warning", "never", "error", "--baseline", "-o", str(out / "o.txt"),
            "--allow-unfinished", "--no-hints", "default", str(good), str(bad), str(run_dir), str(run_dir / "run.db"),
            str(work / "missing"), str(base), str(CORPUS / "baselines" / "binary.yaml"), "", ",", "--", "-x",
            f"--rules=default,{good}", str(out), "--help", "--fail", "--rul", "\x7f", "a" * 300,
            str(CORPUS / "rules" / "deep-1000-flow.yaml")]


@settings(max_examples=max(3, N // 5), **FUZZ)
@given(data=st.data())
def test_random_command_lines(data, cli_words):
    first = data.draw(st.sampled_from(["check", "baseline", "compare", "rules", "--version", "-h", "x"]))
    rest = data.draw(st.lists(st.sampled_from(cli_words), max_size=9))
    cli_input([first, *rest])


@settings(max_examples=max(3, N // 5), **FUZZ)
@given(text=mutated_pack(), edits=_byte_edits)
def test_mutated_rule_files_from_the_cli(text, edits, work, run_dir):
    path = write(work, "cli-rules.yaml", edit_bytes(text, edits[:1]))
    cli_input(["rules", "validate", str(path)])
    cli_input(["check", str(run_dir), "--rules", "default", str(path)])
    cli_input(["rules", "list", "--rules", str(path), "default"])


def test_documented_command_lines(run_dir, work, capsys):
    """``--rules default mine.yaml RUN`` keeps RUN; the other spellings of a list; ``--baseline run.db``."""
    mine = write(work, "mine2.yaml", "disable: [dead-units, non-finite, exploding-gradients]\n")
    for argv in (["check", "--rules", "default", str(mine), str(run_dir)],
                 ["check", str(run_dir), "--rules", "default", str(mine)],
                 ["check", "--rules", f"default,{mine}", str(run_dir)],
                 ["check", "--rules", "default", "--rules", str(mine), str(run_dir), "--fail-on", "error"]):
        assert main(argv) in (0, 3), argv
        assert "dead-units" not in capsys.readouterr().out.split("passed")[0]
    assert main(["compare", str(run_dir), "--baseline", str(run_dir / "run.db")]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'run.db'}:1:1: this is a SQLite database (a run store?), not a baseline" in err, err
    assert main(["compare", str(run_dir), "--baseline", str(run_dir)]) == 2
    assert "is a directory; expected a baseline" in capsys.readouterr().err


# -- in a child process: what would hang or exhaust memory -------------------------------------------------------------
_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import yaml
from dyncheck.checks import rules as R
if sys.argv[2] == "python":  # the pure-Python parser, as without libyaml
    R._Loader = R._make_loader(yaml.SafeLoader)
from dyncheck.baseline import load_baseline
from dyncheck.cli import main
from dyncheck.errors import DyncheckError
work, run = Path(sys.argv[1]), sys.argv[3]


def peak_mb():  # this process's peak memory (VmHWM is per address space: the parent's size at fork is not in it)
    try:
        line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024



cases = [("rules", p) for p in sorted(work.glob("r-*.yaml"))] + [("baseline", p) for p in sorted(work.glob("b-*.yaml"))]
cases += [("cli", ["compare", run, "--baseline", str(work / "b-50mb.yaml")]),
          ("cli", ["rules", "validate", str(work / "r-laughs.yaml")]),
          ("cli", ["check", run, "--rules", "default", str(work / "r-50mb.yaml")])]
for kind, arg in cases:
    print(json.dumps({"start": str(arg)}), flush=True)
    t = time.perf_counter()
    try:
        if kind == "rules":
            R.load_rules([str(arg)]); outcome, msg = "ok", ""
        elif kind == "baseline":
            load_baseline(arg); outcome, msg = "ok", ""
        else:
            import contextlib, io
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(arg)
            outcome, msg = ("clean" if code == 2 else f"exit {code}"), err.getvalue()
    except DyncheckError as e:
        outcome, msg = "clean", str(e)
    print(json.dumps({"case": str(arg), "outcome": outcome, "seconds": time.perf_counter() - t,
                      "message": msg[:300], "peak_mb": peak_mb()}),
          flush=True)
"""


def _laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * width) + "]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


def _costly_inputs(work: Path) -> Path:
    work = work / "costly"
    work.mkdir(exist_ok=True)
    limit = LIMITS["file_bytes"]
    big = ("checks:\n" + "  - {id: c, summary: s, severity: info, metrics: loss/train, detector: spike}\n" * 700_000)
    for prefix, head in (("r", ""), ("b", BASELINE_TEXT.decode())):
        (work / f"{prefix}-laughs.yaml").write_text(head + _laughs())
        (work / f"{prefix}-50mb.yaml").write_text(head + big[: 50_000_000])
        (work / f"{prefix}-1mb-flow.yaml").write_text(head + "x: [" + "1," * ((limit - len(head)) // 2 - 10) + "1]\n")
        (work / f"{prefix}-1mb-scalar.yaml").write_text(head + "x: " + "a" * (limit - len(head) - 10) + "\n")
        comment = "# " + "c" * 98 + "\n"
        (work / f"{prefix}-1mb-comments.yaml").write_text(head + comment * ((limit - len(head)) // 101))
        (work / f"{prefix}-1mb-deep.yaml").write_text(head + "x: " + "[" * ((limit - len(head)) // 2 - 5) + "]")
        aliases = "x: &x 1\ny: [" + "*x, " * ((limit - 40) // 5) + "1]\n"
        (work / f"{prefix}-1mb-aliases.yaml").write_text(head + aliases)
    return work


# the pure-Python parser (PyYAML without libyaml) in the deep profile, or where libyaml is missing
@pytest.mark.parametrize("parser", (["libyaml", "python"] if DEEP else ["libyaml"]) if yaml.__with_libyaml__
                         else ["python"])
def test_no_hang_and_bounded_memory_in_a_child_process(parser, work, run_dir):
    """A billion laughs, 50 MB files and the costliest files under the 1 MB limit: each a clean error (or, for the
    plain 1 MB files, loaded) within CHILD_CASE_S seconds and a few hundred MB, in a child with a timeout."""
    work = _costly_inputs(work)
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(work), parser, str(run_dir)], capture_output=True,
                              text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        COUNTS["hang"] += 1
        started = [json.loads(x)["start"] for x in (exc.stdout or b"").decode().splitlines() if '"start"' in x]
        raise AssertionError(f"hang: no answer after 240 s (last input: {started[-1:]})") from None
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    results = [json.loads(x) for x in proc.stdout.splitlines() if '"case"' in x]
    assert len(results) == 2 * 7 + 3, proc.stdout
    for r in results:
        COUNTS["inputs"] += 1
        COUNTS["child.inputs"] += 1
        COUNTS[r["outcome"] if r["outcome"] in ("ok", "clean") else "unclear"] += 1
        COUNTS[f"child.{r['outcome']}"] += 1
        if r["seconds"] > CHILD_CASE_S:
            COUNTS["hang"] += 1
        assert r["seconds"] <= CHILD_CASE_S, r
        # a 1 MB scalar or comments under a valid baseline head is a baseline; everything else is refused
        may_load = r["case"].startswith(str(work / "b-1mb-")) and ("scalar" in r["case"] or "comments" in r["case"])
        assert r["outcome"] in (("ok", "clean") if may_load else ("clean",)), r
    assert max(r["peak_mb"] for r in results) < 600, results  # Python, numpy and dyncheck: ~200 MB
    assert time.perf_counter() - t < 240
