"""Importing existing logs: each format written by its real writer (TensorBoard's SummaryWriter with
add_histogram, Lightning's CSVLogger through a real Trainer, a real Hugging Face Trainer run writing
trainer_state.json and TensorBoard events), imported, and the values read back equal to the values written.
W&B: no network and no wandb package -- the files are written in the export formats (run.history() rows as JSON
lines and as pandas' CSV, the chart panel's CSV)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dyncheck.cli import main
from dyncheck.errors import ConfigError, SourceError
from dyncheck.importers import (
    UNCONFIRMED,
    detect_format,
    import_log,
    imported,
    load_mapping,
)
from dyncheck.store import open_run


def _series(run_dir, name):
    with open_run(run_dir) as run:
        s = run.series(name)
        return s.steps.tolist(), s.values.tolist()


# -- TensorBoard ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tb_log(tmp_path_factory):
    from torch.utils.tensorboard import SummaryWriter

    d = tmp_path_factory.mktemp("tb") / "logs"
    w = SummaryWriter(str(d))
    g = torch.Generator().manual_seed(0)
    weights = {}
    for step in range(120):
        w.add_scalar("train/loss", 2.0 * math.exp(-step / 40) + 0.1, step)
        w.add_scalar("train/learning_rate", 1e-3 * (1 - step / 120), step)
        if step % 20 == 0:
            wt = torch.randn(8, 4, generator=g)
            gr = torch.randn(8, 4, generator=g) * 1e-3
            weights[step] = (wt, gr)
            w.add_histogram("encoder.0.weight", wt, step)
            w.add_histogram("encoder.0.weight.grad", gr, step)
    w.add_scalar("eval/loss", float("nan"), 119)
    w.close()
    return d, weights


def test_tensorboard_scalars_and_histograms_round_trip(tb_log, tmp_path):
    d, weights = tb_log
    assert detect_format(d) == "tensorboard"
    summary = import_log(d, tmp_path / "run")
    assert summary.status == UNCONFIRMED and summary.format == "tensorboard"
    steps, vals = _series(tmp_path / "run", "loss/train")
    assert steps == list(range(120))
    expected = np.float32([2.0 * math.exp(-s / 40) + 0.1 for s in range(120)]).astype(float)
    assert vals == expected.tolist()  # SummaryWriter stores float32: the same float32 values come back
    assert _series(tmp_path / "run", "lr/pg0")[0] == list(range(120))
    w_steps, w_norms = _series(tmp_path / "run", "weight_norm/encoder.0.weight")
    g_steps, g_norms = _series(tmp_path / "run", "grad_norm/encoder.0.weight")
    assert w_steps == g_steps == sorted(weights)
    for k, s in enumerate(w_steps):
        wt, gr = weights[s]
        assert w_norms[k] == pytest.approx(float(wt.double().norm()), rel=1e-6)
        assert g_norms[k] == pytest.approx(float(gr.double().norm()), rel=1e-6)
    v_steps, v_vals = _series(tmp_path / "run", "loss/val")
    assert v_steps == [119] and math.isnan(v_vals[0])  # a NaN logged is a NaN imported
    with open_run(tmp_path / "run") as run:
        meta = run.meta
    assert meta["status"] == UNCONFIRMED and meta["import"]["series"]["loss/train"] == "train/loss"
    assert meta["started"] <= meta["ended"]


def test_tensorboard_event_file_alone_and_several_runs(tb_log, tmp_path):
    d, _ = tb_log
    (f,) = d.glob("events.out.tfevents.*")
    import_log(f, tmp_path / "one")
    assert len(_series(tmp_path / "one", "loss/train")[0]) == 120
    two = tmp_path / "two"
    for sub in ("version_0", "version_1"):
        (two / sub).mkdir(parents=True)
        (two / sub / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SourceError, match="event files of 2 runs.*give one of these directories"):
        import_log(two, tmp_path / "out")


def test_tensorboard_damaged_and_truncated_files(tb_log, tmp_path):
    (f,) = tb_log[0].glob("events.out.tfevents.*")
    data = f.read_bytes()
    (tmp_path / "bad").mkdir()
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    (tmp_path / "bad" / f.name).write_bytes(bytes(damaged))
    with pytest.raises(SourceError, match=r"the event file is damaged \(.*crc"):
        import_log(tmp_path / "bad", tmp_path / "r1")  # the reader would stop there, silently: refused
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / f.name).write_bytes(data[:-5])
    s = import_log(tmp_path / "cut", tmp_path / "r2")
    assert any("the last record is incomplete" in n for n in s.notes)
    assert len(_series(tmp_path / "r2", "loss/train")[0]) == 120


def test_tensorboard_missing_package_names_the_extra(tb_log, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(SourceError, match=r"pip install 'dyncheck\[tensorboard\]'"):
        import_log(tb_log[0], tmp_path / "run")


# -- Lightning CSVLogger ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lightning_csv(tmp_path_factory):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import CSVLogger
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    dl = DataLoader(TensorDataset(x, y), batch_size=8)
    root = tmp_path_factory.mktemp("pl")
    logger = CSVLogger(str(root), name="csv")
    trainer = pl.Trainer(max_epochs=3, logger=logger, log_every_n_steps=1, callbacks=[LearningRateMonitor()],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         accelerator="cpu", devices=1)
    trainer.fit(Tiny(), dl, dl)
    return Path(logger.log_dir) / "metrics.csv"


def test_lightning_csv_round_trip(lightning_csv, tmp_path):
    assert detect_format(lightning_csv) == "lightning-csv"
    assert detect_format(lightning_csv.parent) == "lightning-csv"
    with open(lightning_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    want = {int(r["step"]): float(r["train_loss"]) for r in rows if r.get("train_loss")}
    want_val = {int(r["step"]): float(r["val_loss"]) for r in rows if r.get("val_loss")}
    summary = import_log(lightning_csv.parent, tmp_path / "run")
    steps, vals = _series(tmp_path / "run", "loss/train")
    assert dict(zip(steps, vals)) == want and len(want) == 24
    v_steps, v_vals = _series(tmp_path / "run", "loss/val")
    assert dict(zip(v_steps, v_vals)) == want_val and len(want_val) == 3
    _, lr_vals = _series(tmp_path / "run", "lr/SGD/pg0")  # LearningRateMonitor's lr-SGD
    assert set(lr_vals) == {0.05}
    assert summary.names["lr/SGD/pg0"] == "lr-SGD" and "logged/epoch" in summary.names
    assert summary.status == UNCONFIRMED


# -- Hugging Face Trainer --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    class DS(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            self.x = torch.randint(0, 32, (n, 8), generator=torch.Generator().manual_seed(seed))

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.x[i]}

    out = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    args = TrainingArguments(output_dir=str(out), max_steps=20, logging_steps=2, eval_strategy="steps",
                             eval_steps=10, per_device_train_batch_size=4, report_to=["tensorboard"],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3, seed=0,
                             dataloader_num_workers=0)
    # the TensorBoard callback's directory (TrainingArguments(logging_dir=) in transformers < 5)
    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tb")
    try:
        trainer = Trainer(model=model, args=args, train_dataset=DS(64, 0), eval_dataset=DS(16, 1))
        trainer.train()
    finally:
        if old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR")
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old
    trainer.save_state()
    return out, trainer.state.log_history


def test_hf_trainer_state_round_trip(hf_run, tmp_path):
    out, history = hf_run
    assert detect_format(out / "trainer_state.json") == "hf-trainer-state"
    summary = import_log(out / "trainer_state.json", tmp_path / "run")
    assert summary.status == "finished" and "train_runtime" in summary.status_reason
    train = [h for h in history if "loss" in h]
    for name, key in (("loss/train", "loss"), ("grad_norm/total", "grad_norm"), ("lr/pg0", "learning_rate")):
        steps, vals = _series(tmp_path / "run", name)
        assert steps == [h["step"] for h in train] and vals == [float(h[key]) for h in train], name
    steps, vals = _series(tmp_path / "run", "loss/val")
    ev = [h for h in history if "eval_loss" in h]
    assert steps == [10, 20] and vals == [h["eval_loss"] for h in ev]
    with open_run(tmp_path / "run") as run:
        meta = run.meta
        assert "train_loss" in meta["train_summary"] and meta["trainer"]["max_steps"] == 20
        assert "logged/train_loss" not in run.metrics()  # the run's mean loss is not a point of a series


def test_hf_tensorboard_events_import(hf_run, tmp_path):
    out, history = hf_run
    summary = import_log(out / "tb", tmp_path / "run")
    steps, vals = _series(tmp_path / "run", "loss/train")
    train = [h for h in history if "loss" in h]
    assert steps == [h["step"] for h in train]
    assert vals == pytest.approx([h["loss"] for h in train], rel=1e-6)  # float32 in the event file
    assert {"lr/pg0", "grad_norm/total", "loss/val"} <= set(summary.names)


def test_hf_checkpoint_state_is_unconfirmed(tmp_path):
    state = {"global_step": 10, "max_steps": 100, "log_history": [{"loss": 1.0, "step": 5}, {"loss": 0.9, "step": 10}]}
    p = tmp_path / "trainer_state.json"
    p.write_text(json.dumps(state))
    s = import_log(p, tmp_path / "run")
    assert s.status == UNCONFIRMED and "global_step 10 of max_steps 100" in s.status_reason
    assert import_log(p, tmp_path / "run2", finished=True).status == "finished"
    state["global_step"] = 100
    p.write_text(json.dumps(state))
    assert import_log(p, tmp_path / "run3").status == "finished"


# -- W&B exports -----------------------------------------------------------------------------------------------------
WANDB_ROWS = [{"_step": i, "_runtime": 0.5 * i, "_timestamp": 1.7e9 + 0.5 * i, "train/loss": 2.0 / (i + 1),
               "train/learning_rate": 1e-4, "train/global_step": 10 * i, "train/epoch": i / 10}
              for i in range(30)]
WANDB_ROWS[5]["samples"] = {"_type": "image-file", "path": "media/images/a.png", "width": 8, "height": 8}
WANDB_ROWS[29]["eval/loss"] = 0.5


def test_wandb_jsonl_round_trip(tmp_path):
    p = tmp_path / "history.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in WANDB_ROWS))
    s = import_log(p, tmp_path / "run")
    steps, vals = _series(tmp_path / "run", "loss/train")
    assert steps == [10 * i for i in range(30)]  # HF's WandbCallback step: train/global_step
    assert vals == [r["train/loss"] for r in WANDB_ROWS]
    assert _series(tmp_path / "run", "loss/val") == ([290], [0.5])
    assert any("samples (1)" in n for n in s.notes)  # media left out, with a note


def test_wandb_history_csv_round_trip(tmp_path):
    p = tmp_path / "history.csv"
    keys = ["_step", "_runtime", "_timestamp", "train/loss", "train/learning_rate", "train/global_step", "samples"]
    with open(p, "w", newline="") as f:  # pandas' DataFrame.to_csv(): the index first, under an empty header
        w = csv.writer(f)
        w.writerow(["", *keys])
        for i, r in enumerate(WANDB_ROWS):
            w.writerow([i, *(repr(r[k]) if k == "samples" and k in r else r.get(k, "") for k in keys)])
    assert detect_format(p) == "wandb-csv"
    import_log(p, tmp_path / "run")
    steps, vals = _series(tmp_path / "run", "loss/train")
    assert steps == [10 * i for i in range(30)] and vals == [r["train/loss"] for r in WANDB_ROWS]


def test_wandb_chart_csv(tmp_path):
    p = tmp_path / "chart.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Step", "fancy-run-7 - train/loss", "fancy-run-7 - train/loss__MIN",
                    "fancy-run-7 - train/loss__MAX"])
        for i in range(20):
            w.writerow([i, 1.0 / (i + 1), 0.9 / (i + 1), 1.1 / (i + 1)])
    assert detect_format(p) == "wandb-chart-csv"
    import_log(p, tmp_path / "run")
    assert _series(tmp_path / "run", "loss/train") == (list(range(20)), [1.0 / (i + 1) for i in range(20)])


# -- mapping, duplicates, errors -------------------------------------------------------------------------------------
def test_mapping_file(tmp_path):
    m = tmp_path / "map.yaml"
    m.write_text("metrics:\n  objective: loss/train\n  'opt/lr_g*': 'lr/AdamW/pg{1}'\nignore: [noise]\n"
                 "step: it\n")
    p = tmp_path / "log.csv"
    p.write_text("it,objective,opt/lr_g0,opt/lr_g1,noise,loss\n0,1.0,0.1,0.01,5,3\n1,0.5,0.1,0.01,5,3\n")
    s = import_log(p, tmp_path / "run", mapping=m)
    assert s.names["loss/train"] == "objective" and s.names["lr/AdamW/pg1"] == "opt/lr_g1"
    assert "logged/noise" not in s.names
    assert s.names["logged/loss"] == "loss"  # 'loss' would map to loss/train too: objective took it first
    assert any("also maps to loss/train" in n for n in s.notes)


@pytest.mark.parametrize("text, expected", [
    ("metric:\n  a: loss/train\n", r"map.yaml:1:1: unknown key 'metric'; expected one of: metrics, histograms"),
    ("metrics:\n  a: losses/train\n", r"map.yaml:2:6: 'metrics.a': target 'losses/train' is not a dyncheck"),
    ("metrics:\n  a: 3\n", r"map.yaml:2:6: 'a': expected a string, got an integer 3"),
    ("metrics:\n  a*: lr/x/pg{2}\n", r"map.yaml:2:7: .*\{2\} in the target refers to a \* the source 'a\*' does"),
    ("histograms:\n  a: loss/train\n", r"map.yaml:2:6: .*expected grad_norm/<param>"),
    ("defaults: maybe\n", r"map.yaml:1:11: 'defaults': expected true or false"),
    ("metrics:\n  a: loss/train\n  a: loss/val\n", r"map.yaml:3:3: duplicate key 'a'"),
    ("metrics: [\n", r"map.yaml:2:1: not valid YAML"),
])
def test_mapping_file_errors(tmp_path, text, expected):
    m = tmp_path / "map.yaml"
    m.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_mapping(m)


def test_duplicate_and_unordered_steps_are_noted(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("step,train_loss\n0,1.0\n2,0.8\n1,0.9\n2,0.7\n")
    s = import_log(p, tmp_path / "run")
    assert _series(tmp_path / "run", "loss/train") == ([0, 1, 2], [1.0, 0.9, 0.7])
    assert any("1 step logged again with a different value" in n for n in s.notes)


@pytest.mark.parametrize("name, text, expected", [
    ("metrics.csv", "step,train_loss\n0,1.0\nx,2\n", r"metrics.csv:3: column 'step': step 'x' is not a number"),
    ("metrics.csv", "step,train_loss\n0,abc\n", r"metrics.csv:2: column 'train_loss': 'abc' is not a number"),
    ("metrics.csv", "step,train_loss\n0,1.0,3\n", r"metrics.csv:2: 3 fields, but the header has 2"),
    ("metrics.csv", "epoch,train_loss\n0,1.0\n", r"metrics.csv:1: no 'step' column"),
    ("metrics.csv", "step,a,a\n0,1,1\n", r"metrics.csv:1: column 'a' appears more than once"),
    ("metrics.csv", "step,train_loss\n-1,1.0\n", r"step -1 is out of range"),
    ("metrics.csv", "", r"metrics.csv is empty"),
    ("trainer_state.json", '{"log_history": [{"loss": 1.0}]}', r"log_history\[0\] has no 'step'"),
    ("trainer_state.json", '{"log_history": [{"loss": "high", "step": 1}]}',
     r"log_history\[0\].loss is a string 'high'; expected a number"),
    ("trainer_state.json", '{"log_history": [', r"trainer_state.json:1:\d+: not valid JSON"),
    ("trainer_state.json", '[1, 2]', r"not a Hugging Face trainer_state.json"),
    ("h.jsonl", '{"_step": 0, "loss": 1}\n[1]\n', r"h.jsonl:2: a JSON a list; expected an object"),
    ("h.jsonl", '{"_step": 0.5, "loss": 1}\n', r"h.jsonl:1: '_step': step 0.5 is not a whole number"),
    ("notes.txt", "hello", r"cannot tell the format of .*notes.txt"),
])
def test_bad_logs_are_clear_errors(tmp_path, name, text, expected):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(SourceError, match=expected):
        import_log(p, tmp_path / "run")
    assert not (tmp_path / "run" / "run.db").exists()


def test_truncated_last_line_is_left_out_with_a_note(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_text('{"_step": 0, "train/loss": 1}\n{"_step": 1, "train/loss": 0.5}\n{"_step": 2, "train/lo')
    s = import_log(p, tmp_path / "run")
    assert _series(tmp_path / "run", "loss/train") == ([0, 1], [1.0, 0.5])
    assert any("last line is incomplete" in n for n in s.notes)
    c = tmp_path / "metrics.csv"
    c.write_text("step,train_loss,val_loss\n0,1.0,\n1,0.5,0.7\n2,0.4")
    s = import_log(c, tmp_path / "run2")
    assert _series(tmp_path / "run2", "loss/train") == ([0, 1], [1.0, 0.5])
    assert any("last row is incomplete" in n for n in s.notes)


def test_existing_run_is_not_replaced_without_force(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("step,train_loss\n0,1.0\n1,0.5\n")
    import_log(p, tmp_path / "run")
    with pytest.raises(SourceError, match="exists already.*--force"):
        import_log(p, tmp_path / "run")
    import_log(p, tmp_path / "run", overwrite=True)
    assert sorted(os.listdir(tmp_path / "run")) == ["run.db"]  # no temporary file left behind


def test_imported_context_removes_its_directory(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("step,train_loss\n0,1.0\n1,0.5\n")
    with imported(p) as (run, summary):
        where = run.dir
        assert summary.status == UNCONFIRMED
        assert run.series("loss/train").values.tolist() == [1.0, 0.5]
    assert not where.exists()


# -- the CLI ---------------------------------------------------------------------------------------------------------
def test_cli_import_check_report_compare(hf_run, lightning_csv, tmp_path, capsys):
    out, _ = hf_run
    state = out / "trainer_state.json"
    assert main(["import", str(state), "-o", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"loss/train +<- loss\n", printed) and "status finished" in printed
    assert main(["import", str(state), "-o", str(tmp_path / "run")]) == 2
    assert "exists already" in capsys.readouterr().err
    # check SOURCE directly: a finished HF run is judged; absent metrics are skipped with the reason
    code = main(["check", str(state), "--format", "json"])
    res = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and res["run_status"] == "finished"
    reasons = {s["check"]: s["reason"] for s in res["skipped"]}
    assert reasons["dead-units"] == ("no recorded metric matches act/dead/*: the imported log (hf-trainer-state) has "
                                     "no such series (a mapping file can map one of its names onto it)")
    # a Lightning CSV log does not say it finished: not judged (3) unless --finished or --allow-unfinished
    assert main(["check", str(lightning_csv)]) == 3
    err = capsys.readouterr().err
    assert "unconfirmed" in err and "--finished says it did" in err
    assert main(["check", str(lightning_csv), "--finished", "--fail-on", "never"]) == 0
    capsys.readouterr()
    report = tmp_path / "r.html"
    assert main(["report", str(state), "-o", str(report)]) == 0
    assert report.stat().st_size > 10_000
    capsys.readouterr()
    assert main(["baseline", str(tmp_path / "run"), "-o", str(tmp_path / "base.yaml")]) == 0
    capsys.readouterr()
    assert main(["compare", str(state), "--baseline", str(tmp_path / "base.yaml")]) == 0
    assert main(["check", str(tmp_path / "run"), "--finished"]) == 2
    assert "--finished applies to a log to import" in capsys.readouterr().err


def test_readme_examples_run_as_shown(tb_log, lightning_csv, hf_run, tmp_path, monkeypatch, capsys):
    """The section "Checking runs you already have": every command of its bash block gives the exit code its
    comment says (0 where none is said), its Python block runs, its mapping file loads and maps the loop's CSV,
    and its default-mapping table lists every default."""
    import shlex
    import shutil

    from dyncheck.importers import DEFAULT_HISTOGRAMS, DEFAULT_SCALARS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Checking runs you already have"):]
    section = section[:section.index("\n## ", 5)]
    bash = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    mapping = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)
    shutil.copytree(tb_log[0], tmp_path / "runs" / "tb")
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    shutil.copy(lightning_csv, tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    (tmp_path / "hf-out").mkdir()
    shutil.copy(hf_run[0] / "trainer_state.json", tmp_path / "hf-out" / "trainer_state.json")
    (tmp_path / "wandb-history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in WANDB_ROWS))
    keys = ["_step", "_runtime", "_timestamp", "train/loss", "train/global_step"]
    (tmp_path / "wandb-history.csv").write_text(",".join(["", *keys]) + "\n" + "".join(
        ",".join(str(x) for x in [i, *(r[k] for k in keys)]) + "\n" for i, r in enumerate(WANDB_ROWS)))
    (tmp_path / "mapping.yaml").write_text(mapping)
    (tmp_path / "my-loop.csv").write_text("iteration,objective,lr_group0,val/acc,wall_time\n" + "".join(
        f"{i},{1.0 / (i + 1)},0.001,{i / 100},{i * 0.1}\n" for i in range(100)))
    monkeypatch.chdir(tmp_path)
    commands = [ln for ln in bash.splitlines() if ln.startswith("dyncheck ")]
    assert len(commands) >= 10
    for line in commands:
        cmd, _, comment = line.partition("#")
        m = re.search(r"exit (\d)", comment)
        code = main(shlex.split(cmd)[1:])
        out = capsys.readouterr()
        assert code == (int(m.group(1)) if m else 0), f"{line}\n{out.out}\n{out.err}"
    with open_run("imported/loop") as run:
        assert run.meta["status"] == "finished"
        assert {"loss/train", "lr/AdamW/pg0", "logged/val/acc"} <= set(run.metrics())
        assert "logged/wall_time" not in run.metrics()
    assert Path("tb-report.html").stat().st_size > 10_000
    exec(compile(python, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    assert "loss/train" in capsys.readouterr().out
    table = section[section.index("| source names | dyncheck name |"):]
    for source, _ in DEFAULT_SCALARS + DEFAULT_HISTOGRAMS:
        shown = source.replace("lr-*/pg*", "lr-<Optimizer>/pg<j>").replace("lr-*", "lr-<Optimizer>")
        shown = shown.replace("grad_2.0_norm/*", "grad_2.0_norm/<param>").replace("*", "<p>")
        assert f"`{shown}`" in table or source == "*", source


def test_evaluate_on_an_imported_run_says_the_log_lacks_a_series(tmp_path):
    """The engine itself (Python API, check, report and compare alike) words a missing metric of an imported run
    as the log's, not as a monitor option never set."""
    from dyncheck.checks import evaluate
    from dyncheck.importers import import_log

    log = tmp_path / "metrics.csv"
    log.write_text("step,train_loss\n" + "".join(f"{i},{2.0 / (1 + i)}\n" for i in range(60)))
    import_log(log, tmp_path / "run", finished=True)
    reasons = {s.check: s.reason for s in evaluate(tmp_path / "run", "default").skipped}
    assert reasons["dead-units"].startswith("no recorded metric matches act/dead/*: the imported log (")
    assert "has no such series" in reasons["dead-units"] and "activations_every_n_steps" not in reasons["dead-units"]
