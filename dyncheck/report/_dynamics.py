"""The report's training-dynamics sections: how far the empirical NTK moved (lazy vs rich training) and the PCA of
the weight trajectory (seed 004's "exploration then convergence"), each saying why when it was not measured."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..measure.trajectory import pca, read_sketch
from ._figures import _BASE_LAYOUT, Chart, Line, _to_json, line_chart
from ._plot import Figure, trace

__all__ = ["LAZY_BELOW", "RICH_ABOVE", "dynamics_sections", "ntk_verdict"]

#: kernel distance from initialisation at the end of the run below which the run is called lazy, above which rich
#: (rules of thumb: a wide net at a small learning rate stays below 0.01, a small feature-learning net goes past
#: 0.2 -- tests/test_ntk.py; Fort et al. 2020 see 0.3-0.8 for ResNets in the first epochs)
LAZY_BELOW = 0.05
RICH_ABOVE = 0.2
#: points of the PCA path drawn at most (evenly thinned beyond)
MAX_PATH_POINTS = 2000
#: explained-variance bars shown
BARS = 10


def _section(id_: str, title: str, intro: str):
    from ._render import Section

    return Section(id_, title, intro)


def _error(meta: dict[str, Any], measurement: str) -> str | None:
    for e in meta.get("measurement_errors") or []:
        if isinstance(e, dict) and e.get("measurement") == measurement:
            return f"{e.get('error')}: {e.get('message')}"
    return None


def ntk_verdict(distance: float) -> str:
    """``"lazy"``, ``"rich"`` or ``"in between"`` for a final kernel distance from initialisation."""
    if distance < LAZY_BELOW:
        return "lazy"
    if distance > RICH_ABOVE:
        return "rich"
    return "in between"


def _ntk_section(src: Any, meta: dict[str, Any]):
    sec = _section("ntk", "Neural tangent kernel", (
        "The empirical neural tangent kernel K = J J<sup>T</sup> on a fixed probe set (the Jacobian J of one scalar "
        "output per example with respect to all trainable weights) says which examples the network treats as "
        "similar. Its <b>distance from initialisation</b> 1 − ⟨K<sub>0</sub>, K<sub>t</sub>⟩ / (‖K<sub>0</sub>‖ "
        "‖K<sub>t</sub>‖) (Fort et al. 2020) separates two regimes: <b>lazy</b> training (very wide networks, small "
        "learning rates) keeps the kernel of initialisation -- the network acts as a fixed kernel machine -- while "
        "<b>rich</b> training moves it: the network learns features, usually most while the loss falls fast. Both "
        "can be healthy; a rich run that also generalises is what feature learning looks like. The <b>velocity</b> "
        "is the distance between consecutive measurements."))
    if "ntk/distance" not in src.names:
        err = _error(meta, "ntk")
        off = meta.get("ntk", {}).get("off") if isinstance(meta.get("ntk"), dict) else None
        if off:
            sec.notes.append(f"The NTK was not measured: {off}.")
        elif err:
            sec.notes.append(f"The NTK was not measured: the measurement failed and was turned off ({err}).")
        else:
            sec.notes.append("The NTK was not measured: ntk_budget=0 or ntk_every_n_steps=0, no probe batch (manual "
                             "optimization without sharpness_loss_fn, or a plain loop without probe_batch), "
                             "sharded parameters, or an imported log.")
        return sec
    s, d = src.get("ntk/distance")
    info = meta.get("ntk") if isinstance(meta.get("ntk"), dict) else {}
    ok = np.isfinite(d)
    if ok.sum() < 2:
        sec.notes.append("Only the reference kernel was measured (the run was too short or too slow per step for "
                         "the NTK's time budget, ntk_budget): no distance to show.")
        return sec
    lines = [Line("distance from initialisation", s, d, colour="#6a1b9a", width=2)]
    if "ntk/velocity" in src.names:
        vs, vv = src.get("ntk/velocity")
        lines.append(Line("velocity (between measurements)", vs, vv, colour="#ef6c00", dash="dot", width=1.5))
    sec.charts.append(line_chart("chart-ntk", lines, y_title="kernel distance", log_y=False, height=280,
                                 caption=f"{int(ok.sum())} kernels"
                                         + (f" of {info['examples']} probe examples" if info.get("examples") else "")
                                         + f"; output: {info.get('output', 'sum of the outputs per example')}."))
    last = float(d[ok][-1])
    peak = float(np.nanmax(d))
    verdict = ntk_verdict(last)
    where = ""
    if "ntk/velocity" in src.names:
        vs, vv = src.get("ntk/velocity")
        fin = np.isfinite(vv)
        if fin.sum() >= 2:
            steps_all = np.asarray(s)
            i = int(np.nanargmax(np.where(fin, vv, -np.inf)))
            prev = steps_all[steps_all < vs[i]]
            start = int(prev[-1]) if prev.size else int(vs[i])
            where = f" It moved fastest between steps {start} and {int(vs[i])}{_phase_of(src, start, int(vs[i]))}."
    text = {"lazy": f"This run is lazy: the kernel barely moved (distance {last:.3g} at step {int(s[ok][-1])}, "
                    f"at most {peak:.3g}). The network trained close to its linearisation around the initial "
                    "weights, like a kernel machine with the initial NTK.",
            "rich": f"This run is rich: the kernel moved a lot (distance {last:.3g} at step {int(s[ok][-1])}). "
                    "The network changed its internal representation -- feature learning.",
            "in between": f"The kernel moved moderately (distance {last:.3g} at step {int(s[ok][-1])}): between "
                          f"lazy (below {LAZY_BELOW}) and rich (above {RICH_ABOVE})."}[verdict]
    loss = _loss_at(src, np.asarray([s[ok][0], s[ok][-1]]))
    if verdict != "rich" and loss is not None and loss[0] > 0 and loss[1] > loss[0] / 2:
        text += (f" But the training loss fell only from {loss[0]:.3g} to {loss[1]:.3g} over these steps: a kernel "
                 "that stayed put may only mean that training has not got far.")
    sec.notes.append(text + where)
    if "ntk/top_eig_share" in src.names:
        ts, tv = src.get("ntk/top_eig_share")
        fin = np.isfinite(tv)
        if fin.sum() >= 2:
            a, b = tv[fin][0], tv[fin][-1]
            how = " (the kernel concentrated on its top direction)" if b > a + 0.05 else \
                " (the kernel spread over more directions)" if b < a - 0.05 else ""
            sec.notes.append(f"The top eigenvalue's share of the kernel's trace went from {a:.2f} to {b:.2f}{how}.")
    return sec


def _phase_of(src: Any, first: int, last: int) -> str:
    """" (during rapid fitting)" when most of the steps first..last lie in one phase of the training loss."""
    if "loss/train" not in src.names:
        return ""
    from ..phases import detect_phases

    s, v = src.get("loss/train")
    best, overlap = None, 0
    for p in detect_phases(s, v):
        o = min(p.end, last) - max(p.start, first)
        if o > overlap:
            best, overlap = p, o
    if best is None or overlap < 0.5 * max(last - first, 1):
        return ""
    return f" (during {best.name}, steps {best.start}-{best.end})"


def _loss_at(src: Any, steps: np.ndarray) -> np.ndarray | None:
    if "loss/train" not in src.names:
        return None
    ls, lv = src.get("loss/train")
    fin = np.isfinite(lv)
    if fin.sum() < 1:
        return None
    return np.interp(steps, ls[fin], lv[fin])


def _path_chart(steps: np.ndarray, path: np.ndarray, loss: np.ndarray | None) -> Chart:
    """The path in PC1-PC2 (an SVG scatter, drawn without WebGL: the report works in any browser, offline), the
    markers coloured by the training loss; the hover shows the step and PC3."""
    if len(steps) > MAX_PATH_POINTS:
        keep = np.unique(np.linspace(0, len(steps) - 1, MAX_PATH_POINTS).round().astype(int))
        steps, path = steps[keep], path[keep]
        loss = loss[keep] if loss is not None else None
    colour: dict[str, Any] = {"color": "#1e88e5"}
    if loss is not None:
        positive = bool(np.all(loss > 0))
        c = np.log10(loss) if positive else loss
        colour = {"color": c.astype(np.float32), "colorscale": "Viridis", "showscale": True,
                  "colorbar": {"title": {"text": "log<sub>10</sub> loss" if positive else "loss"}, "thickness": 12}}
    y = path[:, 1] if path.shape[1] > 1 else np.zeros(len(path))
    third = path[:, 2] if path.shape[1] > 2 else np.zeros(len(path))
    custom = np.stack([steps.astype(np.float64), third], axis=1).astype(np.float32)
    fig = Figure(layout=_BASE_LAYOUT)
    fig.add_trace(trace("scatter", x=path[:, 0].astype(np.float32), y=y.astype(np.float32), mode="lines+markers",
                             customdata=custom, name="path",
                             hovertemplate="step %{customdata[0]:.0f}<br>PC1 %{x:.3g}, PC2 %{y:.3g}, "
                                           "PC3 %{customdata[1]:.3g}<extra></extra>",
                             marker={"size": 6, **colour}, line={"width": 1, "color": "#b0bec5"}))
    fig.add_trace(trace("scatter", x=[float(path[0, 0])], y=[float(y[0])], mode="markers+text", text=["start"],
                             textposition="top center", name="start", hoverinfo="skip",
                             marker={"size": 11, "symbol": "circle-open", "color": "#263238", "line": {"width": 2}}))
    fig.update_layout(height=400, showlegend=False, xaxis={"title": {"text": "PC1"}, "zeroline": False},
                      yaxis={"title": {"text": "PC2"}, "scaleanchor": "x", "scaleratio": 1})
    return Chart("chart-traj-path", _to_json(fig), "The weight trajectory in its first two principal components "
                 "(same scale on both axes), coloured by the training loss; hover for the step and the third "
                 "component.", 400)


def _bars_chart(ratios: np.ndarray) -> Chart:
    r = ratios[:BARS]
    fig = Figure(layout=_BASE_LAYOUT)
    labels = [f"PC{i + 1}" for i in range(len(r))]
    fig.add_trace(trace("bar", x=labels, y=(100 * r).astype(np.float32), name="component", marker={"color": "#1e88e5"},
                         hovertemplate="%{x}: %{y:.1f}%<extra></extra>"))
    fig.add_trace(trace("scatter", x=labels, y=(100 * np.cumsum(r)).astype(np.float32), name="cumulative",
                             mode="lines+markers", line={"color": "#263238", "width": 1.5},
                             hovertemplate="PC1-%{x}: %{y:.1f}%<extra></extra>"))
    fig.update_layout(height=260, yaxis={"title": {"text": "explained variance (%)"}, "range": [0, 102]},
                      xaxis={"title": {"text": ""}})
    return Chart("chart-traj-variance", _to_json(fig), "Share of the trajectory's variance in each component.", 260)


def _trajectory_section(src: Any, meta: dict[str, Any]):
    sec = _section("trajectory", "Weight trajectory", (
        "The path of the weights projected on the directions they moved most in (PCA over time of a fixed sketch "
        "of the weight vector). Healthy training often shows <b>exploration then convergence</b>: a long arc "
        "while the loss falls fast, then small steps around the end point. Caution: a random walk's PCA also puts "
        "most of its variance in the first components and draws smooth curves (Antognini &amp; Sohl-Dickstein "
        "2018), so a curved path is no evidence of structure by itself; the explained variance says how much of "
        "the motion the picture shows."))
    names = [n for n in src.names if n.startswith("traj/c") and n[6:].isdigit()]
    if not names:
        err = _error(meta, "trajectory")
        sec.notes.append(f"The weight sketch was not recorded: {err}." if err else
                         "The weight sketch was not recorded (trajectory_every_n_steps=0, sharded parameters, or "
                         "an imported log).")
        return sec
    run = getattr(src, "_src", None)  # the open run: all coordinates in one query
    steps, mat = read_sketch(run if hasattr(run, "series_matching") else {n: src.get(n) for n in names})
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        sec.notes.append(f"{int((~finite).sum())} sketch(es) with non-finite weights are left out of the PCA.")
        steps, mat = steps[finite], mat[finite]
    if len(steps) < 3:
        sec.notes.append(f"Only {len(steps)} sketch(es) of the weights were recorded: a path needs at least 3.")
        return sec
    res = pca(mat, k=3)
    if not np.isfinite(res.ratios).all() or res.ratios.sum() == 0:
        sec.notes.append("The weights did not move (or went non-finite): no trajectory to show.")
        return sec
    sec.charts.append(_path_chart(steps, res.path, _loss_at(src, steps)))
    sec.charts.append(_bars_chart(res.ratios))
    info = meta.get("trajectory") if isinstance(meta.get("trajectory"), dict) else {}
    two, three = 100 * res.ratios[:2].sum(), 100 * res.ratios[:3].sum()
    sec.notes.append(f"The first two components hold {two:.0f}% of the motion, the first three {three:.0f}% "
                     f"({len(steps)} sketches of {mat.shape[1]} of the {info.get('of_parameters', '?')} weights, "
                     f"every {info.get('every_n_steps', '?')} steps).")
    return sec


def dynamics_sections(src: Any, meta: dict[str, Any]) -> list[Any]:
    """The NTK and trajectory sections of a run's report; a section that cannot be drawn says why (a report is
    never lost to one of them)."""
    out = []
    for make, sid, title in ((_ntk_section, "ntk", "Neural tangent kernel"),
                             (_trajectory_section, "trajectory", "Weight trajectory")):
        try:
            out.append(make(src, meta))
        except Exception as exc:  # damaged or unexpected data: the rest of the report still comes
            sec = _section(sid, title, "")
            sec.notes.append(f"This section could not be drawn ({type(exc).__name__}: {exc}).")
            out.append(sec)
    return out
