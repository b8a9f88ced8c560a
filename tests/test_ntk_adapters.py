"""The NTK and the weight sketch through the other adapters: a plain loop (``dyncheck.watch``, bit-identical
training, the kernel of the model at its first step) and the Hugging Face Trainer (dict batches, ModelOutput)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_adapters_loop import _data, _model, _probe_loss, _train

import dyncheck
from dyncheck import open_run
from dyncheck.measure.ntk import empirical_ntk, kernel_stats
from dyncheck.measure.trajectory import Sketch, read_sketch


def test_plain_loop_records_the_kernel_and_sketch_and_trains_bit_identically(tmp_path):
    plain = _model()
    _train(plain, torch.optim.SGD(plain.parameters(), lr=0.05), 12)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    probe = (x[:16], y[:16])
    first = _model().eval()  # the same initial weights (seeded), in eval mode as the probe runs (dropout off)
    k0 = empirical_ntk(first, probe[0][:8]).kernel
    sk = Sketch([p.numel() for p in first.parameters()], 32)
    sketch0 = sk.take(list(first.parameters())).numpy()
    with dyncheck.watch(model, opt, dirpath=tmp_path / "run", total_steps=12, probe_batch=probe,
                        sharpness_loss_fn=_probe_loss, sharpness_budget=0, ntk_every_n_steps=4, ntk_examples=8,
                        trajectory_every_n_steps=3, trajectory_dim=32, rules=None, report=False) as mon:
        _train(model, opt, 12, mon)
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    with open_run(tmp_path / "run") as run:
        top = run.series("ntk/top_eig")
        assert list(top.steps) == [0, 4, 8] and top.values[0] == pytest.approx(kernel_stats(k0)[0], rel=1e-6)
        assert run.series("ntk/distance").values[0] == 0 and run.series("ntk/distance").values[-1] > 0
        steps, mat = read_sketch(run)
        assert list(steps) == [0, 3, 6, 9] and np.array_equal(mat[0], sketch0.astype(np.float64))


def test_hugging_face_trainer_probes_the_kernel_of_dict_batches(tmp_path):
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from test_adapters_hf import _fit

    from dyncheck.adapters.hf import DynamicsMonitorCallback

    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", every_n_steps=4, report=False, rules=None,
                                 ntk_every_n_steps=5, trajectory_dim=128)
    _fit(tmp_path, [cb], steps=12)
    with open_run(tmp_path / "run") as run:
        assert run.meta["measurement_errors"] == []
        dist = run.series("ntk/distance")
        assert dist.values[0] == 0 and len(dist) >= 2 and np.isfinite(dist.values).all()
        info = run.meta["ntk"]
        assert info["examples"] == 8 and info["parameters"] == sum(
            p["numel"] for p in run.meta["model"]["parameters"] if p["trainable"])
        assert len(run.metrics("traj/c*")) == 128
