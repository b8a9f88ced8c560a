"""Weight-trajectory sketch and PCA: the coordinate draw, the gather, PCA of the sketch against exact PCA of full
snapshots, the collector through a real Lightning Trainer (values, schedule, no observer effect), options."""

from __future__ import annotations


import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from models import MLP, fit_mlp
from torch import nn

from dyncheck.errors import ConfigError
from dyncheck.measure.trajectory import Sketch, pca, principal_angles, read_sketch
from dyncheck.monitor import MonitorConfig
from dyncheck.store import open_run


def _flat_index(sk: Sketch) -> list[int]:
    starts = np.concatenate([[0], np.cumsum(sk.sizes)])
    return [int(starts[t]) + i for t, i in sk.coords]


def test_the_draw_is_fixed_spread_by_size_and_leaves_the_global_generator_alone():
    sizes = [50_000, 10_000, 100, 3, 39_897]
    state = torch.random.get_rng_state()
    sk = Sketch(sizes, 2000)
    assert torch.equal(state, torch.random.get_rng_state())
    idx = _flat_index(sk)
    assert sk.dim == 2000 and len(set(idx)) == 2000 and idx == sorted(idx) and max(idx) < sum(sizes)
    assert idx == _flat_index(Sketch(sizes, 2000)) and idx != _flat_index(Sketch(sizes, 2000, seed=1))
    counts = np.bincount([t for t, _ in sk.coords], minlength=len(sizes))
    expected = 2000 * np.array(sizes) / sum(sizes)
    sd = np.sqrt(expected * (1 - np.array(sizes) / sum(sizes)))
    assert (np.abs(counts - expected) <= 5 * sd + 1).all()  # proportional to size (hypergeometric spread)
    whole = Sketch([3, 4], 100)  # more coordinates than values: the whole vector
    assert whole.dim == 7 and _flat_index(whole) == list(range(7))


def test_the_draw_of_a_huge_model_costs_what_its_dim_does_and_is_uniform():
    # 2e11 values: a permutation of them would need 1.6 TB; the draw needs the 2000 chosen indices only
    sizes = [10**11, 3, 10**11 - 3]
    sk = Sketch(sizes, 2000)
    idx = _flat_index(sk)
    assert sk.dim == 2000 and len(set(idx)) == 2000 and idx == sorted(idx) and 0 <= min(idx) and max(idx) < sum(sizes)
    assert idx == _flat_index(Sketch(sizes, 2000)) and idx != _flat_index(Sketch(sizes, 2000, seed=1))
    counts = np.bincount([t for t, _ in sk.coords], minlength=3)
    assert abs(counts[0] - 1000) <= 5 * np.sqrt(500) and counts[1] == 0
    # uniform: the chosen indices' deciles of the range hold ~200 each (chi-square, 9 dof, p ~ 1e-6 at 50)
    dec = np.bincount((np.array(idx) * 10 // sum(sizes)).astype(int), minlength=10)
    assert ((dec - 200) ** 2 / 200).sum() < 50
    # above the permutation's size, every value is reachable: a mid-size model's draw covers its range evenly
    mid = Sketch([70_000, 30_000], 20_000)
    m = np.array(_flat_index(mid))
    assert mid.dim == 20_000 and len(np.unique(m)) == 20_000
    assert ((np.bincount(m * 10 // 100_000, minlength=10) - 2000) ** 2 / 2000).sum() < 50


def test_take_gathers_the_chosen_values_of_any_layout_and_dtype():
    torch.manual_seed(0)
    tensors = [torch.randn(30, 20), torch.randn(20, 30).T, torch.randn(17, dtype=torch.float64),
               torch.randn(5, 5).to(torch.bfloat16)]
    sk = Sketch([t.numel() for t in tensors], 300)
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    got = sk.take(tensors)
    assert got.dtype == torch.float32 and torch.equal(got, flat[_flat_index(sk)])
    assert got.data_ptr() != sk.take(tensors).data_ptr()  # a new vector per snapshot (buffered until a flush)


def test_pca_of_known_data():
    t = np.linspace(0, 1, 20)[:, None]
    direction = np.array([[3.0, 4.0, 0.0]]) / 5
    res = pca(t @ direction + 7.0)
    assert res.ratios[0] == pytest.approx(1.0) and res.ratios[1:].max() < 1e-12
    assert abs(abs(res.components[0] @ direction[0]) - 1) < 1e-12
    assert np.allclose(np.abs(res.path[:, 0]), np.abs(t[:, 0] - t.mean()))
    angles = principal_angles(np.eye(3)[:, :2], np.eye(3)[:, [1, 0]])
    assert np.allclose(angles, 0, atol=1e-7)
    assert principal_angles(np.eye(3)[:, :1], np.eye(3)[:, 1:2])[0] == pytest.approx(np.pi / 2)


def _train_snapshots(seed: int, steps: int = 300, every: int = 3):
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    d = load_digits()
    x = torch.tensor(d.data[:512], dtype=torch.float32) / 16
    y = torch.tensor(d.target[:512])
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    params = list(net.parameters())
    sk = Sketch([p.numel() for p in params], 1024)
    full, sketched = [], []
    for step in range(steps):
        if step % every == 0:
            full.append(torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy())
            sketched.append(sk.take(params).numpy())
        i = (step * 32) % 512
        loss = nn.functional.cross_entropy(net(x[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sk, np.array(full), np.array(sketched)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sketch_pca_matches_exact_pca_of_full_snapshots(seed):
    sk, full, sketched = _train_snapshots(seed)
    assert sk.total == 6570 and sketched.shape[1] == 1024
    assert np.array_equal(sketched, full[:, _flat_index(sk)])
    exact, approx = pca(full), pca(sketched)
    # explained-variance ratios within 5 points each, the first within 5% of itself
    assert np.abs(exact.ratios[:3] - approx.ratios[:3]).max() < 0.05
    assert abs(approx.ratios[0] / exact.ratios[0] - 1) < 0.05
    # the same shape: the paths in the first components span nearly the same subspace of time series
    angles = np.degrees(principal_angles(exact.path, approx.path))
    assert angles[:2].max() < 5 and angles[2] < 15


def test_sketch_of_a_small_net_is_its_whole_vector_and_its_pca_is_exact():
    sk, full, sketched = _train_snapshots(0, steps=60)
    small = Sketch([64], 1024)
    assert small.dim == 64
    assert np.allclose(pca(full[:, :64]).ratios, pca(np.array([small.take([torch.tensor(r[:64])]).numpy()
                                                                for r in full])).ratios)


def test_lightning_run_records_the_sketch_at_each_steps_weights_and_changes_nothing(tmp_path):
    plain = fit_mlp(tmp_path, "plain")
    watched = fit_mlp(tmp_path, "traj", {"trajectory_dim": 256, "sharpness_budget": 0, "ntk_budget": 0})
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    pl.seed_everything(0, verbose=False)
    fresh = [p for p in MLP().parameters()]
    sk = Sketch([p.numel() for p in fresh], 256)
    with open_run(tmp_path / "traj") as run:
        names = run.metrics("traj/c*")
        assert len(names) == 256
        steps, mat = read_sketch(run)
        meta = run.meta["trajectory"]
    assert meta["every_n_steps"] == 1 and meta["dim"] == 256  # 16 planned steps: every step (at most 200)
    assert list(steps) == list(range(16)) and mat.shape == (16, 256)
    assert np.array_equal(mat[0], sk.take(fresh).numpy().astype(np.float64))  # the weights step 0 ran with
    last = sk.take(list(watched.parameters())).numpy()
    assert not np.array_equal(mat[-1], last)  # step 15's are before its own update


def test_read_sketch_from_a_mapping_keeps_the_steps_every_coordinate_has():
    src = {"traj/c1": ([0, 2, 4], [1.0, 2.0, 3.0]), "traj/c0": ([0, 4], [5.0, 6.0]), "traj/cx": ([0], [0.0]),
           "loss/train": ([0], [1.0])}
    steps, mat = read_sketch(src)
    assert list(steps) == [0, 4] and mat.tolist() == [[5.0, 1.0], [6.0, 3.0]]


@pytest.mark.parametrize("kw", [{"trajectory_dim": 0}, {"trajectory_dim": 1.5}, {"trajectory_every_n_steps": -2},
                                {"trajectory_every_n_steps": True}])
def test_bad_options_are_clear_errors(kw):
    name = next(iter(kw))
    with pytest.raises(ConfigError, match=name):
        MonitorConfig(**kw)


def test_off_with_every_n_0(tmp_path):
    from loop import drive

    net = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    drive(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1), 4,
          config=MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=0))
    with open_run(tmp_path / "run.db") as run:
        assert run.metrics("traj/*") == [] and "trajectory" not in run.meta
    (tmp_path / "on").mkdir()
    drive(tmp_path / "on", net, torch.optim.SGD(net.parameters(), lr=0.1), 4,
          config=MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=2, trajectory_dim=8))
    with open_run(tmp_path / "on" / "run.db") as run:
        steps, mat = read_sketch(run)
        assert list(steps) == [0, 2] and mat.shape == (2, 8)


def test_snapshots_reach_the_store_in_bulk_and_all_of_them_at_checkpoints_and_the_end(tmp_path):
    from loop import drive

    from dyncheck.collect.path import EMIT_EVERY_FLUSHES

    net = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    seen = {}
    holder = {}

    def on_step(step):  # after the optimizer step, before batch_end's flush of this step
        if step == 24:
            holder["state"] = holder["mon"].state_dict()  # a checkpoint: flushes everything so far
        with open_run(tmp_path / "run.db") as run:
            seen[step] = len(read_sketch(run)[0])

    from dyncheck.monitor import Monitor

    holder["mon"] = mon = Monitor(MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=1, trajectory_dim=8,
                                                flush_every_n_steps=2))
    drive(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1), 40, monitor=mon, on_step=on_step)
    # flushes after steps 1, 3, 5, ...: the first 8 hold the snapshots back, the 8th writes steps 0-15
    assert EMIT_EVERY_FLUSHES == 8
    assert seen[14] == 0 and seen[16] == 16
    assert seen[24] == 25  # the checkpoint wrote all of them, step 24's included
    with open_run(tmp_path / "run.db") as run:
        steps, mat = read_sketch(run)
    assert list(steps) == list(range(40)) and mat.shape == (40, 8)  # the end of the fit writes the rest


def test_store_series_matching_reads_many_series_in_one_query_as_series_does(tmp_path):
    from dyncheck.store import RunWriter

    with RunWriter(tmp_path / "run.db") as w:
        w.write({"traj/c1": ([0, 1], [1.0, 2.0]), "traj/c10": ([0], [3.0]), "traj/d": ([0], [4.0]),
                 "trajx": ([0], [5.0]), "loss/train": ([0, 1], [9.0, 8.0]), "traj/c2": ([0], [7.0])})
        w.write({"traj/c1": ([1, 2], [20.0, 30.0]), "traj/c2": ([], [])})  # step 1 rewritten: the last write wins
    with open_run(tmp_path / "run.db") as run:
        got = run.series_matching("traj/c*")
        assert list(got) == ["traj/c1", "traj/c10", "traj/c2"] == run.metrics("traj/c*")
        for name, s in got.items():
            ref = run.series(name)
            assert np.array_equal(s.steps, ref.steps) and np.array_equal(s.values, ref.values)
        assert got["traj/c1"].values.tolist() == [1.0, 20.0, 30.0]
        assert list(run.series_matching("*")) == run.metrics()
        assert list(run.series_matching("traj/c?")) == ["traj/c1", "traj/c2"]
        assert run.series_matching("nothing/*") == {}
        steps, mat = read_sketch(run)  # the steps every coordinate has
        assert list(steps) == [0] and mat.tolist() == [[1.0, 7.0, 3.0]]


def test_more_snapshots_than_buffer_rows_between_flushes_are_all_kept(tmp_path):
    from loop import drive

    from dyncheck.collect.path import MAX_PENDING

    net = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))
    drive(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1), MAX_PENDING + 30,
          config=MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=1, trajectory_dim=1000,
                               flush_every_n_steps=1000))  # one flush, at the end
    with open_run(tmp_path / "run.db") as run:
        steps, mat = read_sketch(run)
    assert list(steps) == list(range(MAX_PENDING + 30)) and mat.shape == (MAX_PENDING + 30, 41)
    assert len({row.tobytes() for row in mat}) == len(mat)  # every row its own snapshot (no buffer row reused)


def test_store_series_matching_names_the_damaged_metric_and_keeps_a_chunk_that_repeats_steps(tmp_path):
    import sqlite3

    from dyncheck.errors import StoreError
    from dyncheck.store import RunWriter

    with RunWriter(tmp_path / "run.db") as w:
        w.write({"traj/c0": ([0, 1], [1.0, 2.0]), "traj/c1": ([0, 1], [3.0, 4.0]), "traj/c2": ([0, 1], [5.0, 6.0])})
        w.write_block(["traj/c3"], np.array([0, 2, 2]), np.array([[1.0], [2.0], [3.0]]))  # step 2 twice
    with open_run(tmp_path / "run.db") as run:
        got = run.series_matching("traj/*")
        ref = run.series("traj/c3")
        assert got["traj/c3"].steps.tolist() == ref.steps.tolist() == [0, 2]
        assert got["traj/c3"].values.tolist() == ref.values.tolist() == [1.0, 3.0]  # the last write wins
    con = sqlite3.connect(tmp_path / "run.db")
    con.execute("UPDATE chunks SET n = 3 WHERE metric_id = (SELECT id FROM metrics WHERE name = 'traj/c1')")
    con.commit()
    con.close()
    with open_run(tmp_path / "run.db") as run:
        with pytest.raises(StoreError, match="metric 'traj/c1', chunk .*expected 24"):
            run.series_matching("traj/*")
