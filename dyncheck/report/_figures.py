"""Plotly figures for the report (plain dicts, :mod:`._plot`), as JSON strings safe to put inside a
``<script type="application/json">``.

Every name that comes from a user (parameter, module, metric, logged key) is HTML-escaped before it reaches
plotly, which renders trace names and labels as (a subset of) HTML. Arrays travel as float32 / int32 typed arrays
(base64), the compact form plotly.js reads natively.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._downsample import align, bucket_max, minmax
from ._plot import Figure, to_json, trace

SEVERITY_COLOURS = {"error": "#c62828", "warning": "#e08600", "info": "#1565c0"}
PHASE_COLOURS = {"rapid fitting": "#1e88e5", "refinement": "#43a047", "stabilisation": "#8e24aa",
                 "plateau": "#fb8c00", "instability": "#e53935", "recovery": "#00897b"}
LINE_BUCKETS = 1000  # a line keeps at most 2 x this many points
HEAT_BUCKETS = 400  # a heat map keeps at most this many columns
MAX_LINES = 12  # more series than this: a heat map instead of lines

_BASE_LAYOUT: dict[str, Any] = {
    "template": "none",
    "height": 300,
    "margin": {"l": 70, "r": 20, "t": 30, "b": 45},
    "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#263238"},
    "hovermode": "closest",
    "xaxis": {"title": {"text": "step"}, "gridcolor": "#eceff1", "zeroline": False},
    "yaxis": {"gridcolor": "#eceff1", "zeroline": False, "exponentformat": "e"},
    "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "font": {"size": 11}},
    "showlegend": True,
    # the toolbar shown on hover: no background, so it does not lay a grey strip over a heat map's top right
    "modebar": {"bgcolor": "rgba(0,0,0,0)", "color": "#90a4ae", "activecolor": "#263238"},
}


def esc(name: str) -> str:
    """A user-given name made inert for plotly's HTML-like text rendering."""
    return html.escape(str(name), quote=True)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _i(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.int32) if a.size == 0 or (a.min() > -2**31 and a.max() < 2**31) else a.astype(np.float64)


@dataclass
class Line:
    """One series to draw: name (escaped later), steps, values, and how."""

    name: str
    steps: np.ndarray
    values: np.ndarray
    colour: str | None = None
    dash: str | None = None
    width: float = 1.5
    opacity: float = 1.0
    show_nonfinite: bool = True


@dataclass
class Band:
    """A shaded stretch of steps, with an optional label at the top."""

    start: float
    end: float
    colour: str
    label: str = ""
    opacity: float = 0.12


@dataclass
class Chart:
    """A chart ready for the template: a DOM id, the figure JSON, and a caption."""

    id: str
    json: str
    caption: str = ""
    height: int = 300
    notes: list[str] = field(default_factory=list)


def _to_json(fig: Figure) -> str:
    text = to_json(fig)
    # inert inside <script>: no "</script>", no "<!--"; \u escapes are valid JSON inside strings (the only place
    # these characters can occur)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("/", "\\u002f"))


def positive_span(values: Sequence[np.ndarray]) -> bool:
    """Whether a log axis suits these values: all finite ones positive, spanning more than a factor of 20."""
    fin = np.concatenate([np.asarray(v, float)[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    return bool(fin.size and fin.min() > 0 and fin.max() / fin.min() > 20)


def _decades(values: Sequence[np.ndarray]) -> float:
    """How many decades the finite positive values span (0 for none)."""
    fin = np.concatenate([np.asarray(v, float).ravel() for v in values]) if values else np.zeros(0)
    fin = fin[np.isfinite(fin) & (fin > 0)]
    return float(np.log10(fin.max() / fin.min())) if fin.size else 0.0


def line_chart(cid: str, lines: Sequence[Line], *, y_title: str = "", log_y: bool | None = None,
               bands: Sequence[Band] = (), hlines: Sequence[tuple[float, str, str]] = (),
               marks: Sequence[tuple[float, float, str, str]] = (), height: int = 300, log_toggle: bool = False,
               caption: str = "", y_format: str = ".4g", y_range: tuple[float, float] | None = None) -> Chart:
    """Lines (min/max-downsampled), shaded bands, horizontal reference lines (value, label, colour) and marked
    points (step, value, label, colour)."""
    fig = Figure(layout=_BASE_LAYOUT)
    nonfinite: list[np.ndarray] = []
    for ln in lines:
        s, v = minmax(ln.steps, ln.values, LINE_BUCKETS)
        fig.add_trace(trace("scatter",
            x=_i(s), y=_f32(v), name=esc(ln.name), mode="lines",
            line={"width": ln.width, **({"color": ln.colour} if ln.colour else {}), **({"dash": ln.dash} if ln.dash
                                                                                        else {})},
            opacity=ln.opacity, hovertemplate="%{fullData.name}<br>step %{x}<br>%{y:" + y_format + "}<extra></extra>"))
        if ln.show_nonfinite:
            bad = np.asarray(ln.steps)[~np.isfinite(np.asarray(ln.values, float))]
            if bad.size:
                nonfinite.append(bad)
    if log_y is None:
        log_y = positive_span([ln.values for ln in lines])
    if y_range is None and not log_y:  # a constant series: show it at mid-height, not in a range padded around it
        fin = np.concatenate([np.asarray(ln.values, float) for ln in lines]) if lines else np.zeros(0)
        fin = fin[np.isfinite(fin)]
        if fin.size and fin.min() == fin.max() and fin.max() > 0:
            y_range = (0.0, 2.0 * float(fin.max()))
    if nonfinite:
        bad = np.unique(np.concatenate(nonfinite))
        fig.add_trace(trace("scatter",
            x=_i(bad[:2000]), y=np.ones(min(bad.size, 2000), np.float32), yaxis="y2", mode="markers",
            name=f"non-finite ({bad.size} steps)", marker={"symbol": "x", "color": "#b71c1c", "size": 7},
            hovertemplate="non-finite value<br>step %{x}<extra></extra>"))
        fig.update_layout(yaxis2={"overlaying": "y", "range": [0, 1.05], "visible": False, "fixedrange": True})
    for b in bands:
        fig.add_vrect(x0=b.start, x1=b.end, fillcolor=b.colour, opacity=b.opacity, line_width=0, layer="below")
        if b.label:
            fig.add_annotation(x=(b.start + b.end) / 2, y=1.0, yref="paper", yanchor="top", text=esc(b.label),
                               showarrow=False, font={"size": 10, "color": b.colour})
    for value, label, colour in hlines:
        fig.add_hline(y=value, line={"color": colour, "dash": "dash", "width": 1.5})
        fig.add_annotation(x=1, xref="paper", xanchor="right", y=np.log10(value) if log_y and value > 0 else value,
                           yanchor="bottom", text=esc(label), showarrow=False, font={"size": 10, "color": colour})
    for step, value, label, colour in marks:
        if np.isfinite(value):
            fig.add_trace(trace("scatter", x=[int(step)], y=[float(value)], mode="markers", name=esc(label),
                                     marker={"color": colour, "size": 10, "symbol": "circle-open",
                                             "line": {"width": 2.5}},
                                     hovertemplate="%{fullData.name}<br>step %{x}<br>%{y:.4g}<extra></extra>"))
    # a log axis over several decades: a label per decade only (plotly's 2 and 5 between them crowd together)
    decade_ticks = {"dtick": 1} if _decades([ln.values for ln in lines]) >= 1.3 else {}
    fig.update_layout(height=height, yaxis={"type": "log" if log_y else "linear", "title": {"text": esc(y_title)},
                                            **(decade_ticks if log_y else {}),
                                            **({"range": list(y_range)} if y_range else {})})
    if log_toggle:
        # the buttons sit at the top left, above the legend, clear of plotly's toolbar at the top right
        fig.update_layout(margin={**_BASE_LAYOUT["margin"], "t": 58}, updatemenus=[{
            "type": "buttons", "direction": "left", "x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom",
            "showactive": True, "active": 1 if log_y else 0, "pad": {"l": 0, "b": 26},
            "buttons": [{"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear",
                                                                           "yaxis.dtick": None}]},
                        {"label": "log", "method": "relayout",
                         "args": [{"yaxis.type": "log", "yaxis.dtick": decade_ticks.get("dtick")}]}]}])
    return Chart(cid, _to_json(fig), caption, height)


def heatmap_chart(cid: str, series: Sequence[tuple[str, np.ndarray, np.ndarray]], *, what: str, log: bool,
                  caption: str = "", zmin: float | None = None, zmax: float | None = None,
                  colourscale: str = "Viridis") -> Chart:
    """Rows x steps: one row per series (layer), columns merged to at most ``HEAT_BUCKETS`` by their maximum."""
    names = [n for n, _, _ in series]
    grid, m = align([(s, v) for _, s, v in series])
    first, last, z = bucket_max(grid, m, HEAT_BUCKETS)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
        value = "10<sup>%{z:.2f}</sup>"
    else:
        value = "%{z:.3g}"
    height = int(min(1000, max(260, 70 + 14 * len(names))))
    step_text = "steps %{x}" if np.array_equal(first, last) else "steps from %{x}"
    fig = Figure(trace("heatmap",
        x=_i(first), y=[esc(n) for n in names], z=_f32(z), colorscale=colourscale, zmin=zmin, zmax=zmax,
        colorbar={"title": {"text": ("log<sub>10</sub> " if log else "") + esc(what), "side": "right"},
                  "thickness": 12},
        hovertemplate="%{y}<br>" + step_text + "<br>" + esc(what) + " " + value + "<extra></extra>",
        hoverongaps=False), layout=_BASE_LAYOUT)
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 45}, showlegend=False,
                      yaxis={"automargin": True, "autorange": "reversed", "tickfont": {"size": 10},
                             "gridcolor": "rgba(0,0,0,0)"})
    note = (f"{len(names)} series; each cell is the largest value over its steps" if grid.size > HEAT_BUCKETS
            else f"{len(names)} series")
    return Chart(cid, _to_json(fig), caption + (" " if caption else "") + f"({note}.)", height)


def per_layer_chart(cid: str, series: Sequence[tuple[str, np.ndarray, np.ndarray]], *, what: str, log: bool,
                    caption: str = "", zmin: float | None = None, zmax: float | None = None,
                    strip: str = "") -> Chart:
    """A line per series for a few series, a heat map for many; ``strip`` is a prefix left out of the names."""
    series = [(n[len(strip):] if strip and n.startswith(strip) else n, s, v) for n, s, v in series]
    if len(series) > MAX_LINES:
        return heatmap_chart(cid, series, what=what, log=log, caption=caption, zmin=zmin, zmax=zmax)
    lines = [Line(n, s, v, width=1.2, show_nonfinite=False) for n, s, v in series]
    y_range = (zmin - 0.02 * (zmax - zmin), zmax + 0.02 * (zmax - zmin)) if zmin is not None and zmax is not None \
        else None
    return line_chart(cid, lines, y_title=what, log_y=log and positive_span([v for _, _, v in series]),
                      caption=caption, y_format=".3g", y_range=y_range)
