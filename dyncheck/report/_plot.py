"""Plotly figures as plain dicts, serialised directly: what ``plotly.graph_objects`` would hand plotly.js, without
building and validating its object tree (that took most of the report's time at the end of a fit).

:class:`Figure` has the few methods the report uses, with plotly.py's meaning: ``add_trace`` appends a trace
dict, ``update_layout`` merges nested dicts into the layout (lists and scalars replace), ``add_vrect`` /
``add_hline`` add the shapes plotly.py's helpers add (a rect spanning the y domain, a line spanning the x domain),
``add_annotation`` appends an annotation. :func:`to_json` writes numpy arrays as plotly.js typed arrays
(``{"dtype": "f4", "bdata": <base64>}``, what ``plotly.io.to_json`` writes), other numbers as JSON numbers and a
non-finite float as null. Traces are made with :func:`trace` (``trace("scatter", x=..., y=...)``)."""

from __future__ import annotations

import base64
import copy
import json
import math
from typing import Any

import numpy as np

__all__ = ["Figure", "to_json", "trace"]

#: numpy dtypes plotly.js reads as typed arrays, by their code in the JSON
_TYPED = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8", np.dtype(np.int32): "i4",
          np.dtype(np.int16): "i2", np.dtype(np.int8): "i1", np.dtype(np.uint8): "u1", np.dtype(np.uint16): "u2",
          np.dtype(np.uint32): "u4"}


def trace(kind: str, **props: Any) -> dict[str, Any]:
    """A trace of type ``kind`` (``scatter``, ``heatmap``, ``bar``) with the given properties (``None`` leaves a
    property unset, as in plotly.py). Named colour scales (``"Viridis"``) are plotly.js's own."""
    return {**{k: v for k, v in props.items() if v is not None}, "type": kind}


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v) if isinstance(v, dict) else v


class Figure:
    def __init__(self, data: dict[str, Any] | None = None, layout: dict[str, Any] | None = None) -> None:
        self.data: list[dict[str, Any]] = [data] if data is not None else []
        self.layout: dict[str, Any] = {}
        if layout:
            _merge(self.layout, {k: v for k, v in layout.items() if k != "template"})  # plotly.js has no template

    def add_trace(self, t: dict[str, Any]) -> None:
        self.data.append(t)

    def update_layout(self, **props: Any) -> None:
        _merge(self.layout, props)

    def add_vrect(self, *, x0: float, x1: float, fillcolor: str, opacity: float, line_width: float = 0,
                  layer: str = "above") -> None:
        self.layout.setdefault("shapes", []).append(
            {"type": "rect", "xref": "x", "yref": "y domain", "x0": x0, "x1": x1, "y0": 0, "y1": 1,
             "fillcolor": fillcolor, "opacity": opacity, "line": {"width": line_width}, "layer": layer})

    def add_hline(self, *, y: float, line: dict[str, Any]) -> None:
        self.layout.setdefault("shapes", []).append(
            {"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y, "line": line})

    def add_annotation(self, **props: Any) -> None:
        self.layout.setdefault("annotations", []).append(props)

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "layout": self.layout}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        code = _TYPED.get(obj.dtype)
        if code is None or obj.ndim > 2:
            return _plain(obj.tolist())
        if obj.ndim == 2:  # plotly.js reads a 2-D typed array with its shape (a heat map's z, customdata)
            return {"dtype": code, "bdata": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode(),
                    "shape": f"{obj.shape[0]}, {obj.shape[1]}"}
        return {"dtype": code, "bdata": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode()}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(fig: Figure) -> str:
    """The figure as JSON for plotly.js (see the module docstring)."""
    return json.dumps(_plain(fig.to_dict()), separators=(",", ":"))
