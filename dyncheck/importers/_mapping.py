"""Source names -> dyncheck's metric names: the default mapping and the user's mapping file.

A mapping file (YAML, validated with a JSON schema the way rule files are; every problem at once as
``file:line:column: message``)::

    metrics:                 # source name or glob -> dyncheck name; the text each * matched is {1}, {2}, ...
      my_loss: loss/train
      "opt/lr_group*": "lr/AdamW/pg{1}"
    histograms:              # TensorBoard histogram tags -> per-layer norms (sqrt of the histogram's sum of squares)
      "grads/*": "grad_norm/{1}"
    ignore: [epoch, "*_runtime"]   # source names to leave out
    step: global_step        # the CSV column / JSONL key that holds the step (default: the format's own)
    defaults: true           # names the file does not map go through the default mapping (default: true)

Names are matched in the file's order, then (unless ``defaults: false``) by the default mapping; a name nothing
maps becomes ``logged/<name>``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from ..names import METRIC_TEMPLATES, pattern_can_match

__all__ = ["DEFAULT_HISTOGRAMS", "DEFAULT_SCALARS", "MAPPING_KEYS", "Mapping", "load_mapping"]

#: the default scalar mapping, first match wins: (source glob, dyncheck name; {1} is what the first * matched)
DEFAULT_SCALARS: tuple[tuple[str, str], ...] = (
    ("loss", "loss/train"), ("train_loss", "loss/train"), ("train/loss", "loss/train"),
    ("training_loss", "loss/train"), ("train_loss_step", "loss/train"), ("loss_step", "loss/train"),
    ("val_loss", "loss/val"), ("val/loss", "loss/val"), ("valid_loss", "loss/val"), ("validation_loss", "loss/val"),
    ("validation/loss", "loss/val"), ("val_loss_epoch", "loss/val"), ("eval_loss", "loss/val"),
    ("eval/loss", "loss/val"),
    ("learning_rate", "lr/pg0"), ("lr", "lr/pg0"), ("train/learning_rate", "lr/pg0"), ("train/lr", "lr/pg0"),
    ("lr-*/pg*", "lr/{1}/pg{2-1}"),  # Lightning's LearningRateMonitor numbers groups from 1, dyncheck from 0
    ("lr-*", "lr/{1}/pg0"),
    ("grad_norm", "grad_norm/total"), ("train/grad_norm", "grad_norm/total"), ("grad_norm_total", "grad_norm/total"),
    ("grad_2.0_norm_total", "grad_norm/total"), ("grad_2.0_norm/*", "grad_norm/{1}"),
)
#: the default histogram mapping (TensorBoard ``add_histogram``): the histogram's L2 norm, sqrt(sum of squares)
DEFAULT_HISTOGRAMS: tuple[tuple[str, str], ...] = (
    ("grad/*", "grad_norm/{1}"), ("grads/*", "grad_norm/{1}"), ("gradients/*", "grad_norm/{1}"),
    ("*.grad", "grad_norm/{1}"), ("*/grad", "grad_norm/{1}"), ("*_grad", "grad_norm/{1}"),
    ("weights/*", "weight_norm/{1}"), ("params/*", "weight_norm/{1}"), ("parameters/*", "weight_norm/{1}"),
    ("*", "weight_norm/{1}"),
)
MAPPING_KEYS = ("metrics", "histograms", "ignore", "step", "defaults")
_LIMIT_ENTRIES = 10_000

_NAME = {"type": "string", "minLength": 1, "maxLength": 1000}
_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "metrics": {"type": "object", "additionalProperties": _NAME, "maxProperties": _LIMIT_ENTRIES},
        "histograms": {"type": "object", "additionalProperties": _NAME, "maxProperties": _LIMIT_ENTRIES},
        "ignore": {"type": "array", "items": _NAME, "maxItems": _LIMIT_ENTRIES},
        "step": _NAME,
        "defaults": {"type": "boolean"},
    },
}
_PLACEHOLDER = re.compile(r"\{(\d+)(-1)?\}")


@lru_cache(maxsize=4096)
def _regex(glob: str) -> re.Pattern[str]:
    """A source glob as a regular expression: each ``*`` captures any text (``/`` too), ``?`` one character."""
    parts = []
    for ch in glob:
        parts.append("(.*)" if ch == "*" else "(.)" if ch == "?" else re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _fill(template: str, groups: tuple[str, ...]) -> str | None:
    """``template`` with ``{n}`` replaced by the n-th capture (``{n-1}``: the capture as an integer, minus one;
    None when it is not a positive integer)."""
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(template[pos:m.start()])
        k = int(m.group(1))
        text = groups[k - 1] if 1 <= k <= len(groups) else ""
        if m.group(2):
            if not text.isdigit() or int(text) < 1 or len(text) > 9:
                return None
            text = str(int(text) - 1)
        out.append(text)
        pos = m.end()
    out.append(template[pos:])
    return "".join(out)


def _apply(rules: Iterable[tuple[str, str]], name: str) -> str | None:
    for glob, template in rules:
        m = _regex(glob).fullmatch(name)
        if m:
            target = _fill(template, m.groups())
            if target and not target.endswith("/"):  # a * that matched nothing names no layer
                return target
    return None


_SCHEME_LITERALS = tuple(t for t in METRIC_TEMPLATES if "*" not in t)
_SCHEME_FAMILIES = tuple(t[:-1] for t in METRIC_TEMPLATES if t.endswith("/*"))


def in_scheme(name: str) -> bool:
    """Whether ``name`` is already one of dyncheck's names (``loss/train``, ``grad_norm/<param>``, ...)."""
    return name in _SCHEME_LITERALS or any(name.startswith(f) and len(name) > len(f) for f in _SCHEME_FAMILIES)


@dataclass
class Mapping:
    """How the names of one source become dyncheck's: the user's rules first, then (``defaults``) the default ones."""

    metrics: tuple[tuple[str, str], ...] = ()
    histograms: tuple[tuple[str, str], ...] = ()
    ignore: tuple[str, ...] = ()
    step: str | None = None
    defaults: bool = True
    file: str | None = None
    _cache: dict[tuple[str, str], str | None] = field(default_factory=dict, repr=False)

    def ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in self.ignore)

    def scalar(self, name: str) -> str | None:
        """The dyncheck name of a scalar (None: ignored)."""
        key = ("s", name)
        if key not in self._cache:
            self._cache[key] = None if self.ignored(name) else (
                _apply(self.metrics, name)
                or (self.defaults and (name if in_scheme(name) else _apply(DEFAULT_SCALARS, name)))
                or f"logged/{name}")
        return self._cache[key]

    def histogram(self, tag: str) -> str | None:
        """The dyncheck name of a histogram's norm (None: ignored, or no rule maps it)."""
        key = ("h", tag)
        if key not in self._cache:
            self._cache[key] = None if self.ignored(tag) else (
                _apply(self.histograms, tag) or (_apply(DEFAULT_HISTOGRAMS, tag) if self.defaults else None))
        return self._cache[key]

    def to_meta(self) -> dict[str, Any]:
        return {"file": self.file, "metrics": dict(self.metrics), "histograms": dict(self.histograms),
                "ignore": list(self.ignore), "step": self.step, "defaults": self.defaults}


def _describe(err: jsonschema.ValidationError, key: str) -> str:
    v, inst = err.validator, err.instance
    what = f"'{key}'" if key else "the mapping file"
    shown = repr(inst) if len(repr(inst)) <= 80 else repr(inst)[:77] + "..."
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "nothing (null)"}
    got = kinds.get(type(inst), type(inst).__name__)
    if v == "type":
        want = {"object": "a mapping", "array": "a list", "string": "a string", "boolean": "true or false"}.get(
            str(err.validator_value), str(err.validator_value))
        return f"{what}: expected {want}, got {got}" + (f" {shown}" if not isinstance(inst, (dict, list)) else "")
    if v == "minLength":
        return f"{what}: expected a non-empty name"
    if v == "maxLength":
        return f"{what}: expected at most {err.validator_value} characters, got {len(inst):,}"
    if v in ("maxProperties", "maxItems"):
        return f"{what}: expected at most {err.validator_value:,} entries"
    return f"{what}: {err.message[:200]}"


def load_mapping(path: str | Path) -> Mapping:
    """Read and validate a mapping file. Raises :class:`~dyncheck.checks.rules.YamlInputError` (a
    :class:`~dyncheck.errors.ConfigError`) listing every problem as ``file:line:column: message``: not YAML, an
    unknown key (with the allowed ones), a value of the wrong type, a target outside dyncheck's name scheme, a
    ``{n}`` with no n-th ``*`` in its source."""
    from ..checks.rules import YamlInputError, read_yaml

    p = Path(path)
    yd = read_yaml(p, str(p), what="mapping file")
    problems: list[tuple[int, int, str]] = []

    def at(path: list[Any], message: str, *, key: bool = False) -> None:
        line, col = yd.position(path, key=key)
        problems.append((line, col, message))

    for k, _first in yd.duplicates:
        message = f"duplicate key '{k.value}'; each key may appear once"
        problems.append((k.start_mark.line + 1, k.start_mark.column + 1, message))
    data = yd.data if yd.data is not None else {}
    for err in sorted(jsonschema.Draft202012Validator(_SCHEMA).iter_errors(data),
                      key=lambda e: [str(x) for x in e.absolute_path]):
        path_ = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict) and not path_:
            for extra in sorted((k for k in err.instance if k not in MAPPING_KEYS), key=str):
                at([extra], f"unknown key '{extra}'; expected one of: {', '.join(MAPPING_KEYS)}", key=True)
            continue
        key = next((str(x) for x in reversed(path_) if isinstance(x, str)), "")
        at(path_, _describe(err, key))
    if problems or not isinstance(data, dict):
        raise YamlInputError(str(p), sorted(problems) or [(1, 1, "expected a mapping with the keys "
                                                                  + ", ".join(MAPPING_KEYS))])
    sections: dict[str, tuple[tuple[str, str], ...]] = {}
    for section in ("metrics", "histograms"):
        pairs = []
        for source, target in (data.get(section) or {}).items():
            stars = source.count("*") + source.count("?")
            bad = [m.group(0) for m in _PLACEHOLDER.finditer(target) if not 1 <= int(m.group(1)) <= stars]
            if bad:
                at([section, source], f"'{section}.{source}': {bad[0]} in the target refers to a * the source "
                                      f"'{source}' does not have ({stars} * or ?)")
                continue
            sample = _PLACEHOLDER.sub("x", target)
            if section == "histograms" and not sample.startswith(("grad_norm/", "weight_norm/", "update_ratio/")):
                at([section, source], f"'{section}.{source}': target {target!r}: a histogram's norm is a "
                                      f"per-layer norm; expected grad_norm/<param>, weight_norm/<param> or "
                                      f"update_ratio/<param>")
                continue
            if not in_scheme(sample) or not pattern_can_match(sample):
                at([section, source], f"'{section}.{source}': target {target!r} is not a dyncheck metric name; "
                                      f"expected one of: {', '.join(METRIC_TEMPLATES)} (* stands for a layer, "
                                      f"optimizer or key; README, 'What is measured')")
                continue
            pairs.append((source, target))
        sections[section] = tuple(pairs)
    if problems:
        raise YamlInputError(str(p), sorted(problems))
    return Mapping(metrics=sections["metrics"], histograms=sections["histograms"],
                   ignore=tuple(data.get("ignore") or ()), step=data.get("step"),
                   defaults=bool(data.get("defaults", True)), file=str(p))
