"""DDP on two CPU processes: gradients measured after all-reduce, per-rank statistics reduced, rank 0 writes.

Reference: one process with the batch that is the union of the two ranks' batches (DistributedSampler without
shuffling gives rank r the samples r, r+2, ...; a single loader with twice the batch size sees the same samples per
step), so losses, gradient norms and weights must agree to float rounding."""

import os
import subprocess
import sys

import numpy as np
import pytorch_lightning as pl

from dyncheck import DynamicsMonitor, open_run
from models import MLP, loaders, trainer

HERE = os.path.dirname(os.path.abspath(__file__))


def test_ddp_two_processes_match_single_process(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "ddp_script.py"), str(tmp_path / "ddp")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "rank0.done").exists() and (tmp_path / "ddp" / "rank1.done").exists()
    files = [p.name for p in (tmp_path / "ddp").rglob("*.db")]
    assert files == ["run.db"]  # only rank 0 wrote

    pl.seed_everything(3)
    ref_mon = DynamicsMonitor(dirpath=tmp_path / "ref", every_n_steps=2, sharpness_budget=0)
    trainer(tmp_path, [ref_mon], max_epochs=2).fit(MLP(log_acc=False), *loaders(n=256, batch_size=32, flat=True))

    run, ref = open_run(tmp_path / "ddp" / "run"), open_run(tmp_path / "ref")
    assert run.meta["trainer"]["world_size"] == 2 and run.meta["status"] == "finished"
    for name in ["loss/train", "grad_norm/total", "grad_norm/net.0.weight", "weight_norm/net.5.weight",
                 "update_ratio/net.3.weight", "loss/val", "act/mean/net.1", "act/max_abs/net.4",
                 "act/nonfinite/net.1"]:
        a, b = run.series(name), ref.series(name)
        np.testing.assert_array_equal(a.steps, b.steps, err_msg=name)
        np.testing.assert_allclose(a.values, b.values, rtol=2e-4, atol=1e-6, err_msg=name)
    assert len(run.series("loss/train")) == 16
    # the noise scale: no per-process gradients under DDP; rank 0's probe against the all-reduced gradient (the
    # global batch of 2 x 16)
    assert run.meta["noise_source"] == "probe" and run.meta["noise_sources_skipped"]["ddp"].startswith("DDP all-")
    assert set(run.series("batch/size").values.tolist()) == {32.0}
    assert run.meta["noise_probe"]["big_batch"] == "the step's gradient"
    # sharpness ran on rank 0 only, on its own probe batch, without hanging rank 1
    np.testing.assert_array_equal(run.series("sharpness/top_eig").steps, [0, 3, 6, 9, 12, 15])
