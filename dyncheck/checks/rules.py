"""Rule files: YAML checks validated against a JSON schema, with errors that name the file, line, column and check.

A rule file::

    checks:
      - id: loss-spike                     # lowercase letters, digits, '-', '_', '.'
        summary: One line saying what it flags.
        severity: warning                  # error | warning | info
        metrics: loss/train                # a name or glob, a list of them, or {a: ..., b: ...} for pair detectors
        exclude: [grad_norm/total]         # optional globs left out of ``metrics``
        detector: spike                    # a generic detector (``dyncheck rules detectors`` lists them)
        params: {window: 20, factor: 3}    # the detector's parameters
        for: 10                            # optional: the condition must hold this many steps before it fires
        warmup: 5%                         # optional: steps (int) or a share of the run ("10%") not evaluated
        message: "{metric} jumped to {value:.3g} at step {step}"
        hint: What usually causes it, and what to try.
        unless:                            # optional: conditions on other series that rule the finding out
          - metrics: lr/*                  #   a companion metric (glob: any matching series)
            detector: step_change          #   any per-series detector; its condition at the same step
            params: {factor: 1.5}
            within: 20                     #   ... or within this many steps of it (default 0: as of that step)
        when: [...]                        # optional: conditions that must all hold too
        explains: [update-too-large]       # optional: findings of these checks are symptoms of this one
    disable: [update-too-small]            # switch off checks loaded from an earlier file

Files are layered in order: a later entry whose id is already loaded overrides only the keys it gives (``params``
merge key by key), ``enabled: false`` or ``disable:`` switch a check off. ``default`` stands for the built-in pack.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jsonschema
import yaml

from ..errors import ConfigError, RuleError, RuleProblem
from ..names import METRIC_TEMPLATES, pattern_can_match
from .detectors import DETECTORS

__all__ = ["Check", "Condition", "RuleSet", "load_rules", "default_rules_path", "BASE_FIELDS", "SEVERITIES"]

SEVERITIES = ("error", "warning", "info")
#: fields every message template may name
BASE_FIELDS = ("value", "step", "first_step", "last_step", "steps", "metric", "check", "points")
_CHECK_KEYS = ("id", "summary", "severity", "metrics", "exclude", "detector", "params", "for", "warmup", "message",
               "hint", "when", "unless", "explains", "enabled")
_REQUIRED_NEW = ("summary", "severity", "metrics", "detector")

_GLOBS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
_PAIR = {"type": "object", "required": ["a", "b"], "additionalProperties": False,
         "properties": {"a": {"type": "string", "minLength": 1}, "b": {"type": "string", "minLength": 1}}}
_CHECK_ID = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9._-]*$"}
CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["metrics", "detector"],
    "additionalProperties": False,
    "properties": {
        "metrics": {"anyOf": [{"type": "string", "minLength": 1}, _GLOBS, _PAIR]},
        "exclude": {"anyOf": [{"type": "string", "minLength": 1}, _GLOBS]},
        "detector": {"enum": sorted(DETECTORS)},
        "params": {"type": "object"},
        "within": {"type": "integer", "minimum": 0},
    },
}
_ALL_OF = {"type": "object", "required": ["all"], "additionalProperties": False,
           "properties": {"all": {"type": "array", "items": {"type": "object"}, "minItems": 1}}}
_ANY_OF = {"type": "object", "required": ["any"], "additionalProperties": False,
           "properties": {"any": {"type": "array", "items": {"type": "object"}, "minItems": 1}}}
# each item is validated on its own (CONDITION_SCHEMA, or _ALL_OF / _ANY_OF for {all: [...]} / {any: [...]}), for
# precise messages
_CONDITIONS = {"type": "array", "items": {"type": "object"}}
CHECK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id"],
    "additionalProperties": False,
    "properties": {
        "id": _CHECK_ID,
        "summary": {"type": "string", "minLength": 1},
        "severity": {"enum": list(SEVERITIES)},
        "metrics": {"anyOf": [
            {"type": "string", "minLength": 1},
            _GLOBS,
            _PAIR,
        ]},
        "exclude": {"anyOf": [{"type": "string", "minLength": 1}, {**_GLOBS, "minItems": 0}]},
        "detector": {"enum": sorted(DETECTORS)},
        "params": {"type": "object"},
        "for": {"type": "integer", "minimum": 1},
        "warmup": {"anyOf": [{"type": "integer", "minimum": 0},
                             {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"}]},
        "message": {"type": "string"},
        "hint": {"type": "string"},
        "when": _CONDITIONS,
        "unless": _CONDITIONS,
        "explains": {"type": "array", "items": _CHECK_ID},
        "enabled": {"type": "boolean"},
    },
}
FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "checks": {"type": "array", "items": {"type": "object"}},  # each entry: CHECK_SCHEMA
        "disable": {"type": "array", "items": {"type": "string"}},
    },
}
# what to say instead of jsonschema's wording, by the schema keyword that failed
_EXPECTED = {
    ("metrics", "anyOf"): "a metric name or glob, a list of them, or {a: ..., b: ...} for a pair detector",
    ("exclude", "anyOf"): "a metric glob or a list of them",
    ("warmup", "anyOf"): 'a number of steps (int >= 0) or a share of the run such as "10%"',
    ("id", "pattern"): "lowercase letters, digits, '.', '_' or '-' (like loss-spike)",
}


@dataclass(frozen=True)
class Condition:
    """A condition on companion series: ``detector`` with ``params`` on each metric matching ``metrics`` (a
    per-series detector), or on the pair ``pair`` (a pair detector such as ``ratio``); it holds at a step of the
    check when it holds on any matching series as of that step (its latest point at or before it), or with
    ``within`` at any point within that many steps either side. A detector that gives one verdict for the whole
    run (no_progress, plateau, present, a median scope) holds everywhere or nowhere."""

    metrics: tuple[str, ...]
    detector: str
    params: Mapping[str, Any] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    within: int = 0
    #: ``{all: [...]}``: a conjunction -- holds where every one of these holds (``metrics`` is then empty)
    all: tuple["Condition", ...] = ()
    #: ``{any: [...]}``: a disjunction -- holds where at least one of these holds
    any: tuple["Condition", ...] = ()
    #: ``metrics: {a: ..., b: ...}`` for a pair detector
    pair: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.all:
            return {"all": [c.to_dict() for c in self.all]}
        if self.any:
            return {"any": [c.to_dict() for c in self.any]}
        metrics: Any = {"a": self.pair[0], "b": self.pair[1]} if self.pair else list(self.metrics)
        return {"metrics": metrics, "detector": self.detector, "params": dict(self.params),
                "exclude": list(self.exclude), "within": self.within}


@dataclass(frozen=True)
class Check:
    """A validated check, with the detector's defaults filled in."""

    id: str
    summary: str
    severity: str
    detector: str
    metrics: tuple[str, ...] = ()
    pair: tuple[str, str] | None = None
    exclude: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    for_steps: int = 1
    warmup_steps: int = 0
    warmup_share: float = 0.0
    message: str = ""
    hint: str = ""
    when: tuple[Condition, ...] = ()
    unless: tuple[Condition, ...] = ()
    explains: tuple[str, ...] = ()
    source: str = ""  # file:line of the entry that defined it

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.pair if self.pair is not None else self.metrics

    def to_dict(self) -> dict[str, Any]:
        warmup: Any = f"{self.warmup_share * 100:g}%" if self.warmup_share else self.warmup_steps
        return {"id": self.id, "summary": self.summary, "severity": self.severity, "detector": self.detector,
                "metrics": {"a": self.pair[0], "b": self.pair[1]} if self.pair else list(self.metrics),
                "exclude": list(self.exclude), "params": dict(self.params), "for": self.for_steps,
                "warmup": warmup, "message": self.message, "hint": self.hint,
                "when": [c.to_dict() for c in self.when], "unless": [c.to_dict() for c in self.unless],
                "explains": list(self.explains), "source": self.source}


@dataclass
class RuleSet:
    """Checks in load order, after overrides; ``disabled`` holds the ids switched off."""

    checks: dict[str, Check]
    disabled: set[str] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(c for i, c in self.checks.items() if i not in self.disabled)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, check_id: str) -> Check:
        return self.checks[check_id]


def default_rules_path() -> Path:
    """The built-in pack: ``dyncheck/_rules/default.yaml`` in an installed wheel, ``rules/default.yaml`` in a
    source checkout (editable installs)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_rules" / "default.yaml", package.parent / "rules" / "default.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the default rule pack is missing from this installation (looked in {package / '_rules'})")


# ----------------------------------------------------------------------------------------------------------------
# YAML with positions
# ----------------------------------------------------------------------------------------------------------------
class _Doc:
    """A parsed YAML document that remembers where each value came from."""

    def __init__(self, text: str, file: str):
        self.file = file
        self.problems: list[RuleProblem] = []
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            self._check_duplicate_keys(self.root)
            self.data = yaml.load(text, Loader=yaml.SafeLoader) if self.root is not None else None
        except yaml.YAMLError as e:  # syntax errors, and tags the safe loader refuses (no arbitrary objects)
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise RuleError([RuleProblem(file, line, col, f"not valid YAML: {what}")]) from None

    def _check_duplicate_keys(self, node: Any) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        self.problems.append(self.problem_at(k, f"duplicate key '{k.value}'"))
                    seen.add(k.value)
                self._check_duplicate_keys(v)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                self._check_duplicate_keys(v)

    def node(self, path: Iterable[Any], *, key: bool = False) -> Any:
        """The node at ``path`` (keys and indices); with ``key`` the node of the last key itself."""
        node = self.root
        path = list(path)
        for i, part in enumerate(path):
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == part:
                        node = k if (key and i == len(path) - 1) else v
                        break
                else:
                    return node
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                return node
        return node

    def problem_at(self, node: Any, message: str, check: str | None = None) -> RuleProblem:
        mark = getattr(node, "start_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return RuleProblem(self.file, line, col, message, check)

    def problem(self, path: Sequence[Any], message: str, check: str | None = None, *, key: bool = False):
        self.problems.append(self.problem_at(self.node(path, key=key), message, check))


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)


def _describe(err: jsonschema.ValidationError, key: str) -> str:
    """A one-line description of a schema error, in the terms of the rule format."""
    v, inst = err.validator, err.instance
    what = f"'{key}'" if key else "the file"
    custom = _EXPECTED.get((key, v))
    if custom:
        return f"{what}: expected {custom}, got {inst!r}"
    if v == "type":
        t = err.validator_value
        t = " or ".join(t) if isinstance(t, list) else t
        article = "an" if str(t)[0] in "aeiou" else "a"
        return f"{what}: expected {article} {t}, got {_type_name(inst)} {inst!r}" if not isinstance(
            inst, (dict, list)) else f"{what}: expected {article} {t}, got {_type_name(inst)}"
    if v == "enum":
        return f"{what}: expected one of {', '.join(map(str, err.validator_value))}; got {inst!r}"
    if v == "const":
        return f"{what}: expected {err.validator_value!r}, got {inst!r}"
    if v in ("minimum", "exclusiveMinimum", "maximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<="}[v]
        kind = "an integer" if err.schema.get("type") == "integer" else "a number"
        return f"{what}: expected {kind} {op} {err.validator_value}, got {inst!r}"
    if v == "minLength":
        return f"{what}: expected a non-empty string"
    if v == "minItems":
        return f"{what}: expected a non-empty list"
    if v == "pattern":
        return f"{what}: {inst!r} does not match {err.validator_value}"
    return f"{what}: {err.message}"


def _schema_problems(doc: _Doc, instance: Any, schema: dict[str, Any], base: list[Any], check: str | None) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    for err in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        path = base + list(err.absolute_path)
        key = next((str(p) for p in reversed(path) if isinstance(p, str)), "")
        cid = check
        if err.validator == "additionalProperties":
            allowed = list(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - set(allowed)):
                doc.problem(path + [extra], f"unknown key '{extra}'; expected one of: {', '.join(allowed)}", cid,
                            key=True)
        elif err.validator == "required":
            missing = [r for r in err.validator_value if r not in err.instance]
            where = f" in '{key}'" if key else ""
            doc.problem(path, f"missing required key{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(repr(m) for m in missing)}{where}", cid)
        else:
            doc.problem(path, _describe(err, key), cid)


# ----------------------------------------------------------------------------------------------------------------
# loading and layering
# ----------------------------------------------------------------------------------------------------------------
def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _parse_warmup(value: Any) -> tuple[int, float]:
    if isinstance(value, str):
        return 0, float(value.strip().rstrip("%").strip()) / 100.0
    return int(value or 0), 0.0


def _template_fields(template: str) -> list[str]:
    out = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            out.append(name.split(".")[0].split("[")[0])
    return out


def _check_entry(doc: _Doc, i: int, entry: dict[str, Any], known: dict[str, Check]) -> Check | None:
    """Validate one schema-valid entry against what is loaded so far; the merged check, or None on problems."""
    cid = entry["id"]
    base = ["checks", i]
    n_before = len(doc.problems)
    prev = known.get(cid)
    if prev is None:
        missing = [k for k in _REQUIRED_NEW if k not in entry]
        if missing:
            doc.problem(base, f"a new check needs {', '.join(repr(m) for m in missing)} (to override a check of "
                              "another file, load that file first, e.g. rules: [default, this-file])", cid)
            return None
    merged: dict[str, Any] = prev.to_dict() if prev else {"params": {}, "exclude": [], "for": 1, "warmup": 0,
                                                          "message": "", "hint": "", "when": [], "unless": [],
                                                          "explains": []}
    if prev and entry.get("detector", prev.detector) != prev.detector:
        merged["params"] = {}  # another detector: the old parameters do not apply
    for k, v in entry.items():
        if k == "params":
            merged["params"] = {**merged["params"], **v}
        elif k != "enabled":
            merged[k] = v
    det = DETECTORS[merged["detector"]]
    # parameters
    takes = ", ".join(det.params) if det.params else "no parameters"
    for k in merged["params"]:
        if k not in det.params:
            doc.problem(base + ["params", k], f"unknown parameter '{k}' for detector '{det.name}'; it takes: {takes}",
                        cid, key=True)
    params_schema = {"type": "object", "properties": {k: s for k, (s, _) in det.params.items()}}
    _schema_problems(doc, merged["params"], params_schema, base + ["params"], cid)
    # metrics fit the detector
    metrics = merged["metrics"]
    is_pair = isinstance(metrics, dict)
    mpath = base + ["metrics"] if "metrics" in entry else base + ["detector"]
    if det.kind == "pair" and not is_pair:
        doc.problem(mpath, f"detector '{det.name}' compares two series: expected metrics: {{a: ..., b: ...}}", cid)
    elif det.kind != "pair" and is_pair:
        doc.problem(mpath, f"detector '{det.name}' reads {'a group of' if det.kind == 'group' else 'each'} "
                           "series: expected a metric glob or a list of them, not {a:, b:}", cid)
    patterns = [metrics["a"], metrics["b"]] if is_pair else list(_as_tuple(metrics))
    for j, pat in enumerate(patterns):
        if not pattern_can_match(pat):
            sub = (["a", "b"][j] if is_pair else (j if isinstance(metrics, list) else None))
            path = mpath + ([sub] if sub is not None else [])
            families = sorted({t.split("/")[0] + "/" for t in METRIC_TEMPLATES})
            doc.problem(path, f"metric pattern '{pat}' can never match a recorded metric; names start with "
                              f"one of: {', '.join(families)} (see README, 'What is measured')", cid)
    # conditions on companion series
    conditions: dict[str, list[Condition]] = {"when": [], "unless": []}
    for key in ("when", "unless"):
        for j, cond in enumerate(merged.get(key) or []):
            c = _condition(doc, base + [key, j], cond, cid) if key in entry else _as_condition(cond)
            if c is not None:
                conditions[key].append(c)
    explains = list(merged.get("explains") or [])
    if cid in explains:
        doc.problem(base + ["explains"], "a check cannot explain itself", cid)
    # message template
    if merged.get("message"):
        allowed = list(BASE_FIELDS) + list(det.fields)
        bad = [f for f in _template_fields(merged["message"]) if f not in allowed]
        if bad:
            doc.problem(base + ["message"], f"message names {', '.join('{' + b + '}' for b in bad)}; "
                                            f"fields available here: {', '.join(allowed)}", cid)
        else:
            sample = {f: 1.0 for f in allowed} | {"metric": "m", "check": cid, "lowest": "m", "highest": "m",
                                                  "steps": "steps 1-2"}
            try:
                merged["message"].format(**sample)
            except (ValueError, IndexError, KeyError) as e:
                doc.problem(base + ["message"], f"message is not a valid template: {e}", cid)
    if len(doc.problems) > n_before:
        return None
    w_steps, w_share = _parse_warmup(merged.get("warmup"))
    if w_share > 1:
        doc.problem(base + ["warmup"], f"'warmup': expected a share of the run up to 100%, got {entry['warmup']!r}",
                    cid)
        return None
    node = doc.node(base)
    line = node.start_mark.line + 1 if node is not None else 1
    return Check(
        id=cid, summary=merged["summary"], severity=merged["severity"], detector=det.name,
        metrics=() if is_pair else _as_tuple(metrics), pair=(metrics["a"], metrics["b"]) if is_pair else None,
        exclude=_as_tuple(merged.get("exclude")), params={**det.defaults(), **merged["params"]},
        for_steps=int(merged.get("for") or 1), warmup_steps=w_steps, warmup_share=w_share,
        message=merged.get("message") or "", hint=(merged.get("hint") or "").strip(),
        when=tuple(conditions["when"]), unless=tuple(conditions["unless"]), explains=tuple(explains),
        source=f"{doc.file}:{line}",
    )


def _as_condition(d: Mapping[str, Any]) -> Condition:
    """A condition already validated (inherited from an earlier file, in :meth:`Condition.to_dict` form)."""
    if "all" in d:
        return Condition((), "", all=tuple(_as_condition(c) for c in d["all"]))
    if "any" in d:
        return Condition((), "", any=tuple(_as_condition(c) for c in d["any"]))
    m = d["metrics"]
    pair = (m["a"], m["b"]) if isinstance(m, Mapping) else None
    return Condition(() if pair else tuple(m), d["detector"], dict(d.get("params") or {}),
                     tuple(d.get("exclude") or ()), int(d.get("within") or 0), pair=pair)


def _condition(doc: _Doc, path: list[Any], cond: Mapping[str, Any], cid: str) -> Condition | None:
    """Validate one condition entry (its schema, its detector's kind and parameters, its metric patterns)."""
    n_before = len(doc.problems)
    combo = "all" if "all" in cond else "any" if "any" in cond else None
    _schema_problems(doc, cond, {"all": _ALL_OF, "any": _ANY_OF}.get(combo or "", CONDITION_SCHEMA), path, cid)
    if len(doc.problems) > n_before:
        return None
    if combo is not None:
        parts = [_condition(doc, path + [combo, j], c, cid) for j, c in enumerate(cond[combo])]
        if any(p is None for p in parts):
            return None
        return Condition((), "", **{combo: tuple(parts)})  # type: ignore[arg-type]
    det = DETECTORS[cond["detector"]]
    is_pair = isinstance(cond["metrics"], Mapping)
    if det.kind == "group":
        doc.problem(path + ["detector"], f"a condition needs a detector that reads each series on its own or a "
                                         f"pair of them; '{det.name}' reads a group", cid)
        return None
    if (det.kind == "pair") != is_pair:
        doc.problem(path + ["metrics"], f"detector '{det.name}' reads "
                    + ("two series: give metrics as {a: ..., b: ...}" if det.kind == "pair" else
                       "each series on its own: give a metric name or glob, or a list of them"), cid)
        return None
    params = dict(cond.get("params") or {})
    takes = ", ".join(det.params) if det.params else "no parameters"
    for k in params:
        if k not in det.params:
            doc.problem(path + ["params", k], f"unknown parameter '{k}' for detector '{det.name}'; it takes: "
                                              f"{takes}", cid, key=True)
    _schema_problems(doc, params, {"type": "object", "properties": {k: s for k, (s, _) in det.params.items()}},
                     path + ["params"], cid)
    if is_pair:
        pair = (cond["metrics"]["a"], cond["metrics"]["b"])
        named = [(path + ["metrics", k], p) for k, p in zip("ab", pair)]
        metrics: tuple[str, ...] = ()
    else:
        pair = None
        metrics = _as_tuple(cond["metrics"])
        named = [(path + ["metrics"] + ([j] if isinstance(cond["metrics"], list) else []), p)
                 for j, p in enumerate(metrics)]
    for where, pat in named:
        if not pattern_can_match(pat):
            doc.problem(where, f"metric pattern '{pat}' can never match a recorded metric "
                               "(see README, 'What is measured')", cid)
    if len(doc.problems) > n_before:
        return None
    return Condition(metrics, det.name, {**det.defaults(), **params}, _as_tuple(cond.get("exclude")),
                     int(cond.get("within") or 0), pair=pair)


def _load_file(path: Path, label: str, rules: RuleSet) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RuleError([RuleProblem(label, 1, 1, f"cannot read rule file: {e.strerror or e}")]) from None
    doc = _Doc(text, label)
    data = doc.data
    if data is None:
        raise RuleError([RuleProblem(label, 1, 1, "empty rule file; expected a mapping with 'checks:'")])
    _schema_problems(doc, data, FILE_SCHEMA, [], None)
    if doc.problems and not isinstance(data, dict):
        raise RuleError(doc.problems)
    seen: dict[str, int] = {}
    known = dict(rules.checks)
    entries = data.get("checks") if isinstance(data.get("checks"), list) else []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        n_before = len(doc.problems)
        _schema_problems(doc, entry, CHECK_SCHEMA, ["checks", i], entry.get("id") if isinstance(
            entry.get("id"), str) else None)
        if len(doc.problems) > n_before:
            continue
        cid = entry["id"]
        if cid in seen:
            doc.problem(["checks", i, "id"], f"duplicate id (first defined at entry {seen[cid] + 1})", cid)
            continue
        seen[cid] = i
        check = _check_entry(doc, i, entry, known)
        if check is not None:
            known[cid] = check
            if entry.get("enabled") is False:
                rules.disabled.add(cid)
            elif entry.get("enabled") is True:
                rules.disabled.discard(cid)
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("explains"), list) and entry.get("id") in known:
            for j, other in enumerate(entry["explains"]):
                if isinstance(other, str) and other not in known:
                    doc.problem(["checks", i, "explains", j], f"explains unknown check '{other}'; loaded checks: "
                                                              f"{', '.join(known)}", entry["id"])
    disable = data.get("disable") if isinstance(data.get("disable"), list) else []
    for j, cid in enumerate(disable):
        if cid not in known:
            doc.problem(["disable", j], f"cannot disable unknown check '{cid}'; loaded checks: "
                                        f"{', '.join(known) or '(none)'}")
        else:
            rules.disabled.add(cid)
    if doc.problems:
        raise RuleError(sorted(doc.problems, key=lambda p: (p.line, p.column)))
    rules.checks = known
    rules.sources.append(label)


def load_rules(sources: str | Path | Sequence[str | Path] = "default") -> RuleSet:
    """Load and layer rule files in order. ``"default"`` is the built-in pack. Raises :class:`RuleError` listing
    every problem found (file:line:column, check id, what was expected)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    rules = RuleSet(checks={})
    for src in sources:
        if not isinstance(src, (str, Path)):
            raise ConfigError(f"rules: expected 'default' or a path to a YAML rule file, got {src!r}")
        if str(src) == "default":
            _load_file(default_rules_path(), "default", rules)
        else:
            path = Path(src)
            if not path.is_file():
                raise RuleError([RuleProblem(str(src), 1, 1, "no such rule file (expected 'default' or a path "
                                                                "to a YAML file)")])
            _load_file(path, str(src), rules)
    return rules
