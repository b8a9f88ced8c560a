"""A memory-bounded sketch of the weight trajectory, and its PCA (the path of training in a few directions).

The sketch is a fixed random subset of D coordinates of the trainable parameter vector (default 1024), drawn once
with its own seeded ``torch.Generator`` uniformly over all P coordinates -- so tensors get coordinates in
proportion to their size -- and gathered by one ``index_select`` per tensor into a preallocated buffer on the device
(no host synchronisation). Why a subset and not a sparse random projection (Achlioptas 2003; Li et al. 2006): the
subset costs O(D) per snapshot whatever the model's size, and a projection O(P s) (s nonzeros per column) -- a
full pass over the weights, whose per-step cost grows with the model. A subset keeps the PCA's shape when the
motion is spread over many coordinates (as it is in training: every weight moves); its weakness is motion confined
to a few coordinates (one small tensor), which a projection would still see. For D >= P the sketch is the whole
vector (the PCA is then exact).

PCA at report time (:func:`pca`): centre the snapshots over time, SVD; the explained-variance ratio of each
component and the path in the first three. Caveat (Antognini & Sohl-Dickstein 2018, "PCA of high dimensional
random walks with comparison to neural network training"): a random walk's PCA also puts most variance in the first
components and draws smooth Lissajous-like curves, so a curved path in 2-3 components is not by itself evidence of
structure; the explained variance says how much of the motion the picture shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["PCAResult", "Sketch", "pca", "principal_angles", "read_sketch"]

#: the seed of the coordinate draw (the sketch's own generator: the training's random streams are not touched)
SEED = 0x5EED


#: up to this many values the draw is a permutation of all of them (exact, and cheap at this size); above it,
#: rejection sampling, whose time and memory grow with ``dim`` only (a permutation of 8.5M values took 0.25 s and
#: 68 MB, of a 7B model's it would take 56 GB)
PERMUTE_MAX = 1 << 16


def _draw(total: int, dim: int, gen: torch.Generator) -> Tensor:
    """``min(dim, total)`` distinct indices in ``[0, total)``, sorted, every subset of that size equally likely."""
    if dim >= total:
        return torch.arange(total)
    if total <= PERMUTE_MAX or 2 * dim >= total:
        return torch.randperm(total, generator=gen)[:dim].sort().values
    # draws with replacement, a repeat rejected: uniform over the subsets (few repeats while dim << total)
    seen: set[int] = set()
    while len(seen) < dim:
        need = dim - len(seen)
        for v in torch.randint(total, (need + need // 4 + 8,), generator=gen).tolist():
            if v not in seen:
                seen.add(v)
                if len(seen) == dim:
                    break
    return torch.tensor(sorted(seen), dtype=torch.long)


class Sketch:
    """The fixed coordinate subset of a list of tensors: ``sketch.take(tensors)`` gathers the ``dim`` chosen values
    (float32, on the first tensor's device) in the order of ``coords`` (tensor index, flat index)."""

    def __init__(self, sizes: Sequence[int], dim: int, seed: int = SEED) -> None:
        total = int(sum(sizes))
        self.sizes = [int(n) for n in sizes]
        self.total = total
        gen = torch.Generator().manual_seed(seed)
        flat = _draw(total, int(dim), gen)
        self.dim = int(flat.numel())
        bounds = torch.tensor([0, *np.cumsum(self.sizes).tolist()], dtype=torch.long)
        which = torch.bucketize(flat, bounds[1:], right=True)  # tensor index of each coordinate
        #: per tensor: (tensor index, local indices, offset in the sketch), tensors without coordinates left out
        self.parts: list[tuple[int, Tensor, int]] = []
        offset = 0
        for t in range(len(self.sizes)):
            local = flat[which == t] - bounds[t]
            if local.numel():
                self.parts.append((t, local, offset))
                offset += local.numel()
        self._device_parts: dict[torch.device, list[tuple[int, Tensor, int]]] = {}

    @property
    def coords(self) -> list[tuple[int, int]]:
        return [(t, int(i)) for t, local, _ in self.parts for i in local]

    def _on(self, device: torch.device) -> list[tuple[int, Tensor, int]]:
        parts = self._device_parts.get(device)
        if parts is None:
            parts = self._device_parts[device] = [(t, idx.to(device), o) for t, idx, o in self.parts]
        return parts

    def take(self, tensors: Sequence[Tensor], out: Tensor | None = None) -> Tensor:
        """The sketch of ``tensors`` (the sizes it was made for): ``dim`` float32 values, written into ``out`` (a
        preallocated float32 vector on the first tensor's device) or a new vector."""
        device = tensors[0].device
        if out is None:
            out = torch.empty(self.dim, dtype=torch.float32, device=device)
        with torch.no_grad():
            for t, idx, o in self._on(device):
                x = tensors[t].detach()
                flat = x.view(-1) if x.is_contiguous() else x.reshape(-1)
                dst = out[o: o + idx.numel()]
                if flat.device != device:  # a model spread over devices: gathered where the tensor lives
                    dst.copy_(flat.index_select(0, idx.to(flat.device)))
                elif flat.dtype == torch.float32:
                    torch.index_select(flat, 0, idx, out=dst)
                else:
                    dst.copy_(flat.index_select(0, idx))
        return out


@dataclass
class PCAResult:
    """``ratios``: explained-variance ratio of every component (descending, summing to 1); ``path``: the snapshots
    in the first ``k`` components (T x k); ``components``: those directions (k x D)."""

    ratios: np.ndarray
    path: np.ndarray
    components: np.ndarray


def pca(snapshots: np.ndarray, k: int = 3) -> PCAResult:
    """PCA of T snapshots (T x D) over time: centred on their mean, by SVD (float64)."""
    x = np.asarray(snapshots, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2:
        return PCAResult(np.zeros(0), np.zeros((x.shape[0], 0)), np.zeros((0, x.shape[1])))
    if x.shape[0] < x.shape[1]:  # fewer snapshots than coordinates: the T x T Gram matrix (far cheaper than the SVD)
        evals, evecs = np.linalg.eigh(x @ x.T)
        order = np.argsort(evals)[::-1]
        var = np.clip(evals[order], 0.0, None)
        u = evecs[:, order]
        s = np.sqrt(var)
        keep = min(k, int((s > s[0] * 1e-12).sum()) if s.size and s[0] > 0 else 0)
        vt = (u[:, :keep].T @ x) / s[:keep, None]
        total = var.sum()
        ratios = var / total if total > 0 else np.zeros_like(var)
        return PCAResult(ratios, u[:, :keep] * s[:keep], vt)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s ** 2
    total = var.sum()
    ratios = var / total if total > 0 else np.zeros_like(var)
    k = min(k, len(s))
    return PCAResult(ratios, u[:, :k] * s[:k], vt[:k])


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the subspaces spanned by the columns of ``a`` and ``b``."""
    qa, _ = np.linalg.qr(np.asarray(a, dtype=np.float64))
    qb, _ = np.linalg.qr(np.asarray(b, dtype=np.float64))
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.arccos(np.clip(s, -1.0, 1.0))


def read_sketch(run, prefix: str = "traj/c") -> tuple[np.ndarray, np.ndarray]:
    """The recorded sketch of a run (an open :class:`~dyncheck.store.Run`, read in one query with
    ``Run.series_matching``, or a mapping name -> (steps, values)): ``(steps, snapshots)``, T x D, coordinates in
    index order, only the steps every coordinate has."""
    if hasattr(run, "series_matching"):
        cols_by_name = {n: (s.steps, s.values) for n, s in run.series_matching(prefix + "*").items()}
    else:
        cols_by_name = {n: run[n] for n in run if n.startswith(prefix)}
    names = [n for n in cols_by_name if n[len(prefix):].isdigit()]
    names.sort(key=lambda n: int(n[len(prefix):]))
    if not names:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    cols = [(np.asarray(cols_by_name[n][0]), np.asarray(cols_by_name[n][1], dtype=np.float64)) for n in names]
    steps = cols[0][0]
    if all(np.array_equal(st, steps) for st, _ in cols):  # the usual case: every coordinate at every snapshot
        return steps.astype(np.int64), np.stack([v for _, v in cols], axis=1)
    for st, _ in cols[1:]:
        steps = np.intersect1d(steps, st)
    mat = np.empty((len(steps), len(cols)))
    for j, (st, v) in enumerate(cols):
        mat[:, j] = v[np.searchsorted(st, steps)]
    return steps.astype(np.int64), mat
