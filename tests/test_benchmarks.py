"""The benchmark scripts run (tiny sizes); speed is measured by them, never asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                PL_DISABLE_FORK="1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the path without CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                          env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "CUDA is not available here" in proc.stdout and "nothing measured" in proc.stdout


def test_memory_child_measures_the_monitor(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import memory
    finally:
        sys.path.pop(0)
    script = tmp_path / "child.py"
    script.write_text(memory.CHILD)
    proc = subprocess.run([sys.executable, str(script), "64", "2", "2", "monitor"], capture_output=True, text=True,
                          env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["params"] == 2048 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10 and out["peak_extra_mb"] >= 0
    assert Path(out["dyncheck"]) == REPO / "dyncheck"


def test_attribution_shares_from_collapsed_stacks(tmp_path):
    """benchmarks/attribution.py's aggregation against a hand-made py-spy raw file with known shares."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import attribution
    finally:
        sys.path.pop(0)
    fit = "<module> (run.py:1);Trainer.fit (pytorch_lightning/trainer/trainer.py:584)"
    lines = [
        f"{fit};training_step (model.py:9);conv2d (torch/nn/functional.py:1) 60",  # the training itself
        f"{fit};DynamicsMonitorHooks.on_before_optimizer_step (dyncheck/_callback.py:293);"
        "NormPlan._norms (dyncheck/measure/tensors.py:209) 20",
        f"{fit};DynamicsMonitorHooks.on_before_optimizer_step (dyncheck/_callback.py:294) 5",  # same hook, other line
        f"{fit};forward (model.py:3);ActivationRecorder._hook.<locals>.hook (/x/site-packages/dyncheck/measure/"
        "activations.py:241);activation_stats (/x/site-packages/dyncheck/measure/activations.py:95) 15",
        "<module> (run.py:1);make_model (benchmarks/overhead.py:3) 100",  # outside the fit: not counted
        "garbage line without a count",
    ]
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join(lines) + "\n")
    res = attribution.attribute(str(raw))
    assert res["fit"] == 100
    assert res["dyncheck"] == pytest.approx(0.40)
    outer = dict(res["outer"])
    assert outer == pytest.approx({"DynamicsMonitorHooks.on_before_optimizer_step (dyncheck/_callback.py)": 0.25,
                                   "ActivationRecorder._hook.<locals>.hook (/x/site-packages/dyncheck/measure/"
                                   "activations.py)": 0.15})
    inner = dict(res["inner"])
    assert inner["NormPlan._norms (dyncheck/measure/tensors.py)"] == pytest.approx(0.20)
    assert inner["DynamicsMonitorHooks.on_before_optimizer_step (dyncheck/_callback.py)"] == pytest.approx(0.05)


@pytest.mark.parametrize("suite", ["fresh_suite", "fresh_suite2", "fresh_suite3"])
def test_held_out_suites_are_labelled_with_the_packs_ids(suite):
    """The independent held-out suites: at least 16 healthy and 16 faulty runs each, every fault expecting
    ids the default pack has (a typo would make a fault undiagnosable), healthy runs expecting none."""
    import importlib

    from dyncheck.checks.rules import load_rules

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        mod = importlib.import_module(suite)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    ids = set(load_rules("default").checks)
    runs = list(mod.RUNS.values())
    healthy = [r for r in runs if r.healthy]
    faults = [r for r in runs if not r.healthy]
    assert len(healthy) >= 16 and len(faults) >= 16
    assert all(not r.expected for r in healthy)
    assert all(r.expected and set(r.expected) <= ids for r in faults), [
        (r.name, sorted(set(r.expected) - ids)) for r in faults if set(r.expected) - ids]


_LOCKSTEP_CHILD = """
import json, sys, threading, time
import torch
sys.path.insert(0, sys.argv[1])
import lockstep, overhead
import dyncheck.monitor

dyncheck.monitor.time = lockstep._OwnClock()
x, y = overhead.digits(flat=False)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:256], y[:256]), batch_size=64)
order = []
cut = lockstep._Runner._cut

def logged_cut(self):
    order.append(self.me)
    cut(self)

lockstep._Runner._cut = logged_cut
r = lockstep.lockstep(overhead.make_cnn, data, 12, 4,
                      {"rules": None, "report": False, "sharpness_budget": 0, "noise_budget": 0,
                       "trajectory_every_n_steps": 0})
got = {}

def waited_a_quarter_second():
    lockstep._LOCAL.waited = 0.25
    got["own"], got["real"] = lockstep._OwnClock().perf_counter(), time.perf_counter()

t = threading.Thread(target=waited_a_quarter_second)
t.start()
t.join()
print(json.dumps({"plain": r["plain"], "monitor": r["monitor"], "order": order,
                  "waited": got["real"] - got["own"],
                  "main": time.perf_counter() - lockstep._OwnClock().perf_counter()}))
"""


def test_lockstep_fits_take_turns_and_the_monitor_clock_leaves_out_the_waits():
    """benchmarks/lockstep.py (in a child: importing the benchmarks quiets Lightning's loggers): the plain and the
    monitored fit alternate every ``block`` steps (3 turns each for 12 steps in turns of 4, the last ending with the
    fit), and the monitor's clock there counts its own thread's time only (the seconds waited for a turn are left
    out; none in a thread that never waited)."""
    proc = subprocess.run([sys.executable, "-c", _LOCKSTEP_CHILD, str(REPO / "benchmarks")], capture_output=True,
                          text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["plain"]) == len(out["monitor"]) == 3 and all(b > 0 for b in out["plain"] + out["monitor"])
    assert out["order"] == [0, 1, 0, 1, 0, 1], out["order"]
    assert out["waited"] == pytest.approx(0.25, abs=1e-3) and abs(out["main"]) < 1e-3
