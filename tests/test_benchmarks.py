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
