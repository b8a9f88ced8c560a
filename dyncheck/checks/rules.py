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
        until: 10%                         # optional: only the first steps or share of the run are evaluated
        message: "{metric} jumped to {value:.3g} at step {step}"
        hint: What usually causes it, and what to try.
        unless:                            # optional: conditions on other series that rule the finding out
          - metrics: lr/*                  #   a companion metric (glob: any matching series)
            detector: step_change          #   any per-series detector; its condition at the same step
            params: {factor: 1.5}
            within: 20                     #   ... or within this many steps of it (default 0: as of that step;
                                           #   run: anywhere in the run)
        when: [...]                        # optional: conditions that must all hold too
        explains: [update-too-large]       # optional: findings of these checks are symptoms of this one
    disable: [update-too-small]            # switch off checks loaded from an earlier file

Files are layered in order: a later entry whose id is already loaded overrides only the keys it gives (``params``
merge key by key), ``enabled: false`` or ``disable:`` switch a check off. ``default`` stands for the built-in pack.

Every input has bounds (:data:`LIMITS`, README "Input limits"): a YAML file (rule file or baseline) is at most
1 MB of UTF-8 text, nests at most 50 levels and holds at most 10,000 nodes, aliases counted as what they expand to
(a self-referencing alias is refused); a glob is at most 200 characters with at most 20 ``*``; a message template
names only ``{field}`` or ``{field:spec}`` with a field the detector declares, widths up to 200 and precisions
up to 20; integer detector parameters have upper bounds (``window`` 1,000 points, ``tail_rank`` 100, other
counts 1,000,000) and step counts (``for``, ``warmup``, ``within``) at most 10^9. Anything else is a
:class:`~dyncheck.errors.RuleError` naming the file, line, column and what was expected -- never a traceback.
"""

from __future__ import annotations

import math
import re
import stat
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import jsonschema
import yaml

from ..errors import ConfigError, RuleError, RuleProblem
from ..names import METRIC_TEMPLATES, pattern_can_match
from .detectors import DETECTORS

__all__ = ["Check", "Condition", "RuleSet", "load_rules", "default_rules_path", "BASE_FIELDS", "SEVERITIES",
           "LIMITS", "YamlDocument", "YamlInputError", "read_yaml", "parse_yaml", "render_message",
           "template_problems"]

SEVERITIES = ("error", "warning", "info")
#: fields every message template may name
BASE_FIELDS = ("value", "step", "first_step", "last_step", "steps", "metric", "check", "points")
#: what each field holds when a message is formatted (detector fields not listed are numbers)
_INT_FIELDS = frozenset({"step", "first_step", "last_step", "points"})
_STR_FIELDS = frozenset({"steps", "metric", "check", "lowest", "highest"})

#: the bounds on every input dyncheck reads from files (README, "Input limits"); read-only: the schemas below are
#: built from them
LIMITS: Mapping[str, int] = MappingProxyType({
    "file_bytes": 1_000_000,      # a YAML file: rule file or baseline
    "depth": 50,                  # YAML collections nested in one another (the file's own mapping is the first)
    "nodes": 10_000,              # YAML scalars and collections, an alias counted as the nodes it stands for
    "int_digits": 100,            # digits of an integer in a YAML file
    "glob_chars": 200,            # a metric glob
    "glob_stars": 20,             # '*' in a metric glob
    "id_chars": 100,              # a check id
    "template_chars": 2_000,      # a message template
    "format_width": 200,          # width in a {field:spec}
    "format_precision": 20,       # precision in a {field:spec}
    "steps": 1_000_000_000,       # for, warmup (steps), within
    "window": 1_000,              # detector parameter 'window' (points; spike's robust_z holds a window per point)
    "tail_rank": 100,             # detector parameter 'tail_rank'
    "count": 1_000_000,           # every other integer detector parameter (min_points, max_duration, ...)
})
_CHECK_KEYS = ("id", "summary", "severity", "metrics", "exclude", "detector", "params", "for", "warmup", "until",
               "message", "hint", "when", "unless", "explains", "enabled")
_REQUIRED_NEW = ("summary", "severity", "metrics", "detector")

_GLOB = {"type": "string", "minLength": 1, "maxLength": LIMITS["glob_chars"]}
_GLOBS = {"type": "array", "items": _GLOB, "minItems": 1}
_PAIR = {"type": "object", "required": ["a", "b"], "additionalProperties": False,
         "properties": {"a": _GLOB, "b": _GLOB}}
_CHECK_ID = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9._-]*$", "maxLength": LIMITS["id_chars"]}
_STEPS = {"type": "integer", "minimum": 0, "maximum": LIMITS["steps"]}
CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["metrics", "detector"],
    "additionalProperties": False,
    "properties": {
        "metrics": {"anyOf": [_GLOB, _GLOBS, _PAIR]},
        "exclude": {"anyOf": [_GLOB, _GLOBS]},
        "detector": {"enum": sorted(DETECTORS)},
        "params": {"type": "object"},
        "within": {"anyOf": [_STEPS, {"const": "run"}]},
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
            _GLOB,
            _GLOBS,
            _PAIR,
        ]},
        "exclude": {"anyOf": [_GLOB, {**_GLOBS, "minItems": 0}]},
        "detector": {"enum": sorted(DETECTORS)},
        "params": {"type": "object"},
        "for": {**_STEPS, "minimum": 1},
        "warmup": {"anyOf": [_STEPS,
                             {"type": "string", "pattern": r"^\s*\d{1,3}(\.\d{1,6})?\s*%\s*$"}]},
        "until": {"anyOf": [_STEPS,
                            {"type": "string", "pattern": r"^\s*\d{1,3}(\.\d{1,6})?\s*%\s*$"}]},
        "message": {"type": "string", "maxLength": LIMITS["template_chars"]},
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
    ("metrics", "anyOf"): "a metric name or glob (at most 200 characters), a list of them, or {a: ..., b: ...} "
                          "for a pair detector",
    ("exclude", "anyOf"): "a metric glob (at most 200 characters) or a list of them",
    ("within", "anyOf"): "a number of steps (int >= 0) or run (anywhere in the run)",
    ("warmup", "anyOf"): 'a number of steps (int >= 0) or a share of the run such as "10%"',
    ("until", "anyOf"): 'a number of steps (int >= 0) or a share of the run such as "10%"',
    ("id", "pattern"): "lowercase letters, digits, '.', '_' or '-' (like loss-spike)",
}


@dataclass(frozen=True)
class Condition:
    """A condition on companion series: ``detector`` with ``params`` on each metric matching ``metrics`` (a
    per-series detector), or on the pair ``pair`` (a pair detector such as ``ratio``); it holds at a step of the
    check when it holds on any matching series as of that step (its latest point at or before it), or with
    ``within`` at any point within that many steps either side (``within: run``: anywhere in the run). A detector
    that gives one verdict for the whole run (no_progress, plateau, present, a median scope) holds everywhere or
    nowhere."""

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
    #: ``until``: the check looks only at the first steps (or share) of the run (None: to its end)
    until_steps: int | None = None
    until_share: float | None = None
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
        until: dict[str, Any] = ({"until": f"{self.until_share * 100:g}%"} if self.until_share is not None else
                                 {"until": self.until_steps} if self.until_steps is not None else {})
        return {**until, "id": self.id, "summary": self.summary, "severity": self.severity, "detector": self.detector,
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
# YAML with positions and bounds (rule files and baselines)
# ----------------------------------------------------------------------------------------------------------------
class YamlInputError(ConfigError):
    """A YAML input (rule file, baseline) that cannot be read: missing, too large, not UTF-8 text, not valid
    YAML, beyond the nesting or size limits, or with keys that are not strings. ``problems`` holds
    ``(line, column, message)`` triples (1-based); the message is one ``file:line:column: message`` line each."""

    def __init__(self, file: str, problems: Sequence[tuple[int, int, str]]):
        self.file = file
        self.problems = list(problems)
        super().__init__("\n".join(f"{file}:{line}:{col}: {msg}" for line, col, msg in self.problems))


_BaseLoader: Any = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader  # libyaml when installed: 10-50x faster


def _make_loader(base: Any) -> Any:
    """The safe loader ``base`` (no arbitrary objects) with every failure to construct a value a YAML error at
    the value's position: an integer of more than ``int_digits`` digits, a date that does not exist, ..."""

    class Loader(base):  # type: ignore[misc,valid-type]
        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep=deep)
            except yaml.YAMLError:
                raise
            except (ValueError, TypeError, OverflowError, ArithmeticError) as e:
                raise yaml.constructor.ConstructorError(None, None, f"cannot read this value: {e}",
                                                        node.start_mark) from None

        def construct_bounded_int(self, node: Any) -> Any:
            digits = sum(c.isalnum() for c in str(node.value))
            if digits > LIMITS["int_digits"]:
                raise yaml.constructor.ConstructorError(
                    None, None, f"an integer of {digits:,} digits; expected at most {LIMITS['int_digits']} digits "
                                f"(write a large number as a float, e.g. 1e300)", node.start_mark)
            return yaml.constructor.SafeConstructor.construct_yaml_int(self, node)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_bounded_int)
    return Loader


_Loader = _make_loader(_BaseLoader)

# YAML's printable characters (YAML 1.1, 5.1): anything else is refused before parsing, with its position
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_STR_TAG = "tag:yaml.org,2002:str"
_KIND_OF_TAG = {"tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:int": "an integer",
                "tag:yaml.org,2002:float": "a number", "tag:yaml.org,2002:null": "null",
                "tag:yaml.org,2002:timestamp": "a date"}


def _line_col(text: str | bytes, offset: int) -> tuple[int, int]:
    nl = "\n" if isinstance(text, str) else b"\n"
    line = text.count(nl, 0, offset) + 1  # type: ignore[arg-type]
    return line, offset - (text.rfind(nl, 0, offset) + 1) + 1  # type: ignore[arg-type]


def _decode(data: bytes, file: str, what: str) -> str:
    """The text of a YAML file: UTF-8 (a byte-order mark allowed), or UTF-16/32 with a byte-order mark."""
    if data.startswith(b"SQLite format 3\x00"):
        raise YamlInputError(file, [(1, 1, f"this is a SQLite database (a run store?), not a {what}; "
                                           f"expected a YAML text file")])
    boms = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
            (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
    for bom, enc in boms:
        if data.startswith(bom):
            break
    else:
        enc = "utf-8"
    try:
        return data.decode(enc)
    except UnicodeDecodeError as e:
        line, col = _line_col(data, e.start) if enc == "utf-8" else (1, 1)
        binary = b"\x00" in data[:4096]
        raise YamlInputError(file, [(line, col, (f"not a text file (it holds NUL bytes: binary data, or UTF-16 "
                                                 f"without a byte-order mark); expected a {what} in UTF-8"
                                                 if binary else f"not {enc.upper().replace('-SIG', '')} text: "
                                                 f"byte 0x{data[e.start]:02x} cannot be decoded ({e.reason}); "
                                                 f"save the {what} as UTF-8"))]) from None


def _prescan(text: str, file: str) -> None:
    """Walk YAML's events (the parser is not recursive) and refuse what would make composing or walking the
    document costly, before it is composed: collections nested deeper than ``depth``, more than ``nodes`` nodes
    counting each alias as the nodes it stands for (a "billion laughs" document), an alias inside the node it
    names (a recursive structure)."""
    max_depth, max_nodes = LIMITS["depth"], LIMITS["nodes"]
    stack: list[list[Any]] = []  # open collections: [anchor, nodes, levels of collections]
    done: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, levels) of a complete node
    total = 0

    def fail(mark: Any, message: str) -> None:
        raise YamlInputError(file, [(mark.line + 1, mark.column + 1, message)])

    def child(nodes: int, levels: int) -> None:
        if stack:
            stack[-1][1] += nodes
            stack[-1][2] = max(stack[-1][2], levels + 1)

    try:
        for ev in yaml.parse(text, Loader=_Loader):
            if isinstance(ev, yaml.CollectionStartEvent):
                if len(stack) >= max_depth:
                    fail(ev.start_mark, f"nested deeper than {max_depth} levels; expected at most {max_depth}")
                stack.append([ev.anchor, 1, 1])
                total += 1
            elif isinstance(ev, yaml.CollectionEndEvent):
                anchor, nodes, levels = stack.pop()
                if anchor:
                    done[anchor] = (nodes, levels)
                child(nodes, levels)
            elif isinstance(ev, yaml.ScalarEvent):
                if ev.anchor:
                    done[ev.anchor] = (1, 0)
                child(1, 0)
                total += 1
            elif isinstance(ev, yaml.AliasEvent):
                if any(s[0] == ev.anchor for s in stack):
                    fail(ev.start_mark, f"alias *{ev.anchor} refers to a node that contains it (a recursive "
                                        f"structure); expected a value that does not contain itself")
                if ev.anchor not in done:
                    fail(ev.start_mark, f"alias *{ev.anchor} names no anchor defined before it (&{ev.anchor})")
                nodes, levels = done[ev.anchor]
                if len(stack) + levels > max_depth:
                    fail(ev.start_mark, f"alias *{ev.anchor} nests the document deeper than {max_depth} levels; "
                                        f"expected at most {max_depth}")
                child(nodes, levels)
                total += nodes
            if total > max_nodes:
                fail(ev.start_mark, f"more than {max_nodes:,} values (an alias counted as the values it stands "
                                    f"for); expected at most {max_nodes:,}")
    except yaml.YAMLError as e:
        raise YamlInputError(file, [_yaml_error(e, text)]) from None


def _yaml_error(e: yaml.YAMLError, text: str) -> tuple[int, int, str]:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        line, col = mark.line + 1, mark.column + 1
    else:
        pos = getattr(e, "position", None)
        line, col = _line_col(text, pos) if isinstance(pos, int) and 0 <= pos <= len(text) else (1, 1)
    what = getattr(e, "problem", None) or (str(e).splitlines() or ["?"])[0]
    context = getattr(e, "context", None)
    if context and what.startswith("but "):
        return line, col, f"not valid YAML: {context}, {what}"
    return line, col, f"not valid YAML: {what}" + (f" ({context})" if context and context != what else "")


@dataclass
class YamlDocument:
    """A YAML file read within :data:`LIMITS`: ``data`` as plain Python values (dicts with string keys, lists,
    strings, numbers, booleans, None, dates), ``root`` the composed node tree that says where each value came
    from, ``duplicates`` every key given twice in one mapping as (that key's node, its first node)."""

    file: str
    root: Any
    data: Any
    duplicates: list[tuple[Any, Any]] = field(default_factory=list)

    def node(self, path: Iterable[Any], *, key: bool = False) -> Any:
        """The node at ``path`` (keys and indices); with ``key`` the node of the last key itself. Stops at the
        deepest node that exists."""
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
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
            else:
                return node
        return node

    def position(self, path: Iterable[Any], *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the value at ``path`` (or of its key)."""
        mark = getattr(self.node(path, key=key), "start_mark", None)
        return (mark.line + 1, mark.column + 1) if mark else (1, 1)


def _key_problems(root: Any) -> tuple[list[tuple[int, int, str]], list[tuple[Any, Any]]]:
    """Keys that are not strings (``1:``, ``on:`` -- YAML 1.1 reads it as a boolean --, a list as a key), and keys
    given twice in one mapping."""
    bad: list[tuple[int, int, str]] = []
    dups: list[tuple[Any, Any]] = []
    seen_nodes: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen_nodes:  # an alias: its node was walked already
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, Any] = {}
            for k, v in node.value:
                todo.append(v)
                m = k.start_mark
                if isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(k, yaml.ScalarNode):
                    shape = "mapping" if isinstance(k, yaml.MappingNode) else "list"
                    bad.append((m.line + 1, m.column + 1, f"a key must be a string, not a {shape}"))
                elif k.tag != _STR_TAG:
                    kind = _KIND_OF_TAG.get(k.tag, "not a string")
                    bad.append((m.line + 1, m.column + 1, f"key {k.value!r} is read as {kind} by YAML; expected a "
                                                          f"string key (quote it: \"{k.value}\")"))
                elif k.value in first:
                    dups.append((k, first[k.value]))
                else:
                    first[k.value] = k
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
    bad.sort()
    return bad, sorted(dups, key=lambda d: (d[0].start_mark.line, d[0].start_mark.column))


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Parse one YAML document within :data:`LIMITS` with the safe loader. Raises :class:`YamlInputError`."""
    bad = _NOT_PRINTABLE.search(text)
    if bad:
        line, col = _line_col(text, bad.start())
        ch = ord(bad.group())
        raise YamlInputError(file, [(line, col, f"control character U+{ch:04X} is not allowed in YAML"
                                                + (" (a binary file?)" if ch == 0 else "")
                                                + "; expected text")])
    _prescan(text, file)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        bad_keys, dups = _key_problems(root) if root is not None else ([], [])
        if bad_keys:
            raise YamlInputError(file, bad_keys)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        raise YamlInputError(file, [_yaml_error(e, text)]) from None
    except RecursionError:  # not reachable within the depth limit; kept as a clear error if it were
        raise YamlInputError(file, [(1, 1, f"nested too deeply; expected at most {LIMITS['depth']} levels")]) \
            from None
    finally:
        loader.dispose()
    return YamlDocument(file, root, data, dups)


def read_yaml(path: str | Path, file: str | None = None, *, what: str = "YAML file") -> YamlDocument:
    """Read and parse a YAML file within :data:`LIMITS` (``file``: the name to report, default the path; ``what``:
    what the file should be, for messages). Raises :class:`YamlInputError`: no such file, not a regular file,
    larger than ``file_bytes``, not UTF-8 text, or what :func:`parse_yaml` refuses."""
    p = Path(path)
    label = str(p) if file is None else file
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise YamlInputError(label, [(1, 1, f"is a directory; expected a {what}")])
        if not stat.S_ISREG(st.st_mode):
            raise YamlInputError(label, [(1, 1, f"not a regular file; expected a {what}")])
        limit = LIMITS["file_bytes"]
        if st.st_size > limit:
            raise YamlInputError(label, [(1, 1, f"{st.st_size:,} bytes; a {what} may hold at most {limit:,} "
                                                f"bytes")])
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise YamlInputError(label, [(1, 1, f"cannot read {what}: {e.strerror or e}")]) from None
    if len(data) > limit:  # it grew while being read
        raise YamlInputError(label, [(1, 1, f"more than {limit:,} bytes; a {what} may hold at most {limit:,} "
                                            f"bytes")])
    return parse_yaml(_decode(data, label, what), label)


class _Doc:
    """A rule file being validated: its :class:`YamlDocument` and the problems found so far."""

    def __init__(self, yd: YamlDocument):
        self.yaml = yd
        self.file = yd.file
        self.root = yd.root
        self.data = yd.data
        self.problems: list[RuleProblem] = [self.problem_at(k, f"duplicate key '{k.value}'")
                                            for k, _ in yd.duplicates]

    def node(self, path: Iterable[Any], *, key: bool = False) -> Any:
        return self.yaml.node(path, key=key)

    def problem_at(self, node: Any, message: str, check: str | None = None) -> RuleProblem:
        mark = getattr(node, "start_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return RuleProblem(self.file, line, col, message, check)

    def problem(self, path: Sequence[Any], message: str, check: str | None = None, *, key: bool = False):
        self.problems.append(self.problem_at(self.node(path, key=key), message, check))


def _type_name(value: Any) -> str:
    import datetime as _dt

    if isinstance(value, _dt.date):
        return "a date"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing (null)", set: "a set", bytes: "binary data",
            tuple: "a list of pairs"}.get(type(value), type(value).__name__)


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a value from a file may be a megabyte long)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 5] + "...'" if isinstance(value, str) else r[: limit - 3] + "..."


def _describe(err: jsonschema.ValidationError, key: str) -> str:
    """A one-line description of a schema error, in the terms of the rule format."""
    v, inst = err.validator, err.instance
    what = f"'{key}'" if key else "the file"
    custom = _EXPECTED.get((key, v))
    if custom:
        return f"{what}: expected {custom}, got {_shown(inst)}"
    if v == "type":
        t = err.validator_value
        t = " or ".join(t) if isinstance(t, list) else t
        article = "an" if str(t)[0] in "aeiou" else "a"
        return f"{what}: expected {article} {t}, got {_type_name(inst)} {_shown(inst)}" if isinstance(
            inst, (str, int, float, bool, type(None))) else f"{what}: expected {article} {t}, got {_type_name(inst)}"
    if v == "enum":
        return f"{what}: expected one of {', '.join(map(str, err.validator_value))}; got {_shown(inst)}"
    if v == "const":
        return f"{what}: expected {err.validator_value!r}, got {_shown(inst)}"
    if v in ("minimum", "exclusiveMinimum", "maximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<="}[v]
        kind = "an integer" if err.schema.get("type") == "integer" else "a number"
        bound = f"{err.validator_value:,}" if isinstance(err.validator_value, int) and err.validator_value > 9999 \
            else err.validator_value
        return f"{what}: expected {kind} {op} {bound}, got {_shown(inst)}"
    if v == "minLength":
        return f"{what}: expected a non-empty string"
    if v == "maxLength":
        return f"{what}: expected at most {err.validator_value} characters, got {len(inst):,}"
    if v == "minItems":
        return f"{what}: expected a non-empty list"
    if v == "pattern":
        return f"{what}: {_shown(inst)} does not match {err.validator_value}"
    return f"{what}: {err.message[:200]}"


# integers are ints (JSON schema also takes 1e20 and 20.0, which a detector's window cannot be)
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)))
_VALIDATORS: dict[int, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    """A validator per schema object (the module's schemas and :func:`_param_schema`'s are long-lived)."""
    v = _VALIDATORS.get(id(schema))
    if v is None or v.schema is not schema:
        v = _VALIDATORS[id(schema)] = _Validator(schema)
    return v


@lru_cache(maxsize=None)
def _param_schema(detector: str) -> dict[str, Any]:
    """The JSON schema of a detector's parameters, with the upper bounds of :data:`LIMITS` on integers."""
    props = {}
    for k, (s, _) in DETECTORS[detector].params.items():
        t = s.get("type")
        if t == "integer" or (isinstance(t, list) and "integer" in t):
            s = {**s, "maximum": min(s.get("maximum", math.inf), LIMITS.get(k, LIMITS["count"]))}
        props[k] = s
    return {"type": "object", "properties": props}


def _schema_problems(doc: _Doc, instance: Any, schema: dict[str, Any], base: list[Any],
                     check: str | None) -> set[Any]:
    """Report every schema error of ``instance`` (at ``base`` in the file); the top-level keys of ``instance``
    that had one (``None`` for the instance as a whole)."""
    failed: set[Any] = set()
    errors = sorted(_validator(schema).iter_errors(instance),
                    key=lambda e: ([str(p) for p in e.absolute_path], e.validator != "type"))
    mistyped: set[tuple[str, ...]] = set()
    for err in errors:
        rel = list(err.absolute_path)
        at = tuple(map(str, rel))
        if at in mistyped:  # 1e20 for a window: "expected an integer" says it; "<= 10,000" would be noise
            continue
        if err.validator == "type":
            mistyped.add(at)
        path = base + rel
        key = next((str(p) for p in reversed(path) if isinstance(p, str)), "")
        cid = check
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = list(err.schema.get("properties", {}))
            extras = sorted((k for k in err.instance if k not in allowed), key=str)
            for extra in extras:
                doc.problem(path + [extra], f"unknown key '{extra}'; expected one of: {', '.join(allowed)}", cid,
                            key=True)
            failed.update(extras if not rel else [rel[0]])
            continue
        if err.validator == "required" and isinstance(err.instance, dict):
            missing = [r for r in err.validator_value if r not in err.instance]
            where = f" in '{key}'" if key else ""
            doc.problem(path, f"missing required key{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(repr(m) for m in missing)}{where}", cid)
            failed.update(missing if not rel else [rel[0]])
            continue
        doc.problem(path, _describe(err, key), cid)
        failed.add(rel[0] if rel else None)
    return failed


def _finite_problems(doc: _Doc, params: Mapping[str, Any], detector: str, path: list[Any], check: str) -> None:
    """Detector parameters must be finite: JSON schema's ``number`` admits YAML's ``.nan`` and ``.inf``, and a
    comparison with NaN is always false -- a ``factor: .nan`` would silently turn the check off."""
    for k, v in params.items():
        if isinstance(v, float) and not math.isfinite(v) and k in DETECTORS[detector].params:
            spelled = ".nan" if math.isnan(v) else (".inf" if v > 0 else "-.inf")
            at = doc.problem_at(doc.node(path + [k]), "")
            if any((p.line, p.column) == (at.line, at.column) for p in doc.problems):
                continue  # the schema already refused this value
            doc.problem(path + [k], f"'{k}': expected a finite number for detector '{detector}', got {spelled} "
                                    f"(a non-finite parameter silently disables the check)", check)


def _params_problems(doc: _Doc, params: Mapping[str, Any], detector: str, path: list[Any],
                     check: str | None, *, in_file: Mapping[str, Any] | None = None) -> None:
    """Unknown parameters, values outside the detector's schema and :data:`LIMITS`, non-finite numbers."""
    det = DETECTORS[detector]
    takes = ", ".join(det.params) if det.params else "no parameters"
    for k in params:
        if k not in det.params:
            doc.problem(path + [k], f"unknown parameter '{k}' for detector '{det.name}'; it takes: {takes}",
                        check, key=True)
    _schema_problems(doc, dict(params), _param_schema(det.name), path, check)
    _finite_problems(doc, params, det.name, path, check)


# ----------------------------------------------------------------------------------------------------------------
# message templates
# ----------------------------------------------------------------------------------------------------------------
# the format-spec mini-language: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_SPEC = re.compile(r"(?:(?P<fill>.)?(?P<align>[<>=^]))?(?P<sign>[-+ ])?(?P<z>z)?(?P<alt>\#)?(?P<zero>0)?"
                   r"(?P<width>\d+)?(?P<grouping>[,_])?(?:\.(?P<precision>\d+))?(?P<type>[a-zA-Z%])?", re.S)
_TYPES = {"number": "eEfFgGn%", "integer": "bdoxXneEfFgG%", "string": "s"}
_SAMPLES: dict[str, tuple[Any, ...]] = {"number": (1.5, -2.0, 0.0, float("nan"), float("inf"), -1e300),
                                        "integer": (0, 7, -123456789012, 10**18), "string": ("loss/train", "")}


def _field_kind(name: str) -> str:
    return "integer" if name in _INT_FIELDS else "string" if name in _STR_FIELDS else "number"


@lru_cache(maxsize=4096)
def _parsed_template(template: str) -> tuple[tuple[str, str | None, str | None, str | None], ...]:
    """``string.Formatter().parse`` of a template (raises ValueError for unbalanced braces)."""
    return tuple(string.Formatter().parse(template))


@lru_cache(maxsize=4096)
def _spec_problem(spec: str, kind: str) -> str | None:
    """What is wrong with a format spec for a value of ``kind`` (number, integer, string), or None."""
    if "{" in spec or "}" in spec:
        return f"format spec '{spec}' holds a field; a spec is fixed text such as .3g"
    m = _SPEC.fullmatch(spec)
    if not m:
        return f"'{spec}' is not a format spec (such as .3g, >8, .1%, d)"
    width, prec, t = m["width"], m["precision"], m["type"]
    if width and (len(width) > 6 or int(width) > LIMITS["format_width"]):
        return f"format width {width} is too large; expected at most {LIMITS['format_width']}"
    if prec and (len(prec) > 6 or int(prec) > LIMITS["format_precision"]):
        return f"format precision .{prec} is too large; expected at most {LIMITS['format_precision']}"
    if t and t not in _TYPES[kind]:
        article = "an" if kind == "integer" else "a"
        return f"format type '{t}' does not apply to {article} {kind}; expected one of: {', '.join(_TYPES[kind])}"
    for sample in _SAMPLES[kind]:
        try:
            format(sample, spec)
        except (ValueError, TypeError, OverflowError) as e:
            return f"format spec '{spec}' does not apply to {kind} values: {e}"
    return None


def template_problems(template: str, fields: Sequence[str] | None) -> list[str]:
    """What is wrong with a message template: unbalanced braces, fields that are not names of ``fields``
    (attribute and index access, positional ``{}``), conversions other than ``!s`` / ``!r``, format specs that
    do not fit the field or exceed the width and precision limits. ``fields`` None: any name is taken."""
    if len(template) > LIMITS["template_chars"]:
        return [f"message is {len(template):,} characters; expected at most {LIMITS['template_chars']:,}"]
    try:
        parts = _parsed_template(template)
    except ValueError as e:
        return [f"message is not a valid template: {e} (write {{{{ and }}}} for literal braces)"]
    out: list[str] = []
    unknown: list[str] = []
    for _, name, spec, conv in parts:
        if name is None:
            continue
        shown = "{" + name + "}"
        if name == "" or name.isdigit():
            out.append(f"message has a field without a name ({shown}); name a field, e.g. {{value}}")
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            base = re.split(r"[.\[]", name, maxsplit=1)[0]
            if base and ("." in name or "[" in name):
                example = f"{{{base}}}" if fields is None or base in fields else "{value}"
                out.append(f"message field {shown}: attribute and index access are not allowed; name a field "
                           f"itself, e.g. {example}")
            else:
                out.append(f"message field {shown} is not a field name")
            continue
        if fields is not None and name not in fields:
            unknown.append(name)
            continue
        if conv not in (None, "s", "r"):
            out.append(f"message field {{{name}!{conv}}}: expected no conversion, !s or !r")
            continue
        if spec:
            problem = _spec_problem(spec, "string" if conv else _field_kind(name))
            if problem:
                out.append(f"message field {{{name}:{spec}}}: {problem}")
    if unknown and fields is not None:
        out.insert(0, f"message names {', '.join('{' + b + '}' for b in unknown)}; fields available here: "
                      f"{', '.join(fields)}")
    return out


def render_message(template: str, fields: Mapping[str, Any]) -> str:
    """Format a message template with ``fields``, safely: only ``{name}`` / ``{name!s|r:spec}`` of names in
    ``fields`` are replaced (anything else -- a field that is missing, attribute or index access -- stays as
    written), a spec that does not fit the value or exceeds the limits shows the value plainly. Never raises."""
    try:
        parts = _parsed_template(template)
    except ValueError:
        return template
    out: list[str] = []
    for literal, name, spec, conv in parts:
        out.append(literal)
        if name is None:
            continue
        if name not in fields or conv not in (None, "s", "r"):
            out.append("{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}")
            continue
        value = fields[name]
        try:
            if conv:
                value = repr(value) if conv == "r" else str(value)
            kind = "string" if isinstance(value, str) else "integer" if isinstance(value, int) else "number"
            out.append(format(value, spec) if spec and _spec_problem(spec, kind) is None else str(value))
        except Exception:  # noqa: BLE001 -- a field's own __format__/__str__; show something, never fail
            out.append("{" + name + "}")
    return "".join(out)


# ----------------------------------------------------------------------------------------------------------------
# loading and layering
# ----------------------------------------------------------------------------------------------------------------
def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _steps_or_share(doc: _Doc, base: list[Any], key: str, merged: Mapping[str, Any], entry: Mapping[str, Any],
                    failed: Any, cid: str | None) -> tuple[int, float]:
    """``warmup`` / ``until``: (steps, share of the run) of a value the schema took; a share over 100% is a
    problem at that key."""
    if key in failed:
        return 0, 0.0
    steps, share = _parse_warmup(merged.get(key))
    if share > 1:
        doc.problem(base + [key], f"'{key}': expected a share of the run up to 100%, got {_shown(entry.get(key))}",
                    cid)
    return steps, share


def _parse_warmup(value: Any) -> tuple[int, float]:
    if isinstance(value, str):
        return 0, float(value.strip().rstrip("%").strip()) / 100.0
    return int(value or 0), 0.0


def _template_fields(template: str) -> list[str]:
    try:
        parts = _parsed_template(template)
    except ValueError:
        return []
    return [name.split(".")[0].split("[")[0] for _, name, _, _ in parts if name is not None]


def _glob_problems(doc: _Doc, path: list[Any], pattern: str, cid: str | None, *, can_match: bool = True,
                   families: bool = True) -> None:
    """A metric glob: at most ``glob_stars`` '*' (and ``glob_chars`` characters, by the schema), and one that can
    match a recorded metric."""
    if pattern.count("*") > LIMITS["glob_stars"]:
        doc.problem(path, f"metric pattern has {pattern.count('*')} '*'; expected at most {LIMITS['glob_stars']}",
                    cid)
        return
    try:
        matches = not can_match or pattern_can_match(pattern)
    except RecursionError:  # not within the length limit; a clear problem if the limit were raised too far
        doc.problem(path, f"metric pattern is too long to check; expected at most {LIMITS['glob_chars']} "
                          "characters", cid)
        return
    if not matches:
        shown = _shown(pattern)[1:-1] if isinstance(pattern, str) else pattern
        if families:
            names = sorted({t.split("/")[0] + "/" for t in METRIC_TEMPLATES})
            doc.problem(path, f"metric pattern '{shown}' can never match a recorded metric; names start with "
                              f"one of: {', '.join(names)} (see README, 'What is measured')", cid)
        else:
            doc.problem(path, f"metric pattern '{shown}' can never match a recorded metric "
                              "(see README, 'What is measured')", cid)


def _check_entry(doc: _Doc, i: int, entry: dict[str, Any], known: dict[str, Check],
                 failed: set[Any] = frozenset()) -> Check | None:  # type: ignore[assignment]
    """Validate one entry against what is loaded so far; the merged check, or None on problems. ``failed``: the
    keys the schema refused (already reported): the rest of the entry is still checked, so that one run reports
    every problem of the file."""
    cid = entry.get("id") if "id" not in failed and None not in failed else None
    base = ["checks", i]
    n_before = len(doc.problems)
    clean = {k: v for k, v in entry.items() if k not in failed and k in CHECK_SCHEMA["properties"]}
    prev = known.get(cid) if cid is not None else None
    if prev is None and cid is not None:
        missing = [k for k in _REQUIRED_NEW if k not in entry]
        if missing:
            doc.problem(base, f"a new check needs {', '.join(repr(m) for m in missing)} (to override a check of "
                              "another file, load that file first, e.g. rules: [default, this-file])", cid)
    merged: dict[str, Any] = prev.to_dict() if prev else {"params": {}, "exclude": [], "for": 1, "warmup": 0,
                                                          "message": "", "hint": "", "when": [], "unless": [],
                                                          "explains": []}
    if prev and clean.get("detector", prev.detector) != prev.detector:
        merged["params"] = {}  # another detector: the old parameters do not apply
    for k, v in clean.items():
        if k == "params":
            merged["params"] = {**merged["params"], **v}
        elif k != "enabled":
            merged[k] = v
    det = DETECTORS.get(merged["detector"]) if isinstance(merged.get("detector"), str) else None
    # parameters
    if det is not None and "params" not in failed:
        _params_problems(doc, merged["params"], det.name, base + ["params"], cid)
    # metrics fit the detector
    metrics = merged.get("metrics")
    is_pair = isinstance(metrics, dict)
    if metrics is not None and "metrics" not in failed and "exclude" not in failed:
        mpath = base + ["metrics"] if "metrics" in entry else base + ["detector"]
        if det is not None and det.kind == "pair" and not is_pair:
            doc.problem(mpath, f"detector '{det.name}' compares two series: expected metrics: {{a: ..., b: ...}}",
                        cid)
        elif det is not None and det.kind != "pair" and is_pair:
            doc.problem(mpath, f"detector '{det.name}' reads {'a group of' if det.kind == 'group' else 'each'} "
                               "series: expected a metric glob or a list of them, not {a:, b:}", cid)
        patterns = [metrics["a"], metrics["b"]] if is_pair else list(_as_tuple(metrics))
        for j, pat in enumerate(patterns):
            sub = (["a", "b"][j] if is_pair else (j if isinstance(metrics, list) else None))
            _glob_problems(doc, mpath + ([sub] if sub is not None else []), pat, cid)
        excl = merged.get("exclude")
        if "exclude" in clean:
            for j, pat in enumerate(_as_tuple(excl)):
                _glob_problems(doc, base + ["exclude"] + ([j] if isinstance(excl, list) else []), pat, cid,
                               can_match=False)
    # conditions on companion series
    conditions: dict[str, list[Condition]] = {"when": [], "unless": []}
    for key in ("when", "unless"):
        if key in failed:  # the list holds items that are not mappings (reported): check the ones that are
            if isinstance(entry.get(key), list):
                for j, cond in enumerate(entry[key]):
                    if isinstance(cond, dict):
                        _condition(doc, base + [key, j], cond, cid)
            continue
        for j, cond in enumerate(merged.get(key) or []):
            c = _condition(doc, base + [key, j], cond, cid) if key in clean else _as_condition(cond)
            if c is not None:
                conditions[key].append(c)
    explains = list(merged.get("explains") or []) if "explains" not in failed else []
    if cid is not None and cid in explains:
        doc.problem(base + ["explains"], "a check cannot explain itself", cid)
    # message template
    if merged.get("message") and "message" not in failed:
        allowed = list(BASE_FIELDS) + list(det.fields) if det is not None else None
        for problem in template_problems(merged["message"], allowed):
            doc.problem(base + ["message"], problem, cid)
    w_steps, w_share = _steps_or_share(doc, base, "warmup", merged, entry, failed, cid)
    u_steps: int | None = None
    u_share: float | None = None
    if merged.get("until") is not None:
        steps, share = _steps_or_share(doc, base, "until", merged, entry, failed, cid)
        u_steps, u_share = (None, share) if isinstance(merged["until"], str) else (steps, None)
    if len(doc.problems) > n_before or failed or cid is None or det is None:
        return None
    node = doc.node(base)
    line = node.start_mark.line + 1 if node is not None else 1
    return Check(
        id=cid, summary=merged["summary"], severity=merged["severity"], detector=det.name,
        metrics=() if is_pair else _as_tuple(metrics), pair=(metrics["a"], metrics["b"]) if is_pair else None,
        exclude=_as_tuple(merged.get("exclude")), params={**det.defaults(), **merged["params"]},
        for_steps=int(merged.get("for") or 1), warmup_steps=w_steps, warmup_share=w_share,
        until_steps=u_steps, until_share=u_share,
        message=merged.get("message") or "", hint=(merged.get("hint") or "").strip(),
        when=tuple(conditions["when"]), unless=tuple(conditions["unless"]), explains=tuple(explains),
        source=f"{doc.file}:{line}",
    )


def _within(value: Any) -> int:
    """``within``: a number of steps, or ``run`` (anywhere in the run: as many steps as a run may have)."""
    return LIMITS["steps"] if value == "run" else int(value or 0)


def _as_condition(d: Mapping[str, Any]) -> Condition:
    """A condition already validated (inherited from an earlier file, in :meth:`Condition.to_dict` form)."""
    if "all" in d:
        return Condition((), "", all=tuple(_as_condition(c) for c in d["all"]))
    if "any" in d:
        return Condition((), "", any=tuple(_as_condition(c) for c in d["any"]))
    m = d["metrics"]
    pair = (m["a"], m["b"]) if isinstance(m, Mapping) else None
    return Condition(() if pair else tuple(m), d["detector"], dict(d.get("params") or {}),
                     tuple(d.get("exclude") or ()), _within(d.get("within")), pair=pair)


def _condition(doc: _Doc, path: list[Any], cond: Mapping[str, Any], cid: str | None) -> Condition | None:
    """Validate one condition entry (its schema, its detector's kind and parameters, its metric patterns); every
    problem is reported, also those of the parts the schema took when another part was refused."""
    n_before = len(doc.problems)
    combo = "all" if "all" in cond else "any" if "any" in cond else None
    failed = _schema_problems(doc, cond, {"all": _ALL_OF, "any": _ANY_OF}.get(combo or "", CONDITION_SCHEMA), path,
                              cid)
    if combo is not None:
        if combo in failed or None in failed:
            return None
        parts = [_condition(doc, path + [combo, j], c, cid) for j, c in enumerate(cond[combo])]
        if any(p is None for p in parts) or failed:
            return None
        return Condition((), "", **{combo: tuple(parts)})  # type: ignore[arg-type]
    if None in failed:
        return None
    det = DETECTORS.get(cond.get("detector")) if "detector" not in failed and isinstance(
        cond.get("detector"), str) else None
    metrics_ok = "metrics" not in failed and "metrics" in cond
    is_pair = metrics_ok and isinstance(cond["metrics"], Mapping)
    if det is not None and det.kind == "group":
        doc.problem(path + ["detector"], f"a condition needs a detector that reads each series on its own or a "
                                         f"pair of them; '{det.name}' reads a group", cid)
        det = None
    elif det is not None and metrics_ok and (det.kind == "pair") != is_pair:
        doc.problem(path + ["metrics"], f"detector '{det.name}' reads "
                    + ("two series: give metrics as {a: ..., b: ...}" if det.kind == "pair" else
                       "each series on its own: give a metric name or glob, or a list of them"), cid)
    params = dict(cond.get("params") or {}) if "params" not in failed else {}
    if det is not None and "params" not in failed:
        _params_problems(doc, params, det.name, path + ["params"], cid)
    pair = None
    metrics: tuple[str, ...] = ()
    if metrics_ok:
        if is_pair:
            pair = (cond["metrics"]["a"], cond["metrics"]["b"])
            named = [(path + ["metrics", k], p) for k, p in zip("ab", pair)]
        else:
            metrics = _as_tuple(cond["metrics"])
            named = [(path + ["metrics"] + ([j] if isinstance(cond["metrics"], list) else []), p)
                     for j, p in enumerate(metrics)]
        for where, pat in named:
            _glob_problems(doc, where, pat, cid, families=False)
    if "exclude" not in failed and "exclude" in cond:
        excl = cond["exclude"]
        for j, pat in enumerate(_as_tuple(excl)):
            _glob_problems(doc, path + ["exclude"] + ([j] if isinstance(excl, list) else []), pat, cid,
                           can_match=False)
    if len(doc.problems) > n_before or failed or det is None:
        return None
    return Condition(metrics, det.name, {**det.defaults(), **params}, _as_tuple(cond.get("exclude")),
                     _within(cond.get("within")), pair=pair)


def _load_file(path: Path, label: str, rules: RuleSet) -> None:
    try:
        yd = read_yaml(path, label, what="rule file")
    except YamlInputError as e:
        raise RuleError([RuleProblem(label, line, col, msg) for line, col, msg in e.problems]) from None
    doc = _Doc(yd)
    data = doc.data
    if data is None:
        raise RuleError(doc.problems or [RuleProblem(label, 1, 1, "empty rule file; expected a mapping with "
                                                                  "'checks:'")])
    _schema_problems(doc, data, FILE_SCHEMA, [], None)
    if doc.problems and not isinstance(data, dict):
        raise RuleError(doc.problems)
    seen: dict[str, int] = {}
    known = dict(rules.checks)
    entries = data.get("checks") if isinstance(data.get("checks"), list) else []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue  # the schema said so
        raw_id = entry.get("id")
        label_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= LIMITS["id_chars"] else None
        failed = _schema_problems(doc, entry, CHECK_SCHEMA, ["checks", i], label_id)
        if failed:
            _check_entry(doc, i, entry, known, failed)  # report the rest of the entry's problems too
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
        if isinstance(entry, dict) and isinstance(entry.get("explains"), list) and isinstance(
                entry.get("id"), str) and entry["id"] in known:
            for j, other in enumerate(entry["explains"]):
                if isinstance(other, str) and other not in known:
                    doc.problem(["checks", i, "explains", j], f"explains unknown check '{_shown(other)[1:-1]}'; "
                                                              f"loaded checks: {', '.join(known)}", entry["id"])
    disable = data.get("disable") if isinstance(data.get("disable"), list) else []
    for j, cid in enumerate(disable):
        if not isinstance(cid, str):
            continue  # the schema said so
        if cid not in known:
            doc.problem(["disable", j], f"cannot disable unknown check '{_shown(cid)[1:-1]}'; loaded checks: "
                                        f"{', '.join(known) or '(none)'}")
        else:
            rules.disabled.add(cid)
    if doc.problems:
        raise RuleError(sorted(doc.problems, key=lambda p: (p.line, p.column)))
    rules.checks = known
    rules.sources.append(label)


def load_rules(sources: str | Path | Sequence[str | Path] = "default") -> RuleSet:
    """Load and layer rule files in order. ``"default"`` is the built-in pack. Raises :class:`RuleError` listing
    every problem found (file:line:column, check id, what was expected), also for a file that cannot be read or
    exceeds :data:`LIMITS`."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    rules = RuleSet(checks={})
    for src in sources:
        if not isinstance(src, (str, Path)):
            raise ConfigError(f"rules: expected 'default' or a path to a YAML rule file, got {_shown(src)}")
        if str(src) == "default":
            _load_file(default_rules_path(), "default", rules)
        elif not str(src).strip():
            raise RuleError([RuleProblem(repr(str(src)), 1, 1, "an empty path; expected 'default' or a path to a "
                                                              "YAML rule file")])
        else:
            path = Path(src)
            try:
                exists = path.exists()
            except (OSError, ValueError) as e:  # a name too long, a NUL byte
                raise RuleError([RuleProblem(str(src)[:300], 1, 1, f"not a usable path: {e}")]) from None
            if not exists:
                raise RuleError([RuleProblem(str(src), 1, 1, "no such rule file (expected 'default' or a path "
                                                                "to a YAML file)")])
            _load_file(path, str(src), rules)
    return rules
