"""The finite-difference Hessian-vector product the sharpness probe uses under FSDP2 (FSDP2 has no double
backward), checked at its root in float64. Two CPU processes (gloo) shard a small float64 MLP with ``fully_shard``; every rank

- perturbs its local shards in place (``p.to_local().copy_(w + eps v)``: FSDP2's next all-gather reads them),
- runs the forward and ``loss.backward()`` on its half of the batch together with the other rank (all-gather and
  reduce-scatter are collectives), reading ``p.grad.to_local()``,
- takes inner products as local sums all-reduced (so ``eps`` is the same on both ranks),

and the central difference is compared with the exact ``H v`` of the unsharded model on the whole batch (double
backward, one process). Prints the largest relative error per rank, v'Hv both ways, and whether the weights came
back bit-exactly. Usage: python benchmarks/fsdp_fd_hvp.py [PORT]"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def run(rank: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(1)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    ref, net = build(), build()
    for m in net:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(net, mesh=mesh)
    params = list(net.parameters())
    local = [p.to_local() for p in params]

    # exact H v of the unsharded model on the whole batch (FSDP2 averages the ranks' halves: the same loss)
    torch.manual_seed(2)
    v_full = [torch.randn_like(p) for p in ref.parameters()]
    loss = ((ref(x) - y) ** 2).mean()
    g = torch.autograd.grad(loss, list(ref.parameters()), create_graph=True)
    hv_full = [h.detach() for h in torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v_full)),
                                                       list(ref.parameters()))]

    def mine(t: torch.Tensor) -> torch.Tensor:  # this rank's dim-0 chunk, as fully_shard cuts it
        return t.chunk(2, dim=0)[rank]

    vs = [mine(v) for v in v_full]
    xs, ys = x[rank::2], y[rank::2]

    def gradients() -> list[torch.Tensor]:
        for p in params:
            p.grad = None
        ((net(xs) - ys) ** 2).mean().backward()
        return [p.grad.to_local().clone() for p in params]

    def dot(a, b) -> float:
        t = torch.stack([(u.double() * w.double()).sum() for u, w in zip(a, b)]).sum().detach()
        dist.all_reduce(t)
        return float(t)

    saved = [t.clone() for t in local]
    eps = 1e-4 * dot(saved, saved) ** 0.5 / dot(vs, vs) ** 0.5
    grads = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for t, w, v in zip(local, saved, vs):
                t.copy_(w + sign * eps * v)
        grads.append(gradients())
    with torch.no_grad():
        for t, w in zip(local, saved):
            t.copy_(w)
    fd = [(a - b) / (2 * eps) for a, b in zip(*grads)]
    exact = [mine(h) for h in hv_full]
    err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(fd, exact))
    restored = all(torch.equal(t, w) for t, w in zip(local, saved))
    vhv, vhv_ref = dot(vs, fd), float(sum((a * b).sum() for a, b in zip(v_full, hv_full)))
    print(f"rank {rank}: max relative error of the sharded FD H v {err:.1e}; v'Hv {vhv:.9f} (exact {vhv_ref:.9f}); "
          f"weights restored bit-exactly: {restored}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1] if len(sys.argv) > 1 else "29631",), nprocs=2)
