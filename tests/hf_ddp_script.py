"""Run by tests/test_adapters_hf.py: one rank of a two-process Hugging Face Trainer run on CPU (DDP through the
Trainer's accelerate backend, gloo). The environment carries RANK/WORLD_SIZE/MASTER_*; usage:
python hf_ddp_script.py OUT_DIR. Each rank writes rank<r>.json: its own loss per step (the model's output) and the
per-parameter norms of the final (all-reduced) gradients, the references the test compares the store with."""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import transformers  # noqa: E402

from dyncheck.adapters.hf import DynamicsMonitorCallback  # noqa: E402
from models import close_process_group  # noqa: E402


class Reference(transformers.TrainerCallback):
    def __init__(self):
        self.loss, self.grad, self.step = {}, {}, 0

    def on_train_begin(self, args, state, control, model=None, **kw):
        model.register_forward_hook(self._forward)

    def _forward(self, module, args, out):  # returns None: the output is left alone
        if module.training and torch.is_grad_enabled():
            self.loss[self.step] = float(out.loss)  # the last forward of the step: after a sharpness probe

    def on_step_begin(self, args, state, control, **kw):
        self.step = state.global_step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.grad[state.global_step] = {n: p.grad.double().norm().item() for n, p in model.named_parameters()
                                        if p.grad is not None}


def main(out: str) -> None:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 64, (64, 16), generator=g)]
    args = transformers.TrainingArguments(output_dir=os.path.join(out, "out"), max_steps=12, use_cpu=True,
                                          ddp_backend="gloo", per_device_train_batch_size=4, logging_steps=4,
                                          save_strategy="no", report_to=[], seed=0, disable_tqdm=True)
    ref = Reference()
    cb = DynamicsMonitorCallback(dirpath=os.path.join(out, "run"), every_n_steps=3, sharpness_every_n_steps=4,
                                 report=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[ref, cb])
    trainer.train()
    rank = int(os.environ["RANK"])
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"loss": ref.loss, "grad": ref.grad, "log": trainer.state.log_history}, f)
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # leave without the interpreter's teardown: the DDP Reducer freed there destroys the gloo process group, whose
    # destructor joins its worker thread while holding the GIL -- and that thread, finishing the barrier's work,
    # waits for the GIL to free the work's tensors (a deadlock in torch, about one exit in five on 2 cores)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
