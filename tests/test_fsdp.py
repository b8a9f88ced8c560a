"""FSDP2 on two CPU processes (Lightning's ModelParallelStrategy, ``fully_shard`` in ``configure_model``, gloo):
parameters and gradients are DTensors; every per-parameter statistic must be that of the full parameter, reduced
from the local shards, and sharpness must be measured by both processes together (finite differences over the
shards) without hanging them.

Reference: one process, the same model and seed, with the batch that is the union of the two ranks' batches (rank r
takes the samples r, r+2, ...; FSDP2 averages the gradients over the ranks), so losses, gradient norms, weight
norms and update ratios must agree to float rounding (rtol 2e-4: the shards' sums of squares add up in another
order than the whole tensor's; the optimizer steps of the shards round alike, per element)."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dyncheck import DynamicsMonitor, open_run
from models import loaders, trainer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fsdp_script import OffsetMLP  # noqa: E402

#: seconds before a hung run fails the test (both processes are killed: they run in a session of their own)
LIMIT_S = 240


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fsdp_script.py"), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=out, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 1 is rank 0's child: the whole session goes
        log, _ = proc.communicate()
        pytest.fail(f"the FSDP2 run hung (no end after {LIMIT_S} s):\n{log[-3000:]}")
    assert proc.returncode == 0, log[-4000:]
    assert (out / "rank0.done").read_text() == "DTensor" and (out / "rank1.done").exists()

    pl.seed_everything(3)
    # the NTK and the weight sketch are off under FSDP2 (sharded DTensors): off in the reference too
    ref_mon = DynamicsMonitor(dirpath=out / "ref", every_n_steps=2, sharpness_every_n_steps=3, ntk_budget=0,
                              trajectory_every_n_steps=0)
    trainer(out, [ref_mon], max_epochs=2).fit(OffsetMLP(), *loaders(n=128, batch_size=32, flat=True))
    return out, log


def test_fsdp2_per_parameter_statistics_are_the_full_parameters(fsdp):
    out, _ = fsdp
    assert sorted(p.name for p in out.rglob("*.db")) == ["run.db", "run.db"]  # rank 0's and the reference's
    run, ref = open_run(out / "run"), open_run(out / "ref")
    assert run.meta["trainer"]["world_size"] == 2 and run.meta["trainer"]["strategy"] == "ModelParallelStrategy"
    assert run.meta["status"] == "finished"
    params = [p["name"] for p in ref.meta["model"]["parameters"]]
    assert [p["name"] for p in run.meta["model"]["parameters"]] == params
    assert "net.0.weight" in params and "offset.shift" in params
    # the same series, names resolved, nothing left out -- but the noise scale, off under FSDP2 (said in the meta)
    noise = {n for n in ref.metrics() if n.startswith("noise/") or n == "batch/size"}
    assert set(run.metrics()) == set(ref.metrics()) - noise
    assert "FSDP2" in run.meta["noise_sources_skipped"]["all"] and run.meta["noise_source"] is None
    per_param = [f"{kind}/{p}" for p in params for kind in
                 ("grad_norm", "grad_nonfinite", "weight_norm", "update_ratio", "weight_unchanged")]
    per_param = [n for n in per_param if n in ref.metrics()]  # offset.unused has no gradient, so no update
    assert len(per_param) == 8 * 5 - 3
    # per-rank statistics averaged over the ranks (as under DDP): below
    per_rank = ("act/std/", "act/dead/", "act/unit_spread/", "output/var")
    compared = [n for n in ref.metrics()  # sharpness: below
                if not n.startswith(per_rank + ("sharpness/",)) and n not in noise]
    assert set(per_param) < set(compared) and {"grad_norm/total", "loss/train", "loss/val", "act/mean/net.1",
                                               "act/max_abs/net.4", "act/nonfinite/net.1"} < set(compared)
    for name in compared:
        a, b = run.series(name), ref.series(name)
        np.testing.assert_array_equal(a.steps, b.steps, err_msg=name)
        np.testing.assert_allclose(a.values, b.values, rtol=2e-4, atol=1e-6, err_msg=name)
    for name in set(ref.metrics()) - noise:
        a, b = run.series(name).values, ref.series(name).values
        if name.startswith("act/std/"):  # the mean of the halves' standard deviations: close to the whole's
            np.testing.assert_allclose(a, b, rtol=0.02, err_msg=name)
        elif name.startswith("act/dead/"):  # a unit dead for the whole batch is dead for each half
            assert (a >= b - 1e-6).all(), name
        elif name.startswith("act/unit_spread/"):  # the mean of the halves' spreads: close to the whole's
            np.testing.assert_allclose(a, b, rtol=0.05, err_msg=name)
        elif name == "output/var":  # the mean of the halves' variances: the whole's less the between-halves part
            assert (a <= b * (1 + 1e-5)).all() and (a >= 0.5 * b).all(), (name, a, b)
    assert len(run.series("loss/train")) == 8
    # offset.shift: rank 0's shard never changes, rank 1's does -- changed, with finite update ratios after the
    # first step (rank 0 alone would say unchanged, 0/0)
    assert run.series("weight_unchanged/offset.shift").values.tolist() == [0, 0, 0, 0]
    assert np.isfinite(run.series("update_ratio/offset.shift").values[1:]).all()
    assert run.series("weight_unchanged/offset.unused").values.tolist() == [1, 1, 1, 1]
    assert run.meta["unchanged_parameters"] == ref.meta["unchanged_parameters"] == ["offset.unused"]


def test_fsdp2_sharpness_by_finite_differences_on_every_process(fsdp):
    """Both processes probe at steps 0, 3, 6 (a fixed schedule they agree on), perturbing their own shards; the
    value is the top eigenvalue of the Hessian of the mean of their probe batches' losses -- the single process's
    exact value on the union of the two batches (its first batch), to finite-difference accuracy. The training is
    unchanged by the probes (the series above match the reference)."""
    out, log = fsdp
    run, ref = open_run(out / "run"), open_run(out / "ref")
    a, b = run.series("sharpness/top_eig"), ref.series("sharpness/top_eig")
    assert a.steps.tolist() == b.steps.tolist() == [0, 3, 6]
    np.testing.assert_allclose(a.values, b.values, rtol=1e-3)
    np.testing.assert_allclose(run.series("sharpness/threshold").values, ref.series("sharpness/threshold").values)
    # the NTK and the weight sketch are not supported under FSDP2 (recorded with their reasons); sharpness ran
    assert {e["measurement"] for e in run.meta["measurement_errors"]} <= {"ntk", "trajectory"}
    probe = run.meta["sharpness_probe"]
    assert probe["context"] == "finite-difference" and probe["probes"] == {"finite-difference": 3}
    assert probe["sharded"]["every_n_steps"] == 3 and ref.meta["sharpness_probe"]["context"] == "double-backward"
    assert (out / "run" / "findings.json").exists() and (out / "run" / "report.html").exists()
    assert json.loads((out / "run" / "findings.json").read_text())


def test_dtensor_shares_add_up_to_the_full_tensor(fsdp):
    """Each rank's shares (tests/fsdp_script.py ``shares``) of a 5x3 tensor with one NaN: sharded by rows (3 | 2),
    replicated, and plain; a Partial DTensor is left out (its local part tells nothing without a reduction)."""
    out, _ = fsdp
    r0, r1 = (json.loads((out / f"shares{r}.json").read_text()) for r in (0, 1))
    torch.manual_seed(0)
    full = torch.randn(5, 3)
    assert (r0["local_rows"], r1["local_rows"]) == (3, 2)
    assert r0["replicas"] == r1["replicas"] == [1, 2, 2]
    assert r0["partial_left_out"] == r1["partial_left_out"] == [3] and r0["kept"] == [0, 1, 2]
    full[4, 1] = 0.0  # the script's NaN, replaced by 0 for the finite norms
    full_norm = float(full.double().norm())
    for i in range(3):
        total = math.sqrt(r0["finite_norms"][i] ** 2 + r1["finite_norms"][i] ** 2)
        assert total == pytest.approx(full_norm, rel=1e-6), i
        assert r0["counts"][i] + r1["counts"][i] == 1.0, i  # the one NaN, counted once
    # the NaN is in rank 1's rows: rank 0's share of the sharded tensor stays finite
    assert math.isfinite(r0["nan_norms"][0]) and math.isnan(r1["nan_norms"][0])
