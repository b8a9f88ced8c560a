"""Downsampling for display: long series keep their extremes, so a one-step spike survives any zoom level.

Pure numpy; the report calls these, tests compare them with brute force.
"""

from __future__ import annotations

import numpy as np

__all__ = ["minmax", "bucket_max", "align"]


def minmax(steps: np.ndarray, values: np.ndarray, buckets: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``2 * buckets`` points: split the finite points into runs of ``ceil(n / buckets)`` consecutive
    points (at most ``buckets`` runs) and keep the lowest and the highest of each, in step order (a series of at
    most ``2 * buckets`` finite points is returned whole).
    Non-finite values are dropped here; the report marks them separately."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=float)
    fin = np.isfinite(values)
    steps, values = steps[fin], values[fin]
    n = values.size
    if n <= 2 * buckets:
        return steps, values
    width = -(-n // buckets)  # ceil: every bucket but the last holds `width` points
    rows = -(-n // width)
    lo = np.full(rows * width, np.inf)
    hi = np.full(rows * width, -np.inf)
    lo[:n] = values
    hi[:n] = values
    base = np.arange(rows) * width
    keep = np.union1d(base + lo.reshape(rows, width).argmin(axis=1), base + hi.reshape(rows, width).argmax(axis=1))
    return steps[keep], values[keep]


def align(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several (steps, values) series on the union of their steps: a (len(series), n_steps) matrix, NaN where a
    series has no value at a step."""
    if not series:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    grid = np.unique(np.concatenate([np.asarray(s) for s, _ in series]))
    out = np.full((len(series), grid.size), np.nan)
    for i, (s, v) in enumerate(series):
        out[i, np.searchsorted(grid, s)] = v
    return grid, out


def bucket_max(steps: np.ndarray, matrix: np.ndarray, buckets: int = 400) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """Columns of ``matrix`` (rows x steps) merged into at most ``buckets`` runs of consecutive columns, each
    keeping the row-wise maximum of its finite values (NaN where it has none). Returns the first and last step of
    each bucket and the merged matrix."""
    steps = np.asarray(steps)
    m = np.asarray(matrix, dtype=float)
    n = steps.size
    if n == 0:
        return steps, steps, m
    if n <= buckets:
        return steps, steps, np.where(np.isfinite(m), m, np.nan)
    width = -(-n // buckets)
    starts = np.arange(0, n, width)
    ends = np.minimum(starts + width, n) - 1
    filled = np.where(np.isfinite(m), m, -np.inf)
    merged = np.maximum.reduceat(filled, starts, axis=1)
    merged[~np.isfinite(merged)] = np.nan
    return steps[starts], steps[ends], merged
