"""Real model code for the sharpness probe's execution contexts: a tiny random-init HF GPT-2 (fused CPU attention,
gradient checkpointing both ways) fed HF ``BatchEncoding`` batches, an ``nn.TransformerEncoder``, a model for
``torch.compile``; Lightning modules around them; and the exact eager float32 reference of their top Hessian
eigenvalue."""

from __future__ import annotations

import copy
import os

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from dyncheck.measure.sharpness import hvp_operator, lanczos_top_eig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB, SEQ = 64, 16


def gpt2(checkpointing: str | None = None) -> nn.Module:
    """GPT-2 without dropout: the fused CPU attention kernel (no double backward). ``checkpointing``:
    ``"reentrant"``, ``"non-reentrant"`` or None."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ, attn_pdrop=0,
                                  resid_pdrop=0, embd_pdrop=0)
    model = transformers.GPT2LMHeadModel(cfg)
    if checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"})
    return model


def token_loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    """Batches of token ids as HF ``BatchEncoding`` (what a tokenizer and HF data collators give)."""
    from transformers import BatchEncoding

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    return DataLoader(list(ids), batch_size=batch_size,
                      collate_fn=lambda rows: BatchEncoding({"input_ids": torch.stack(rows)}))


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Attribute access: a batch turned into a plain dict raises AttributeError here."""
    return model(input_ids=batch.input_ids, labels=batch.input_ids).loss


class Encoder(nn.Module):
    """nn.TransformerEncoder (dropout 0: the fused attention kernel) with a regression head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                                                    activation="gelu"), 2,
                                         enable_nested_tensor=False)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.enc(x)).squeeze(-1)


def mlp() -> nn.Module:
    """A small per-token MLP (compiles in seconds on CPU)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1), nn.Flatten(-2))


def seq_loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(n, 8, 16, generator=g), torch.randn(n, 8, generator=g)
    return DataLoader(list(zip(x, y)), batch_size=batch_size)


def mse_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


class Lit(pl.LightningModule):
    """A Lightning module training ``model`` with ``loss(model, batch)`` by SGD; ``compiled``: the model is
    ``torch.compile``-d inside the module."""

    def __init__(self, model: nn.Module, loss, lr: float = 0.05, compiled: bool = False) -> None:
        super().__init__()
        self.model = model
        self.net = torch.compile(model) if compiled else model
        self.loss, self.lr = loss, lr
        self.autocast: list[bool] = []  # per training_step call (the training's and the probes'): CPU autocast on

    def training_step(self, batch, batch_idx):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.loss(self.net, batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Weights(pl.Callback):
    """The weights at the start of the given steps (before the monitor's probe: put it first)."""

    def __init__(self, steps) -> None:
        self.steps, self.at = set(steps), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step in self.steps and step not in self.at:
            self.at[step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def reference_top_eig(model: nn.Module, state: dict, loss, batch, *, autocast: torch.dtype | None = None) -> float:
    """The exact top eigenvalue at ``state``: eager (no checkpointing, no compile), math attention, double
    backward in float32 (or the forward under CPU autocast to ``autocast``), Lanczos to convergence."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ref = copy.deepcopy(model)
    for attr in ("forward", "_original_forward"):  # accelerate's autocast-wrapped forward (HF Trainer, bf16)
        vars(ref).pop(attr, None)
    if getattr(ref, "is_gradient_checkpointing", False):
        ref.gradient_checkpointing_disable()
    ref.load_state_dict(state)
    ref.train()
    params = [p for p in ref.parameters() if p.requires_grad]
    with sdpa_kernel(SDPBackend.MATH):
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss_value = loss(ref, batch)  # the forward under autocast, its derivatives outside (as in training)
        matvec, n = hvp_operator(loss_value, params)
        return lanczos_top_eig(matvec, n, max_iter=60, tol=1e-7,
                               generator=torch.Generator().manual_seed(0)).value
