"""dyncheck.report._plot: figures as plain dicts give plotly.js what plotly.graph_objects would give it."""

from __future__ import annotations

import base64
import json

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from dyncheck.report._plot import Figure, to_json, trace


def _decoded(obj):
    """Typed arrays as lists, the layout's template (plotly.py's expansion of "none") left out."""
    if isinstance(obj, dict):
        if "bdata" in obj:
            a = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]).newbyteorder("<"))
            if "shape" in obj:
                a = a.reshape([int(n) for n in obj["shape"].split(",")])
            return [[None if v != v else v for v in row] for row in a.tolist()] if a.ndim == 2 else \
                [None if v != v else v for v in a.tolist()]
        return {k: _decoded(v) for k, v in obj.items() if k != "template"}
    if isinstance(obj, list):
        return [_decoded(v) for v in obj]
    return obj


def test_the_same_figure_as_plotly_graph_objects():
    layout = {"template": "none", "height": 300, "margin": {"l": 70, "r": 20, "t": 30, "b": 45},
              "yaxis": {"gridcolor": "#eceff1"}}
    x = np.arange(5, dtype=np.int32)
    y = np.array([1.0, np.nan, 3.0, 4.0, 5.0], dtype=np.float32)
    z = np.arange(6, dtype=np.float32).reshape(2, 3)

    def build(fig_cls, scatter, heatmap, bar):
        fig = fig_cls(layout=layout)
        fig.add_trace(scatter(x=x, y=y, name="a &lt;b&gt;", mode="lines", line={"width": 1.5}, opacity=0.5))
        fig.add_trace(heatmap(x=x[:3], y=["r0", "r1"], z=z, zmin=None, colorbar={"thickness": 12}))
        fig.add_trace(bar(x=["PC1", "PC2"], y=np.array([60.0, 30.0], np.float32)))
        fig.add_trace(scatter(x=[1], y=[2.5], customdata=np.ones((1, 2), np.float32), mode="markers"))
        fig.add_vrect(x0=1, x1=2, fillcolor="#fb8c00", opacity=0.12, line_width=0, layer="below")
        fig.add_hline(y=0.5, line={"color": "#000", "dash": "dash", "width": 1.5})
        fig.add_annotation(x=1.5, y=1.0, yref="paper", text="plateau", showarrow=False)
        fig.update_layout(height=400, yaxis={"type": "log", "title": {"text": "loss"}},
                          margin={"t": 58}, yaxis2={"overlaying": "y", "visible": False})
        return fig

    ours = build(Figure, lambda **k: trace("scatter", **k), lambda **k: trace("heatmap", **k),
                 lambda **k: trace("bar", **k))
    theirs = build(lambda layout: go.Figure(layout=layout), go.Scatter, go.Heatmap, go.Bar)
    got = _decoded(json.loads(to_json(ours)))
    want = _decoded(json.loads(pio.to_json(theirs, validate=False, engine="json")))
    assert got == want
    assert got["layout"]["margin"] == {"l": 70, "r": 20, "t": 58, "b": 45}  # nested dicts merge
    assert got["layout"]["yaxis"] == {"gridcolor": "#eceff1", "type": "log", "title": {"text": "loss"}}


def test_non_finite_numbers_are_null_and_other_arrays_are_lists():
    fig = Figure(layout={"height": 10})
    fig.add_trace(trace("scatter", x=[float("nan"), 1.0], y=np.array([1, 2], dtype=np.int64), text=None))
    fig.update_layout(yaxis={"range": [np.float64(0.0), float("inf")]})
    data = json.loads(to_json(fig))
    assert data["data"][0] == {"x": [None, 1.0], "y": [1, 2], "type": "scatter"}  # int64: no typed array
    assert data["layout"]["yaxis"]["range"] == [0.0, None]
