"""Run + findings -> the report's context -> one HTML file (jinja2, autoescaped)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import jinja2
import numpy as np

from ..checks.engine import SeriesSource, _run_span, _warm_start, is_whole_run
from ..phases import detect_phases
from ._figures import (PHASE_COLOURS, SEVERITY_COLOURS, Band, Chart, Line, line_chart, per_layer_chart,
                       positive_span)

MAX_BANDS = 40  # flagged stretches drawn per finding; more are merged
MAX_FINDING_CHARTS = 30  # findings beyond this are listed without a chart
MAX_MEASUREMENT_ERRORS = 20  # measurements turned off, listed one by one up to this many


@dataclass
class Section:
    id: str
    title: str
    intro: str
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Series(SeriesSource):
    """The engine's cached reader of a run's series, with per-layer series in model order and the run's span."""

    def __init__(self, run: Any, meta: dict[str, Any]) -> None:
        super().__init__(run)
        model = meta.get("model") or {}
        # per-layer series in model order (named_parameters / named_modules), not alphabetical (net.10 < net.2)
        self._rank = {str(p.get("name")): i for i, p in enumerate(model.get("parameters") or [])}
        for i, m in enumerate(model.get("modules") or []):
            self._rank.setdefault(str(m.get("name")), len(self._rank) + i)
        #: module name -> class name, where the run's meta lists them
        self.module_types = {str(m.get("name")): str(m.get("type")) for m in model.get("modules") or []
                             if isinstance(m, dict)}
        self.span = _run_span(self)
        acts = meta.get("activations")
        #: the run's meta ``activations`` (what was selected, what never ran, unmatched patterns)
        self.activations: dict[str, Any] = acts if isinstance(acts, dict) else {}

    def matching(self, pattern: str) -> list[str]:
        return self.match([pattern])

    def triples(self, pattern: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
        prefix = pattern.rstrip("*")
        names = sorted(self.matching(pattern), key=lambda n: (self._rank.get(n[len(prefix):], len(self._rank)),
                                                           _natural(n)))
        return [(n, *self.get(n)) for n in names]

    def last_step(self) -> int | None:
        return self.span[1] if self.names else None


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# -- sections -------------------------------------------------------------------------------------------------
def _loss_section(src: _Series, skipped: dict[str, str]) -> tuple[Section, list[Any]]:
    sec = Section("loss", "Loss", "Training loss at every step and validation loss at every validation. The shaded "
                  "stretches are the phases of training, detected from the shape of the curve: <b>rapid fitting</b> "
                  "(the loss falls fast), <b>refinement</b> (it still falls, slowly), <b>stabilisation</b> (flat near "
                  "its best), <b>plateau</b> (flat far above it), <b>instability</b> (it rises) and <b>recovery</b> "
                  "(it falls back after rising).")
    phases: list[Any] = []
    lines = []
    if "loss/train" in src.names:
        s, v = src.get("loss/train")
        phases = detect_phases(s, v)
        lines.append(Line("train", s, v, colour="#1e88e5", width=1.2))
    if "loss/val" in src.names:
        s, v = src.get("loss/val")
        lines.append(Line("validation", s, v, colour="#e53935", width=2.2))
    if not lines:
        sec.notes.append("No loss was recorded: training_step returned no loss and no train_loss_key was given.")
        return sec, phases
    bands = [Band(p.start, p.end, PHASE_COLOURS[p.name], p.name, opacity=0.10) for p in phases]
    sec.charts.append(line_chart("chart-loss", lines, y_title="loss", bands=bands, log_toggle=True, height=340))
    if "loss/val" not in src.names:
        sec.notes.append(skipped.get("train-val-divergence") or "No validation loss was logged.")
    return sec, phases


def _lr_section(src: _Series) -> Section:
    sec = Section("lr", "Learning rate", "The learning rate each parameter group actually used, step by step: "
                  "the strongest control on the dynamics. Warm-up, decays and restarts show here.")
    lrs = src.triples("lr/*")
    if lrs:
        sec.charts.append(per_layer_chart("chart-lr", lrs, what="learning rate", log=True, strip="lr/"))
    else:
        sec.notes.append("No learning rate was recorded (the run has no optimizer the monitor could see).")
    return sec


def _grad_section(src: _Series) -> Section:
    sec = Section("gradients", "Gradient norms", "The global gradient norm at every step, and each parameter's "
                  "gradient norm every N steps. Healthy: level or slowly falling, layers within an order of magnitude "
                  "or two of each other. Growth by orders of magnitude means exploding gradients; some layers far "
                  "below the others means vanishing gradients.")
    if "grad_norm/total" in src.names:
        s, v = src.get("grad_norm/total")
        sec.charts.append(line_chart("chart-grad-total", [Line("global gradient norm", s, v, colour="#5e35b1")],
                                     y_title="L2 norm", log_toggle=True, height=260))
    layers = [t for t in src.triples("grad_norm/*") if t[0] != "grad_norm/total"]
    if layers:
        sec.charts.append(per_layer_chart("chart-grad-layers", layers, what="gradient norm", log=True,
                                          strip="grad_norm/", caption="Per parameter."))
    elif "grad_norm/total" in src.names:
        sec.notes.append("Per-parameter gradient norms were not recorded (is the run shorter than every_n_steps?).")
    if not sec.charts:
        sec.notes.append("No gradient norms were recorded.")
    return sec


def _update_section(src: _Series) -> Section:
    sec = Section("updates", "Update-to-weight ratios", "How much each step changes each parameter, relative to its "
                  "size (‖Δw‖ / ‖w‖). Around 1e-3 is typical; near 1e-1 the optimizer rewrites the weights every "
                  "step; below 1e-5 the layer has effectively stopped learning.")
    ratios = src.triples("update_ratio/*")
    if ratios:
        sec.charts.append(per_layer_chart("chart-update", ratios, what="update ratio", log=True,
                                          strip="update_ratio/"))
    else:
        sec.notes.append("Update ratios were not recorded (is the run shorter than every_n_steps?).")
    return sec


#: module classes whose outputs are exactly 0 over a whole range of inputs: "dead" is meaningful for them
ZERO_FLOORED = frozenset({"ReLU", "ReLU6", "Threshold", "Hardswish", "Hardsigmoid", "Hardshrink", "Softshrink"})


def _zero_floored(series: list, types: dict[str, str]) -> tuple[list, int]:
    """The dead-share series worth a heat map: of ReLU-like modules (by class, from the run's meta), and of any
    module that ever had a dead unit; all of them when the meta lists no module classes. Also how many were left
    out."""
    if not types:
        return series, 0
    kept = [t for t in series if types.get(t[0][len("act/dead/"):]) in ZERO_FLOORED
            or bool(np.nanmax(np.asarray(t[2], float), initial=0.0) > 0)]
    return (kept or series), (len(series) - len(kept) if kept else 0)


def _act_section(src: _Series, skipped: dict[str, str]) -> Section:
    sec = Section("activations", "Activations", "The share of each module's units that output zero for every "
                  "sample of a batch (<b>dead</b>: ReLU-like units that no longer pass gradient), and the share "
                  "stuck near the flat ends of sigmoid/tanh (<b>saturated</b>).")
    dead = src.triples("act/dead/*")
    sat = src.triples("act/saturated/*")
    dead, left_out = _zero_floored(dead, src.module_types)
    if dead:
        caption = "Dead units." + (f" {left_out} modules whose outputs are not ReLU-like and never had a dead unit "
                                   f"(convolutions, normalisation, linear layers) are left out." if left_out else "")
        sec.charts.append(per_layer_chart("chart-dead", dead, what="dead share", log=False, zmin=0.0, zmax=1.0,
                                          strip="act/dead/", caption=caption))
    if sat:
        sec.charts.append(per_layer_chart("chart-saturated", sat, what="saturated share", log=False, zmin=0.0,
                                          zmax=1.0, strip="act/saturated/", caption="Saturated units."))
    elif dead:
        sec.notes.append(skipped.get("saturated-activations") or "No sigmoid/tanh-like modules: saturation applies "
                         "to those only.")
    if not dead and not sat:
        sec.notes.append("Activation statistics were not recorded (activations_every_n_steps=0, or no module "
                         "matched).")
    sec.notes.extend(_act_gaps(src.activations))
    return sec


def _act_gaps(acts: dict[str, Any]) -> list[str]:
    """Notes on what the activation statistics miss (meta ``activations``): modules that never ran, patterns that
    matched nothing, measuring steps that recorded nothing."""
    notes = []

    def listed(items: Sequence[Any], n: int = 12) -> str:
        items = [str(i) for i in items]
        return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")

    never, unmatched = acts.get("never_ran") or [], acts.get("unmatched_patterns") or []
    empty = acts.get("steps_without_statistics") or []
    if unmatched:
        notes.append(f"activation_modules patterns that match no module worth measuring: {listed(unmatched)}.")
    if never:
        notes.append(f"{len(never)} selected modules never ran on a measuring step and have no statistics: "
                     f"{listed(never)}.")
    if empty:
        count = acts.get("n_steps_without_statistics") or len(empty)
        notes.append(f"{count} of {acts.get('measured_steps', '?')} measuring steps recorded no activation "
                     f"statistic (steps {listed(empty, 6)}).")
    if notes and acts.get("note"):
        notes.append(f"Why: {acts['note']}.")
    return notes


def _sharpness_section(src: _Series, skipped: dict[str, str]) -> Section:
    sec = Section("sharpness", "Sharpness", "The largest eigenvalue of the Hessian of the training loss (Lanczos on "
                  "Hessian-vector products, on a fixed batch). Gradient descent is only stable while it stays below "
                  "the threshold 2/lr (with momentum β: (2 + 2β)/lr). Sharpness that climbs to the threshold and "
                  "hovers there is the <b>edge of stability</b>: the loss keeps falling, but non-monotonically.")
    if "sharpness/top_eig" not in src.names:
        sec.notes.append(skipped.get("edge-of-stability") or "Sharpness was not measured in this run.")
        return sec
    s, v = src.get("sharpness/top_eig")
    lines = [Line("top Hessian eigenvalue", s, v, colour="#00897b", width=2)]
    if "sharpness/threshold" in src.names:
        ts, tv = src.get("sharpness/threshold")
        lines.append(Line("stability threshold", ts, tv, colour="#c62828", dash="dash", width=1.5))
    else:
        sec.notes.append("No stability threshold: it is defined for SGD and momentum, not for adaptive optimizers "
                         "such as Adam.")
    sec.charts.append(line_chart("chart-sharpness", lines, y_title="eigenvalue", height=280))
    return sec


def _g3(x: float) -> str:
    return f"{x:.3g}"


def _noise_section(src: _Series, skipped: dict[str, str], meta: dict[str, Any]) -> Section:
    """The gradient noise scale beside the batch size, and in a sentence what this run shows."""
    sec = Section("noise", "Gradient noise scale", "B<sub>simple</sub> = tr(Σ)/|G|², the gradient noise scale of "
                  "McCandlish et al. (2018): the batch size at which a step's gradient noise and its signal are about "
                  "equal. Healthy training <b>finds its noise scale</b>: B<sub>simple</sub> grows as the loss falls "
                  "(the gradient shrinks faster than its noise), so a batch that is near it early ends up below it. "
                  "A batch far below B<sub>simple</sub> is noise-dominated (a larger batch would need fewer steps); "
                  "far above it, extra examples per step buy little. Estimated from squared gradient norms at two "
                  "batch sizes, numerator and denominator smoothed separately.")
    if "noise/b_simple" not in src.names:
        why = (meta.get("noise_sources_skipped") or {}).get("all") if isinstance(meta.get("noise_sources_skipped"),
                                                                                dict) else None
        sec.notes.append(f"The gradient noise scale was not measured: {why}." if why else
                         skipped.get("noise-dominated") or "The gradient noise scale was not measured in this run.")
        return sec
    s, v = src.get("noise/b_simple")
    lines = [Line("noise scale B_simple", s, v, colour="#6a1b9a", width=2)]
    size = src.get("batch/size") if "batch/size" in src.names else None
    if size is not None:
        lines.append(Line("batch size", size[0], size[1], colour="#455a64", dash="dash", width=1.5))
    sec.charts.append(line_chart("chart-noise", lines, y_title="examples", log_y=True, height=280))
    fin = np.isfinite(v) & (v > 0)
    if fin.sum() >= 2:
        s, v = s[fin], v[fin]
        k = max(1, len(v) // 3)
        early, late = float(np.median(v[:k])), float(np.median(v[-k:]))
        text = (f"B_simple went from about {_g3(early)} (first third of its {len(v)} measurements, up to step "
                f"{int(s[k - 1])}) to about {_g3(late)} (last third, from step {int(s[-k])}): ")
        text += "it grew, as the noise scale does while the loss falls." if late > 1.5 * early else \
            "it fell." if late < early / 1.5 else "it stayed at about the same level."
        if size is not None and len(size[1]):
            b = float(size[1][-1])
            text += (f" The batch size is {_g3(b)}, {_g3(b / late)}x the noise scale at the end"
                     + (" (noise-dominated)." if b < 0.1 * late else " (large-batch: beyond the noise scale, extra "
                        "examples per step help little)." if b > 10 * late else "."))
        sec.notes.append(text)
    src_used = meta.get("noise_source")
    if src_used:
        how = {"probe": "a probe splitting the step's batch into micro-batches",
               "accumulation": "the gradient-accumulation micro-batches"}.get(src_used, src_used)
        sec.notes.append(f"Measured from {how}.")
    return sec


# -- findings -------------------------------------------------------------------------------------------------
def _bands(spans: Sequence[tuple[int, int]], colour: str, spacing: float,
           limits: tuple[float, float] | None = None) -> list[Band]:
    """Shaded stretches: each span widened by half the series' spacing (so a one-point span shows), kept within
    ``limits`` (the steps the chart shows: a span at the first probe must not stretch the axis below step 0)."""
    spans = list(spans)
    if len(spans) > MAX_BANDS:  # merge neighbours until few enough remain
        size = math.ceil(len(spans) / MAX_BANDS)
        spans = [(spans[i][0], spans[min(i + size, len(spans)) - 1][1]) for i in range(0, len(spans), size)]
    half = spacing / 2
    lo, hi = limits if limits is not None else (-math.inf, math.inf)
    return [Band(max(a - half, lo), min(b + half, hi), colour, opacity=0.22) for a, b in spans]


def _step_limits(lines: Sequence[Line]) -> tuple[float, float] | None:
    """The first and last step any of ``lines`` holds (None for no points)."""
    firsts = [float(np.min(ln.steps)) for ln in lines if np.size(ln.steps)]
    lasts = [float(np.max(ln.steps)) for ln in lines if np.size(ln.steps)]
    return (min(firsts), max(lasts)) if firsts else None


def _steps_text(first: int, last: int) -> str:
    return f"step {first}" if first == last else f"steps {first}–{last}"


def _group_findings(diagnoses: Sequence[Any], checks: dict[str, Any], src: _Series) -> list[dict[str, Any]]:
    """One entry per diagnosis (root cause first), with the evidence chart of its primary finding, the list of
    all its findings (a NaN can give one finding per parameter) and the findings it explains."""
    groups = []
    for i, d in enumerate(diagnoses):
        cid, fs = d.check, list(d.findings)
        check = checks.get(cid)
        f = fs[0]
        chart = _evidence(i, f, check, src) if i < MAX_FINDING_CHARTS else None
        groups.append({"check": cid, "severity": d.severity, "first": f, "findings": fs, "chart": chart,
                       "anchor": f"finding-{i}", "summary": check.summary if check else "",
                       "source": check.source if check else "", "hint": f.hint,
                       "steps": _steps_text(min(x.first_step for x in fs), max(x.last_step for x in fs)),
                       "rows": [(x.metric, _steps_text(x.first_step, x.last_step), x.message) for x in fs],
                       "explained": [(x.check, x.severity, x.metric, _steps_text(x.first_step, x.last_step),
                                      x.message) for x in d.explained],
                       "explained_checks": d.explained_checks})
    return groups


def _evidence(i: int, f: Any, check: Any, src: _Series) -> Chart | None:
    """A chart of a finding's metric(s), its flagged steps shaded and its first flagged point marked."""
    colour = SEVERITY_COLOURS[f.severity]
    names: list[str] = []
    if check is not None and check.pair is not None:
        for p in check.pair:
            names += src.matching(p)[:1]
    elif f.metric in src.names:
        names.append(f.metric)
        if f.metric == "loss/val" and "loss/train" in src.names:
            names.insert(0, "loss/train")
    if check is not None and check.detector == "spread" and check.metrics:
        others = [n for n in src.matching(check.metrics[0]) if n != f.metric]
        if others:  # the series at the other end of the spread at the first flagged step
            def at(n: str) -> float:
                s, v = src.get(n)
                j = min(int(np.searchsorted(s, f.first_step)), s.size - 1)
                return float(v[j]) if s.size and np.isfinite(v[j]) else -np.inf
            names.append(max(others, key=at))
    if not names:
        return None
    palette = ["#455a64", "#1e88e5", "#8e24aa"]
    lines = [Line(n, *src.get(n), colour=colour if n == f.metric else palette[k % 3], width=1.6)
             for k, n in enumerate(names)]
    s0 = src.get(names[0])[0]
    spacing = float(np.median(np.diff(s0))) if s0.size > 1 else 1.0
    hlines = []
    if check is not None:
        for key, label in (("above", "above"), ("below", "below"), ("bound", "bound")):
            val = check.params.get(key)
            if isinstance(val, (int, float)) and check.detector in ("threshold", "growth") and val > 0:
                hlines.append((float(val), f"{label} {val:g}", colour))
    marks = []  # at the metric's own value (a finding's value may be derived: a median, a ratio, a spread)
    if f.metric in src.names:
        ms, mv = src.get(f.metric)
        j = int(np.searchsorted(ms, f.first_step))
        if j < ms.size and ms[j] == f.first_step:
            marks.append((f.first_step, float(mv[j]), "first flagged", colour))
    spans = list(f.spans or [(f.first_step, f.last_step)])
    if check is not None and is_whole_run(check):  # a verdict on the whole run after warm-up: shade all of it
        spans = [(_warm_start(check, src.span), f.last_step)]
    log = positive_span([ln.values for ln in lines])
    bands = _bands(spans, colour, spacing, _step_limits(lines))
    return line_chart(f"chart-finding-{i}", lines, log_y=log, bands=bands, hlines=hlines, marks=marks, height=240)


# -- metadata -------------------------------------------------------------------------------------------------
def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "—"
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return "—" if v is None else str(v)


def _probe_context(probe: Any) -> str:
    """How the sharpness probe ran (meta ``sharpness_probe``): its context and precision, and the contexts that
    failed before it."""
    if not isinstance(probe, dict) or not probe.get("context"):
        return ""
    failed = [f"{e.get('context')}: {e.get('error')}" for e in probe.get("failed") or [] if isinstance(e, dict)]
    return f" ({probe['context']}, {probe.get('precision')}" + (f"; failed: {', '.join(failed)}" if failed else "") \
        + ")"


def _metadata(meta: dict[str, Any], src: _Series) -> dict[str, Any]:
    model = meta.get("model") or {}
    optimisers = []
    for opt in meta.get("optimizers") or []:
        for j, g in enumerate(opt.get("param_groups") or []):
            keys = [k for k in ("lr", "momentum", "betas", "weight_decay", "eps", "nesterov") if k in g]
            optimisers.append({"name": f"{opt.get('name')} group {j}",
                               "settings": ", ".join(f"{k}={_fmt(g[k])}" for k in keys),
                               "params": g.get("n_params")})
    trainer = meta.get("trainer") or {}
    exc = meta.get("exception") or None
    last = src.last_step()
    rows = [
        ("status", meta.get("status", "unknown")),
        ("model", f"{model.get('class', '—')} — {model.get('n_parameters', 0):,} parameters "
                  f"({model.get('n_trainable', 0):,} trainable)" if model else "—"),
        ("steps recorded", f"{meta.get('start_step', 0)} to {last}" if last is not None else "none"),
        ("started", _when(meta.get("started"))),
        ("ended", _when(meta.get("ended"))),
        ("duration", _duration(meta.get("duration_s"))),
        ("precision / strategy", f"{trainer.get('precision', '—')} / {trainer.get('strategy', '—')} on "
                                 f"{trainer.get('accelerator', '—')} x{trainer.get('world_size', 1)}"),
        ("max epochs / steps", f"{_fmt(trainer.get('max_epochs'))} / {_fmt(trainer.get('max_steps'))}"),
        ("gradient clipping", _fmt(trainer.get("gradient_clip_val"))),
        ("accumulate grad batches", _fmt(trainer.get("accumulate_grad_batches"))),
        ("schedulers", ", ".join(f"{s.get('class')} ({s.get('interval')})" for s in meta.get("schedulers") or [])
         or "none"),
        ("sharpness probes", f"{meta.get('sharpness_probes', 0)} in {_duration(meta.get('sharpness_time_s'))}"
                             + _probe_context(meta.get("sharpness_probe"))),
        ("host", meta.get("host", "—")),
    ]
    if meta.get("resumed_from_step") is not None:
        rows.append(("resumed", f"from a checkpoint at step {meta['resumed_from_step']}"))
    if exc:
        rows.append(("exception", f"{exc.get('type')}: {exc.get('message')}"))
    if meta.get("unchanged_parameters"):
        rows.append(("never updated", ", ".join(meta["unchanged_parameters"])))
    return {
        "rows": [(k, _fmt(v)) for k, v in rows],
        "optimisers": optimisers,
        "hyperparameters": [(k, _fmt(v)) for k, v in sorted((meta.get("hyperparameters") or {}).items())],
        "parameters": [(str(p.get("name")), "×".join(str(d) for d in p.get("shape") or []) or "scalar",
                        f"{p.get('numel', 0):,}", "yes" if p.get("trainable") else "no")
                       for p in model.get("parameters") or []],
        "versions": [(k, _fmt(v)) for k, v in sorted((meta.get("versions") or {}).items())],
        "monitor": [(k, _fmt(v)) for k, v in sorted((meta.get("monitor") or {}).items())],
    }


def _partial(meta: dict[str, Any], src: _Series) -> str | None:
    """The banner for a run that did not finish (None when it did)."""
    status = meta.get("status")
    last = src.last_step()
    at = f"step {last}" if last is not None else "its first step"
    if status == "finished":
        return None
    if status == "crashed":
        exc = meta.get("exception") or {}
        what = f"{exc.get('type', 'an exception')}: {exc.get('message', '')}".strip().rstrip(":")
        return f"This run crashed at {at} ({what}). The charts show what was recorded up to the crash."
    if status == "interrupted":
        return f"This run was interrupted at {at} (KeyboardInterrupt). The charts show what was recorded until then."
    if status == "running":
        return (f"This run has not finished: it is still running, or its process was killed before it could say "
                f"how it ended. This report is a snapshot up to {at}; whole-run checks may change.")
    return f"This run's status is {status!r}: it may be incomplete (recorded up to {at})."


def _measurement_errors(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The notice for measurements that failed during training and were turned off (meta
    ``measurement_errors``): one row each -- what, from which step, the error -- at most
    :data:`MAX_MEASUREMENT_ERRORS`. None when there were none."""
    errors = meta.get("measurement_errors")
    if not isinstance(errors, list) or not errors:
        return None
    rows = []
    for e in errors[:MAX_MEASUREMENT_ERRORS]:
        if not isinstance(e, dict):
            e = {"message": str(e)}
        what = str(e.get("measurement") or "measurement")
        target = e.get("metric") or e.get("layer")
        if target:
            what += f" of {target}"
        err = ": ".join(str(x) for x in (e.get("error"), e.get("message")) if x not in (None, ""))
        step = e.get("step")
        rows.append({"what": what, "step": step if isinstance(step, int) else None, "error": err})
    return {"rows": rows, "more": len(errors) - len(rows), "n": len(errors)}


# -- the page -------------------------------------------------------------------------------------------------
_ENV: jinja2.Environment | None = None


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """The compiled template kept between processes (jinja2's per-user cache directory under the temp dir,
    checked against the template's source): compiling it took 64 ms of a 190 ms end of fit in a fresh process.
    None where no such directory can be made (the template is then compiled once per process)."""
    try:
        return jinja2.FileSystemBytecodeCache()
    except Exception:  # (an unsafe or unwritable temp dir)
        return None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(loader=jinja2.PackageLoader("dyncheck.report", "templates"), autoescape=True,
                                  undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                  bytecode_cache=_bytecode_cache())
    return _ENV


_PLOTLY_JS: list[str] = []


def _plotly_js() -> str:
    """plotly.js as the installed plotly package ships it, read once per process: straight from its package data
    (importing ``plotly.offline`` for it costs more than reading the file), else through plotly."""
    if not _PLOTLY_JS:
        try:
            from importlib.resources import files

            text = (files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
        except (OSError, ModuleNotFoundError, TypeError):
            from plotly.offline import get_plotlyjs

            text = get_plotlyjs()
        _PLOTLY_JS.append(text)
    return _PLOTLY_JS[0]


def render(run: Any, result: Any | None, *, title: str | None = None, rules_label: str = "",
           compare: Sequence[Any] = (), rules: Any = None) -> str:
    """The report's HTML for an open :class:`~dyncheck.store.Run` and its :class:`CheckResult` (None: not
    checked); ``compare``: open runs to overlay and compare with (:mod:`._compare`), ``rules`` the rule set the
    run was checked with."""
    from .. import __version__

    meta = run.meta
    src = _Series(run, meta)
    skipped = {s.check: s.reason for s in result.skipped} if result is not None else {}
    checks = result.checks if result is not None else {}

    groups = _group_findings(result.diagnoses if result is not None else [], checks, src)

    loss, phases = _loss_section(src, skipped)
    sections = [loss, _lr_section(src), _grad_section(src), _update_section(src), _act_section(src, skipped),
                _sharpness_section(src, skipped), _noise_section(src, skipped, meta)]
    from ._dynamics import dynamics_sections

    sections += dynamics_sections(src, meta)
    name = title or run.dir.name
    comparison = None
    if compare:
        from ._compare import compare_section, labels

        names = labels([run.dir, *(c.dir for c in compare)])
        section, comparison = compare_section(run, result, list(zip(names[1:], compare)), rules=rules,
                                              name=names[0])
        sections.insert(0, section)
    charts = [g["chart"] for g in groups if g["chart"]] + [c for s in sections for c in s.charts]

    if result is None:
        verdict = {"status": "unchecked", "label": "NOT CHECKED", "line": "no checks were evaluated (rules=None)"}
        counts = {"error": 0, "warning": 0, "info": 0}
    else:
        from ..checks.output import summary_line

        counts = result.counts()
        label = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}[result.status]
        verdict = {"status": result.status, "label": label, "line": summary_line(result).split(": ", 1)[1]}
        if result.verdict() == "unjudged":  # nothing fired, but nothing could be judged either: never green
            verdict = {"status": "warn", "label": "NOT JUDGED", "line": result.not_judged()}
    status = meta.get("status")
    if status in ("crashed", "interrupted", "running") and verdict["status"] != "fail":
        # a run that did not finish is never a green PASS: the label says how it ended, the line what checks say
        verdict = {**verdict, "status": "fail" if status == "crashed" else "warn",
                   "label": {"crashed": "CRASHED", "interrupted": "INTERRUPTED", "running": "RUNNING"}[status]}
    passed = [{"id": c, "summary": checks[c].summary, "severity": checks[c].severity} for c in
              (result.passed if result is not None else [])]
    ctx = {
        "title": name, "run_path": str(run.dir), "version": __version__, "rules_label": rules_label,
        "generated": _dt.datetime.now(tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "verdict": verdict, "counts": counts, "partial": _partial(meta, src), "groups": groups,
        "measurement_errors": _measurement_errors(meta),
        "n_findings": len(result.findings) if result is not None else 0,
        "phases": phases, "phase_colours": PHASE_COLOURS, "sections": sections, "charts": charts,
        "passed": passed, "skipped": result.skipped if result is not None else [],
        "metadata": _metadata(meta, src), "severity_colours": SEVERITY_COLOURS,
        "stopped_by": meta.get("stopped_by"), "plotly_js": _plotly_js(), "fmt_loss": _fmt_loss,
        "comparison": comparison,
    }
    return _env().get_template("report.html.j2").render(**ctx)


def _fmt_loss(v: float) -> str:
    return f"{v:.3g}"  # also spells nan / inf; the template escapes
