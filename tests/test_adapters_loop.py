"""The plain-loop API (``dyncheck.watch``) through real training loops, against brute-force references."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dyncheck
from dyncheck import ConfigError, open_run


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)


def _probe_loss(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def _train(model, opt, steps, mon=None, *, order="after", accumulate=1, ref=None, val_every=0, clip=None):
    """A plain loop; ``mon.step(loss)`` after (``order="after"``) or before the optimizer step. ``ref`` collects
    per step the losses, the gradient norms at the step and the weights before and after it."""
    x, y = _data()
    torch.manual_seed(2)
    for step in range(steps):
        losses = []
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for k in range(accumulate):
            i = ((step * accumulate + k) * 16) % 64
            loss = nn.functional.mse_loss(model(x[i:i + 16]), y[i:i + 16])
            (loss / accumulate).backward()
            losses.append(loss.item())
            last = k == accumulate - 1
            if mon is not None and (order == "before" or not last):
                mon.step(loss)
            if last:
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                if ref is not None:
                    ref.setdefault("grad", {})[step] = {n: p.grad.double().norm().item()
                                                        for n, p in model.named_parameters()}
                opt.step()
                opt.zero_grad()
                if mon is not None and order == "after":
                    mon.step(loss)
        if ref is not None:
            ref.setdefault("loss", {})[step] = float(np.mean(losses))
            ref.setdefault("ratio", {})[step] = {
                n: ((p.detach() - before[n]).double().norm() / before[n].double().norm()).item()
                for n, p in model.named_parameters()}
        if val_every and (step + 1) % val_every == 0:
            model.eval()
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x), y)
            model.train()
            if mon is not None:
                mon.log_val(val)
                if ref is not None:
                    ref.setdefault("val", {})[step + 1] = val.item()


def _watch(tmp_path, model, opt, **kw):
    x, y = _data()
    kw.setdefault("every_n_steps", 3)
    kw.setdefault("report", False)
    kw.setdefault("sharpness_every_n_steps", 5)
    return dyncheck.watch(model, opt, dirpath=tmp_path / "run", total_steps=kw.pop("total_steps", 30),
                          probe_batch=(x[:16], y[:16]), sharpness_loss_fn=_probe_loss, **kw)


@pytest.mark.parametrize("order", ["after", "before"])
def test_records_against_brute_force(tmp_path, order):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ref = {}
    with _watch(tmp_path, model, opt) as mon:
        _train(model, opt, 30, mon, order=order, ref=ref, val_every=10, clip=1.0)
    assert mon.global_step == 30
    with open_run(tmp_path / "run") as run:
        assert run.meta["status"] == "finished" and run.meta["measurement_errors"] == []
        assert run.meta["trainer"]["framework"] == "plain loop"
        loss = run.series("loss/train")
        assert list(loss.steps) == list(range(30))
        np.testing.assert_allclose(loss.values, [ref["loss"][s] for s in range(30)], rtol=1e-6)
        total = run.series("grad_norm/total")
        for step in (0, 7, 29):  # after the loop's own clipping, before the step
            want = math.sqrt(sum(v ** 2 for v in ref["grad"][step].values()))
            assert total.values[list(total.steps).index(step)] == pytest.approx(want, rel=1e-5)
        for name in ("0.weight", "3.bias"):
            s = run.series(f"grad_norm/{name}")
            assert list(s.steps) == list(range(0, 30, 3))
            np.testing.assert_allclose(s.values, [ref["grad"][t][name] for t in s.steps], rtol=1e-5)
            r = run.series(f"update_ratio/{name}")
            np.testing.assert_allclose(r.values, [ref["ratio"][t][name] for t in r.steps], rtol=1e-4)
        assert list(run.series("act/dead/1").steps) == list(range(0, 30, 3))
        assert list(run.series("sharpness/top_eig").steps) == [0, 5, 10, 15, 20, 25]
        val = run.series("loss/val")
        assert list(val.steps) == [10, 20, 30]
        np.testing.assert_allclose(val.values, [ref["val"][s] for s in (10, 20, 30)], rtol=1e-6)
        assert run.series("lr/SGD/pg0").values[0] == pytest.approx(0.05)


def test_gradient_accumulation_averages_the_step_losses(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ref = {}
    with _watch(tmp_path, model, opt) as mon:
        _train(model, opt, 8, mon, accumulate=2, ref=ref)
    with open_run(tmp_path / "run") as run:
        loss = run.series("loss/train")
        assert list(loss.steps) == list(range(8))
        np.testing.assert_allclose(loss.values, [ref["loss"][s] for s in range(8)], rtol=1e-6)


def test_training_is_bit_identical_with_and_without(tmp_path):
    """Dropout, momentum, sharpness probes and activation hooks: the same final parameters, bit for bit."""
    plain = _model()
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9)
    _train(plain, opt, 20)
    watched = _model()
    opt = torch.optim.SGD(watched.parameters(), lr=0.05, momentum=0.9)
    with _watch(tmp_path, watched, opt, every_n_steps=1, total_steps=20) as mon:
        _train(watched, opt, 20, mon)
    with open_run(tmp_path / "run") as run:
        assert len(run.series("sharpness/top_eig").steps) == 4
    for (n, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("exc, status", [(RuntimeError("boom"), "crashed"), (KeyboardInterrupt(), "interrupted")])
def test_status_on_exceptions(tmp_path, exc, status):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(type(exc)):
        with _watch(tmp_path, model, opt) as mon:
            _train(model, opt, 4, mon)
            raise exc
    with open_run(tmp_path / "run") as run:
        assert run.meta["status"] == status
        assert run.meta["exception"]["type"] == type(exc).__name__
        assert list(run.series("loss/train").steps) == [0, 1, 2, 3]


def test_misuse_warns_once(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _watch(tmp_path, model, opt) as mon:
            for _ in range(3):  # zero_grad before step: no gradients at optimizer.step()
                nn.functional.mse_loss(model(x), y).backward()
                opt.zero_grad()
                opt.step()
                mon.step(None)
            for _ in range(3):  # mon.step never called
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                opt.zero_grad()
    messages = [str(w.message) for w in caught if "dyncheck" in str(w.message)]
    assert sum("found no gradients" in m for m in messages) == 1, messages
    assert sum("not followed by mon.step(loss)" in m for m in messages) == 1, messages
    with open_run(tmp_path / "run") as run:
        assert run.meta["status"] == "finished"
        assert list(run.series("grad_norm/total").steps) == [3, 4, 5]


def test_stop_on_sets_should_stop(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e6)  # diverges: the loss goes non-finite
    with _watch(tmp_path, model, opt, stop_on="error", flush_every_n_steps=5, sharpness_every_n_steps=0) as mon:
        x, y = _data()
        for step in range(200):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
            if mon.should_stop:
                break
    assert mon.should_stop and step < 199 and mon.stopped_by is not None
    with open_run(tmp_path / "run") as run:
        assert run.meta["stopped_by"]["severity"] == "error"


@pytest.mark.parametrize("kwargs, match", [
    ({"every_n_step": 5}, r"watch\(\) got an unexpected keyword argument 'every_n_step'; did you mean 'every_n_steps'"),
    ({"every_n_steps": 0}, r"watch\(every_n_steps=0\): expected an int >= 1"),
    ({"total_steps": -1}, r"watch\(total_steps=-1\): expected an int >= 1"),
    ({"probe_batch": 1}, r"sharpness needs both probe_batch and sharpness_loss_fn"),
    ({"stop_on": "fatal"}, r"watch\(stop_on='fatal'\)"),
    ({"val_loss_key": "v"}, r"unexpected keyword argument 'val_loss_key'"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    model = _model()
    with pytest.raises(ConfigError, match=match):
        dyncheck.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), dirpath=tmp_path, **kwargs)


def test_bad_model_and_optimizer(tmp_path):
    model = _model()
    with pytest.raises(ConfigError, match=r"watch\(optimizer="):
        dyncheck.watch(model, "sgd", dirpath=tmp_path)
    with pytest.raises(ConfigError, match=r"watch\(model="):
        dyncheck.watch(object(), torch.optim.SGD(model.parameters(), lr=0.1), dirpath=tmp_path)


def test_readme_plain_loop_example(tmp_path, monkeypatch):
    """The README section "Plain PyTorch loop" runs as shown."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Plain PyTorch loop"):]
    section = section[:section.index("\n### ", 5)]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    with open_run(tmp_path / "runs" / "loop") as run:
        assert run.meta["status"] == "finished"
        assert {"loss/train", "loss/val", "grad_norm/total", "sharpness/top_eig"} <= set(run.metrics())
    assert (tmp_path / "runs" / "loop" / "report.html").exists()
