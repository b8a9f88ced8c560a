"""Run by tests/test_ddp.py: two CPU processes under the DDP strategy (Lightning relaunches this script for
rank 1). Usage: python ddp_script.py OUT_DIR"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytorch_lightning as pl  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.utils.data import DataLoader, Sampler  # noqa: E402

from dyncheck import DynamicsMonitor  # noqa: E402
from models import MLP, close_process_group, loaders  # noqa: E402


class Interleaved(Sampler):
    """Rank r takes samples r, r+2, ... in order (the rank is known only once the process group exists)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(dist.get_rank(), self.n, dist.get_world_size()))

    def __len__(self) -> int:
        return self.n // 2


def main(out: str) -> None:
    pl.seed_everything(3)
    model = MLP(log_acc=False)
    train, val = loaders(n=256, batch_size=16, flat=True)
    train = DataLoader(train.dataset, batch_size=16, sampler=Interleaved(len(train.dataset)))
    val = DataLoader(val.dataset, batch_size=32, sampler=Interleaved(len(val.dataset)))
    # noise_every_n_steps: a 16-step run pays for no noise measurement at the default budget
    mon = DynamicsMonitor(dirpath=os.path.join(out, "run"), every_n_steps=2, sharpness_every_n_steps=3,
                          noise_every_n_steps=8, flush_every_n_steps=5)
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[mon], default_root_dir=out, use_distributed_sampler=False)
    trainer.fit(model, train, val)
    with open(os.path.join(out, f"rank{trainer.global_rank}.done"), "w") as f:
        f.write(str(mon.run_dir))
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
