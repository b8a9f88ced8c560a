"""Run by tests/test_fsdp.py: two CPU processes under Lightning's ModelParallelStrategy with FSDP2's
``fully_shard`` applied in ``configure_model`` (parameters and gradients are DTensors sharded along dim 0; Lightning
relaunches this script for rank 1). Usage: python fsdp_script.py OUT_DIR

After the fit each rank also measures a few DTensors directly (sharded, replicated, partial) and writes its shares
to ``OUT_DIR/shares<rank>.json`` for the test to add up."""

import json
import os
import sys
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.strategies import ModelParallelStrategy  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ddp_script import Interleaved  # noqa: E402  (rank r takes samples r, r+2, ...)
from dyncheck import DynamicsMonitor  # noqa: E402
from models import MLP, close_process_group, loaders  # noqa: E402

#: hidden width: odd, so that the first layers' shards are uneven (17 and 16 rows)
HIDDEN = 33


class Offset(nn.Module):
    """Adds ``shift[2:]`` to the first two logits: under FSDP2 (dim-0 shards of 2) rank 0's half of ``shift`` never
    changes while rank 1's does, so ``weight_unchanged`` must be the minimum over the shards and update ratios the
    ratio of the reduced norms (rank 0's own would be 0/0). ``unused`` takes no part: unchanged on every rank."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(4))
        self.unused = nn.Parameter(torch.ones(4))

    def forward(self, logits):
        return logits + nn.functional.pad(self.shift[2:], (0, logits.shape[1] - 2))


class OffsetMLP(MLP):
    """The reference model (single process): the digits MLP with an :class:`Offset` head."""

    def __init__(self) -> None:
        super().__init__(hidden=HIDDEN, log_acc=False)
        self.offset = Offset()

    def forward(self, x):
        return self.offset(self.net(x.reshape(len(x), -1)))


class ShardedMLP(OffsetMLP):
    """The same model, each Linear, the head and the whole net sharded by FSDP2 over the data-parallel mesh."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.offset, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


def shares(out: str, rank: int) -> None:
    """Each rank's shares of the norms and non-finite counts of DTensors of every placement."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    from dyncheck.measure.tensors import NormPlan, nonfinite_counts, replicas

    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)  # the same full tensor on both ranks
    full = torch.randn(5, 3)
    full[4, 1] = float("nan")
    sharded = distribute_tensor(full, mesh, [Shard(0)])  # rows 0-2 | 3-4
    replicated = distribute_tensor(full, mesh, [Replicate()])
    plain = full.clone()
    partial = DTensor.from_local(full / 2, mesh, [Partial()])  # values pending a sum over the ranks
    ts = [sharded, replicated, plain]
    plan, norms, failures = NormPlan.probe(ts + [partial], shares=True)
    result = {
        "nan_norms": norms.tolist(),  # NaN: the tensor holds a NaN
        "finite_norms": NormPlan(ts, shares=True)([t.nan_to_num(0.0) for t in ts]).tolist(),
        "counts": nonfinite_counts(ts, shares=True).tolist(),
        "replicas": [replicas(t) for t in ts],
        "partial_left_out": [i for i, _ in failures],
        "kept": list(plan.kept) if plan.kept is not None else None,
        "local_rows": sharded.to_local().shape[0],
    }
    with open(os.path.join(out, f"shares{rank}.json"), "w") as f:
        json.dump(result, f)


def main(out: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(3)
    model = ShardedMLP()
    train, val = loaders(n=128, batch_size=16, flat=True)
    train = DataLoader(train.dataset, batch_size=16, sampler=Interleaved(len(train.dataset)))
    val = DataLoader(val.dataset, batch_size=32, sampler=Interleaved(len(val.dataset)))
    # sharpness on a fixed schedule: both processes probe together at steps 0, 3, 6 (finite differences over the
    # shards, no hang)
    mon = DynamicsMonitor(dirpath=os.path.join(out, "run"), every_n_steps=2, sharpness_every_n_steps=3,
                          flush_every_n_steps=3)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=60))
    trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=2, max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[mon], default_root_dir=out, use_distributed_sampler=False)
    trainer.fit(model, train, val)
    rank = trainer.global_rank
    shares(out, rank)
    with open(os.path.join(out, f"rank{rank}.done"), "w") as f:
        f.write(type(next(model.parameters())).__name__)
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
