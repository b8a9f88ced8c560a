"""Rule files: the default pack loads; layering and overrides; every kind of error names file, line, check."""

import textwrap

import pytest

from dyncheck.checks.rules import default_rules_path, load_rules
from dyncheck.errors import ConfigError, RuleError

DEFAULT_IDS = ["non-finite", "loss-divergence", "loss-spike", "oscillating-loss", "exploding-gradients",
               "vanishing-gradients", "dead-units", "saturated-activations", "softmax-before-loss", "clamped-output",
               "no-progress", "premature-plateau", "train-val-divergence", "val-loss-drift",
               "validation-stalled", "over-regularization", "symmetric-units", "unchanged-parameters",
               "frozen-parameters", "update-too-large", "update-too-small", "edge-of-stability",
               "progressive-sharpening", "catapult", "lr-collapse", "layers-not-learning", "noise-dominated"]


def write(tmp_path, text, name="rules.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path, text, *before):
    p = write(tmp_path, text)
    with pytest.raises(RuleError) as e:
        load_rules([*before, p])
    return [str(x) for x in e.value.problems], str(p)


def test_default_pack_has_exactly_the_ids():
    rules = load_rules("default")
    assert [c.id for c in rules] == DEFAULT_IDS
    assert default_rules_path().name == "default.yaml"
    for c in rules:
        assert c.summary and c.hint and c.message, c.id
    assert rules["edge-of-stability"].severity == "info"
    assert rules["non-finite"].severity == "error"


def test_override_params_disable_and_add(tmp_path):
    p = write(tmp_path, """
        checks:
          - id: loss-spike
            params: {factor: 6}
          - id: dead-units
            enabled: false
          - id: lr-too-low
            summary: the learning rate fell below 1e-6
            severity: info
            metrics: lr/*
            detector: threshold
            params: {below: 1.0e-6}
        disable: [update-too-small]
    """)
    rules = load_rules(["default", p])
    ids = [c.id for c in rules]
    assert "dead-units" not in ids and "update-too-small" not in ids and ids[-1] == "lr-too-low"
    spike = rules["loss-spike"]
    assert spike.params["factor"] == 6 and spike.params["window"] == load_rules()["loss-spike"].params["window"]
    assert spike.hint  # kept from the default
    assert rules["lr-too-low"].params["below"] == 1e-6 and rules["lr-too-low"].source.endswith("rules.yaml:7")


def test_unknown_key_lists_allowed_keys(tmp_path):
    got, f = problems(tmp_path, """
        checks:
          - id: my-check
            summary: s
            severity: warning
            metrics: loss/train
            detector: spike
            treshold: 3
    """)
    assert got == [f"{f}:8:5: check 'my-check': unknown key 'treshold'; expected one of: id, summary, severity, "
                   "metrics, exclude, detector, params, for, warmup, until, message, hint, when, unless, explains, enabled"]


def test_wrong_types_and_enums(tmp_path):
    got, f = problems(tmp_path, """
        checks:
          - id: c1
            summary: s
            severity: fatal
            metrics: loss/train
            detector: spike
            for: "ten"
            warmup: "ten percent"
    """)
    assert got == [
        f"{f}:5:15: check 'c1': 'severity': expected one of error, warning, info; got 'fatal'",
        f"{f}:8:10: check 'c1': 'for': expected an integer, got a string 'ten'",
        f"{f}:9:13: check 'c1': 'warmup': expected a number of steps (int >= 0) or a share of the run such as "
        "\"10%\", got 'ten percent'",
    ]


def test_unknown_detector_and_parameter(tmp_path):
    got, f = problems(tmp_path, """
        checks:
          - id: c1
            summary: s
            severity: info
            metrics: loss/train
            detector: spikes
          - id: c2
            summary: s
            severity: info
            metrics: loss/train
            detector: spike
            params: {factr: 2, window: 0}
    """)
    assert got[0].startswith(f"{f}:7:15: check 'c1': 'detector': expected one of absent, collapse, divergence, growth, improves_later, no_progress")
    assert got[1] == (f"{f}:13:14: check 'c2': unknown parameter 'factr' for detector 'spike'; it takes: window, "
                      "factor, min_jump, robust_z, max_duration, min_history, tail, tail_quantile, tail_rank, recover")
    assert got[2] == (f"{f}:13:32: check 'c2': 'window': expected an integer >= 1, got 0")


def test_metric_pattern_that_can_never_match(tmp_path):
    got, f = problems(tmp_path, """
        checks:
          - id: c1
            summary: s
            severity: info
            metrics: [loss/train, grad_norms/*]
            detector: threshold
    """)
    assert len(got) == 1
    assert got[0].startswith(f"{f}:6:27: check 'c1': metric pattern 'grad_norms/*' can never match a recorded "
                             "metric; names start with one of: act/, batch/, decay/, grad_nonfinite/")


def test_detector_kind_must_fit_metrics(tmp_path):
    got, f = problems(tmp_path, """
        checks:
          - id: c1
            summary: s
            severity: info
            metrics: loss/train
            detector: ratio
    """)
    assert got == [f"{f}:6:14: check 'c1': detector 'ratio' compares two series: expected metrics: {{a: ..., b: ...}}"]


def test_message_fields_are_checked(tmp_path):
    got, f = problems(tmp_path, """
        checks:
          - id: c1
            summary: s
            severity: info
            metrics: loss/train
            detector: spike
            message: "{value:.2f} at {stepp}"
    """)
    assert got == [f"{f}:8:14: check 'c1': message names {{stepp}}; fields available here: value, step, "
                   "first_step, last_step, steps, metric, check, points, level, ratio"]


def test_new_check_missing_keys_and_duplicates(tmp_path):
    got, f = problems(tmp_path, """
        checks:
          - id: loss-spike
            params: {factor: 5}
          - id: c1
            summary: s
            severity: info
            metrics: loss/train
            detector: nonfinite
          - id: c1
            summary: again
        disable: [nope]
    """)
    assert got[0] == (f"{f}:3:5: check 'loss-spike': a new check needs 'summary', 'severity', 'metrics', "
                      "'detector' (to override a check of another file, load that file first, e.g. rules: "
                      "[default, this-file])")
    assert got[1] == f"{f}:10:9: check 'c1': duplicate id (first defined at entry 2)"
    assert got[2].startswith(f"{f}:12:11: cannot disable unknown check 'nope'; loaded checks: c1")


def test_yaml_errors_duplicate_keys_and_unsafe_tags(tmp_path):
    got, f = problems(tmp_path, "checks: [\n")
    # libyaml's wording when PyYAML has it (the loader uses it when installed), else PyYAML's own
    assert got in ([f"{f}:2:1: not valid YAML: did not find expected node content (while parsing a flow node)"],
                   [f"{f}:2:1: not valid YAML: expected the node content, but found '<stream end>' (while parsing "
                    "a flow node)"])
    got, f = problems(tmp_path, "checks: []\nchecks: []\n")
    assert got == [f"{f}:2:1: duplicate key 'checks'"]
    got, f = problems(tmp_path, "!!python/object/apply:os.system ['echo pwned']\n")
    assert "not valid YAML: could not determine a constructor" in got[0]
    got, f = problems(tmp_path, "")
    assert got == [f"{f}:1:1: empty rule file; expected a mapping with 'checks:'"]
    got, f = problems(tmp_path, "version: 2\nchekcs: []\n")
    assert got == [f"{f}:1:10: 'version': expected 1, got 2",
                   f"{f}:2:1: unknown key 'chekcs'; expected one of: version, checks, disable"]


def test_missing_file_and_bad_source_type(tmp_path):
    with pytest.raises(RuleError, match=r"nope\.yaml:1:1: no such rule file"):
        load_rules(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected 'default' or a path"):
        load_rules([3])


def test_readme_rule_example_is_valid(tmp_path):
    """The rule file shown in README ("Rule files") loads on top of the default pack as shown."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Rule files"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    p = tmp_path / "readme.yaml"
    p.write_text(block)
    rules = load_rules(["default", str(p)])
    c = rules["loss-spike"]
    assert c.unless and c.unless[0].detector == "step_change" and c.explains == ("update-too-large",)
    assert "update-too-small" in rules.disabled


def test_readme_condition_example_is_valid(tmp_path):
    """The nested any/all conditions shown in README ("Conditions on other signals") load as a check's when:."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Conditions on other signals.**"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    p = tmp_path / "cond.yaml"
    p.write_text("checks:\n  - id: no-progress\n" + block)
    (cond,) = load_rules(["default", str(p)])["no-progress"].when
    ratio_cond, both = cond.any
    assert ratio_cond.pair == ("loss/train", "loss/val") and ratio_cond.params["between"] is True
    assert [c.detector for c in both.all] == ["trend", "present"]


def test_schema_errors_do_not_hide_the_rest_of_the_entry(tmp_path):
    """Every problem at once: an unknown key or a wrong type in an entry, and what else is wrong in it."""
    got, f = problems(tmp_path, """
        checks:
          - id: c1
            summary: s
            severity: warning
            metrics: grad_norms/*
            detector: spike
            treshold: 3
            params: {factr: 3, window: 0.5}
            message: "{value[0]} {nope}"
            unless: [3, {metrics: lr/*, detector: step_change, params: {factor: 0.5}}]
    """)
    assert got == [
        f"{f}:6:14: check 'c1': metric pattern 'grad_norms/*' can never match a recorded metric; names start with "
        "one of: act/, batch/, decay/, grad_nonfinite/, grad_norm/, logged/, loss/, lr/, model/, noise/, ntk/, output/, "
        "sharpness/, traj/, update_ratio/, weight_norm/, weight_unchanged/ (see README, 'What is measured')",
        f"{f}:8:5: check 'c1': unknown key 'treshold'; expected one of: id, summary, severity, metrics, exclude, "
        "detector, params, for, warmup, until, message, hint, when, unless, explains, enabled",
        f"{f}:9:14: check 'c1': unknown parameter 'factr' for detector 'spike'; it takes: window, factor, min_jump, "
        "robust_z, max_duration, min_history, tail, tail_quantile, tail_rank, recover",
        f"{f}:9:32: check 'c1': 'window': expected an integer, got a number 0.5",
        f"{f}:10:14: check 'c1': message names {{nope}}; fields available here: value, step, first_step, "
        "last_step, steps, metric, check, points, level, ratio",
        f"{f}:10:14: check 'c1': message field {{value[0]}}: attribute and index access are not allowed; name a "
        "field itself, e.g. {value}",
        f"{f}:11:14: check 'c1': 'unless': expected an object, got an integer 3",
        f"{f}:11:73: check 'c1': 'factor': expected a number > 1, got 0.5",
    ]


def test_bounds_on_numbers_templates_and_globs(tmp_path):
    """The documented limits (README, "Input limits"), each a problem naming the key and the bound."""
    from dyncheck.checks.rules import LIMITS

    got, f = problems(tmp_path, f"""
        checks:
          - id: c1
            summary: s
            severity: warning
            metrics: "{'*/' * 21}"
            detector: spike
            params: {{window: 1001, tail_rank: 101, min_history: 1000001}}
            for: 1000000001
            message: "{{value:>201}} {{value:.21f}} {{metric:d}} {{step:c}} {{value!a}} {{}}"
    """)
    assert LIMITS["window"] == 1000 and LIMITS["glob_stars"] == 20 and LIMITS["format_width"] == 200
    assert [g.split(": ", 2)[2] for g in got] == [
        "metric pattern has 21 '*'; expected at most 20",
        "'window': expected an integer <= 1000, got 1001",
        "'tail_rank': expected an integer <= 100, got 101",
        "'min_history': expected an integer <= 1,000,000, got 1000001",
        "'for': expected an integer <= 1,000,000,000, got 1000000001",
        "message field {value:>201}: format width 201 is too large; expected at most 200",
        "message field {value:.21f}: format precision .21 is too large; expected at most 20",
        "message field {metric:d}: format type 'd' does not apply to a string; expected one of: s",
        "message field {step:c}: format type 'c' does not apply to an integer; expected one of: b, d, o, x, X, n, "
        "e, E, f, F, g, G, %",
        "message field {value!a}: expected no conversion, !s or !r",
        "message has a field without a name ({}); name a field, e.g. {value}",
    ]


def test_yaml_input_limits(tmp_path):
    """Files beyond the size, depth or node limits, aliases that expand too far or into themselves, keys that are
    not strings, text that is not UTF-8: one problem each, with its position."""
    got, f = problems(tmp_path, "checks: " + "[" * 50 + "]" * 50 + "\n")  # 51 levels with the file's mapping
    assert got == [f"{f}:1:58: nested deeper than 50 levels; expected at most 50"]
    got, f = problems(tmp_path, "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n")
    assert got == [f"{f}:4:33: more than 10,000 values (an alias counted as the values it stands for); expected "
                   "at most 10,000"]
    got, f = problems(tmp_path, "checks: &a [*a]\n")
    assert "alias *a refers to a node that contains it" in got[0]
    got, f = problems(tmp_path, "checks: []\n1: x\non: y\n")
    assert got == [f"{f}:2:1: key '1' is read as an integer by YAML; expected a string key (quote it: \"1\")",
                   f"{f}:3:1: key 'on' is read as a boolean by YAML; expected a string key (quote it: \"on\")"]
    got, f = problems(tmp_path, "checks:\n  - id: x\n    for: " + "9" * 5000 + "\n")
    assert got == [f"{f}:3:10: not valid YAML: an integer of 5,000 digits; expected at most 100 digits (write a "
                   "large number as a float, e.g. 1e300)"]
    p = tmp_path / "latin1.yaml"
    p.write_bytes("checks: []\ndisable: [caf\u00e9]\n".encode("latin-1"))
    with pytest.raises(RuleError, match=r"latin1\.yaml:2:14: not UTF-8 text: byte 0xe9 cannot be decoded"):
        load_rules(p)
    p.write_bytes(b"x" * 1_000_001)
    with pytest.raises(RuleError, match=r"latin1\.yaml:1:1: 1,000,001 bytes; a rule file may hold at most "
                                        r"1,000,000 bytes"):
        load_rules(p)
    p.write_bytes(b"\xff\xfe" + "checks: []\n".encode("utf-16-le"))  # UTF-16 with a byte-order mark is text
    assert len(load_rules(p)) == 0
