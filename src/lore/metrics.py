"""Evaluation metrics with the communities' exact definitions.

- :func:`accuracy`: top-k classification accuracy (fractions).
- :func:`revisited_map`: mAP and mP@k of the revisited Oxford/Paris protocol (Radenovic et al.,
  CVPR 2018), the same numbers as the official ``compute_map`` of the revisitop toolkit.
- :func:`davis_j`, :func:`davis_f`: region similarity (IoU) and boundary F-measure of the DAVIS
  2017 evaluation, empty-mask edge cases included.
- :func:`davis_statistics`: per-object mean, recall and decay of a per-frame measure (DAVIS).
- :func:`pck`: percentage of correct keypoints (as a fraction).

All inputs may be numpy arrays or torch tensors; results are plain floats or numpy arrays. The
mask measures run in numpy: single-threaded array passes, no thread start-up per small operation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike | Sequence) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------

def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracies of ``logits`` (N, C) against integer ``target`` (N,), as fractions.

    Returns one float per entry of ``topk``, in the same order. k larger than the number of
    classes counts as C (every sample is then correct), as in timm.
    """
    if logits.ndim != 2 or target.ndim != 1 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"accuracy: expected logits (N, C) and target (N,), got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    n, num_classes = logits.shape
    if n == 0:
        return [float("nan")] * len(topk)
    maxk = min(max(topk), num_classes)
    pred = logits.topk(maxk, dim=1).indices  # (N, maxk), best first
    hit = pred.eq(target.view(-1, 1).to(pred.device))
    # cumulative: a sample is correct at k if the target is anywhere in its first k guesses
    hit_at = hit.cumsum(dim=1).clamp(max=1).float().sum(dim=0)  # (maxk,)
    return [float(hit_at[min(k, maxk) - 1]) / n for k in topk]


# --------------------------------------------------------------------------------------------
# revisited Oxford / Paris retrieval
# --------------------------------------------------------------------------------------------

def _average_precision(pos: np.ndarray, nres: int) -> float:
    """Trapezoidal AP of the revisitop toolkit.

    ``pos``: sorted zero-based ranks of the retrieved positives (junk already removed);
    ``nres``: number of positives of the query. Each positive adds the trapezoid between the
    precision just before it (j / rank, 1 at rank 0) and at it ((j + 1) / (rank + 1)).
    """
    j = np.arange(len(pos), dtype=np.float64)
    r = pos.astype(np.float64)
    precision_0 = np.where(r == 0, 1.0, j / np.maximum(r, 1.0))
    precision_1 = (j + 1.0) / (r + 1.0)
    return float(((precision_0 + precision_1) / 2.0).sum() / nres)


def _ranked_map(ranks: np.ndarray, ok: list[np.ndarray], junk: list[np.ndarray],
                kappas: Sequence[int]) -> dict:
    """mAP and mP@k over the queries that have positives (revisitop ``compute_map``)."""
    aps: list[float] = []
    prs: list[np.ndarray] = []
    for i, (qok, qjunk) in enumerate(zip(ok, junk)):
        if len(qok) == 0:  # no positive for this query at this difficulty: skipped
            continue
        column = ranks[:, i]
        pos = np.flatnonzero(np.isin(column, qok))  # sorted positions in the ranked list
        junk_pos = np.flatnonzero(np.isin(column, qjunk))
        # every junk image ranked above a positive is removed from the list: shift it up
        pos = pos - np.searchsorted(junk_pos, pos, side="left")
        if len(pos) == 0:  # positives absent from a truncated ranking
            aps.append(0.0)
            prs.append(np.zeros(len(kappas)))
            continue
        aps.append(_average_precision(pos, len(qok)))
        pos1 = pos + 1
        # as the official code: precision at min(k, rank of the last positive)
        kq = np.minimum(pos1.max(), np.asarray(kappas))
        prs.append((pos1[None, :] <= kq[:, None]).sum(axis=1) / kq)
    if not aps:
        return {"map": float("nan"), "mp": [float("nan")] * len(kappas)}
    return {"map": float(np.mean(aps)), "mp": [float(v) for v in np.mean(prs, axis=0)]}


def _index_array(entry: dict, key: str) -> np.ndarray:
    value = entry.get(key, [])
    return np.asarray(value, dtype=np.int64).reshape(-1)


def revisited_map(ranks: ArrayLike, gnd: Sequence[dict], kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """Revisited Oxford/Paris evaluation at the Easy, Medium and Hard difficulties.

    ``ranks``: (num_db, num_queries) zero-based database indices, best first, one column per
    query. ``gnd``: one dict per query with index lists ``easy``, ``hard``, ``junk``.

    Easy: ok = easy, junk = junk + hard. Medium: ok = easy + hard, junk = junk.
    Hard: ok = hard, junk = junk + easy. Returns
    ``{"easy": {"map": float, "mp": [P@k for k in kappas]}, "medium": {...}, "hard": {...}}``.
    """
    ranks = _np(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        raise ValueError(f"revisited_map: ranks must be (num_db, {len(gnd)}), got {ranks.shape}")
    easy = [_index_array(g, "easy") for g in gnd]
    hard = [_index_array(g, "hard") for g in gnd]
    junk = [_index_array(g, "junk") for g in gnd]
    cat = np.concatenate
    return {
        "easy": _ranked_map(ranks, easy, [cat([j, h]) for j, h in zip(junk, hard)], kappas),
        "medium": _ranked_map(ranks, [cat([e, h]) for e, h in zip(easy, hard)], junk, kappas),
        "hard": _ranked_map(ranks, hard, [cat([j, e]) for j, e in zip(junk, easy)], kappas),
    }


# --------------------------------------------------------------------------------------------
# DAVIS 2017
# --------------------------------------------------------------------------------------------

def _masks(gt: ArrayLike, pred: ArrayLike, void: ArrayLike | None) -> tuple[np.ndarray, ...]:
    gt_b, pred_b = _np(gt).astype(bool), _np(pred).astype(bool)
    if gt_b.shape != pred_b.shape or gt_b.ndim not in (2, 3):
        raise ValueError(f"DAVIS measures need masks of the same shape (H, W) or (T, H, W), got "
                         f"{gt_b.shape} and {pred_b.shape}")
    void_b = np.zeros_like(gt_b) if void is None else _np(void).astype(bool)
    if void_b.shape != gt_b.shape:
        raise ValueError(f"void mask shape {void_b.shape} differs from {gt_b.shape}")
    return gt_b, pred_b, void_b


def davis_j(gt: ArrayLike, pred: ArrayLike, void: ArrayLike | None = None) -> float | np.ndarray:
    """Region similarity J: IoU of binary masks, void pixels ignored; J = 1 when both are empty.

    (H, W) masks give a float, (T, H, W) masks one value per frame.
    """
    gt_b, pred_b, void_b = _masks(gt, pred, void)
    valid = ~void_b
    inter = ((gt_b & pred_b) & valid).sum(axis=(-2, -1), dtype=np.float64)
    union = ((gt_b | pred_b) & valid).sum(axis=(-2, -1), dtype=np.float64)
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1.0))
    return float(j) if j.ndim == 0 else j


def seg2bmap(seg: ArrayLike) -> np.ndarray:
    """One-pixel boundary map of binary masks (..., H, W), as the DAVIS ``seg2bmap``.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour
    (outside the image counts as background); the last row compares only with the east
    neighbour, the last column only with the south one, and the bottom-right pixel is never a
    boundary.
    """
    seg = _np(seg).astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    b[..., -1, -1] = False
    return b


def _disk_half_widths(radius: int) -> list[int]:
    """Half-width of the row ``dy`` (0..radius) of skimage's ``disk(radius)``: x^2 + dy^2 <= r^2."""
    return [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]


def dilate_disk(b: ArrayLike, radius: int) -> np.ndarray:
    """Binary dilation of (..., H, W) masks by a disk of integer ``radius`` (zero border).

    Same result as ``cv2.dilate(b, skimage.morphology.disk(radius))``. A disk is a union of
    horizontal segments, one per row offset dy; each segment dilation is a sliding-window count
    read off a cumulative sum, so the cost is O(H W radius), not O(H W radius^2).
    """
    b = _np(b).astype(bool)
    if radius <= 0:
        return b.copy()
    H, W = b.shape[-2:]
    csum = np.zeros(b.shape[:-1] + (W + 1,), dtype=np.int32)
    np.cumsum(b, axis=-1, dtype=np.int32, out=csum[..., 1:])
    x = np.arange(W)
    out = np.zeros(b.shape, dtype=bool)
    rows: dict[int, np.ndarray] = {}
    for dy, half in enumerate(_disk_half_widths(radius)):
        if half not in rows:  # window [x - half, x + half] holds at least one boundary pixel
            hi = np.minimum(x + half + 1, W)
            lo = np.maximum(x - half, 0)
            rows[half] = np.take(csum, hi, axis=-1) > np.take(csum, lo, axis=-1)
        seg = rows[half]
        if dy == 0:
            out |= seg
        elif dy < H:  # out[y] |= seg[y + dy] and out[y] |= seg[y - dy]
            out[..., : H - dy, :] |= seg[..., dy:, :]
            out[..., dy:, :] |= seg[..., : H - dy, :]
    return out


def _boundary_radius(shape: tuple[int, int], bound_th: float) -> int:
    return int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape)))


def davis_f(gt: ArrayLike, pred: ArrayLike, void: ArrayLike | None = None,
            bound_th: float = 0.008) -> float | np.ndarray:
    """Boundary F-measure of the DAVIS evaluation (``db_eval_boundary`` / ``f_measure``).

    Boundaries come from :func:`seg2bmap` of the masks with void pixels removed; a boundary pixel
    is matched when the other boundary lies within ``bound_th`` pixels (``bound_th < 1``: that
    fraction of the image diagonal, rounded up), by dilation with a disk. Edge cases of the
    official code: no predicted and no true boundary -> 1; only one of them empty -> 0.
    (H, W) masks give a float, (T, H, W) masks one value per frame.
    """
    gt_b, pred_b, void_b = _masks(gt, pred, void)
    single = gt_b.ndim == 2
    if single:
        gt_b, pred_b, void_b = gt_b[None], pred_b[None], void_b[None]
    radius = _boundary_radius(gt_b.shape[-2:], bound_th)
    chunk = 16  # frames at a time: bounds the memory of the dilation on long 480p clips
    f = np.concatenate([_boundary_f(gt_b[i:i + chunk], pred_b[i:i + chunk], void_b[i:i + chunk], radius)
                        for i in range(0, len(gt_b), chunk)])
    return float(f[0]) if single else f


def _boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray, radius: int) -> np.ndarray:
    """Per-frame boundary F of (T, H, W) boolean masks with a tolerance of ``radius`` pixels."""
    gt_b = seg2bmap(gt & ~void)
    fg_b = seg2bmap(pred & ~void)
    # Only pixels near some boundary can change the counts: dilate inside the bounding box of
    # all boundary pixels (plus the radius), where the zero border gives the same answer.
    any_b = (gt_b | fg_b).any(axis=0)
    ys, xs = np.flatnonzero(any_b.any(axis=1)), np.flatnonzero(any_b.any(axis=0))
    if len(ys):
        H, W = any_b.shape
        y0, y1 = max(int(ys[0]) - radius, 0), min(int(ys[-1]) + radius + 1, H)
        x0, x1 = max(int(xs[0]) - radius, 0), min(int(xs[-1]) + radius + 1, W)
        gt_b, fg_b = gt_b[:, y0:y1, x0:x1], fg_b[:, y0:y1, x0:x1]
    fg_match = (fg_b & dilate_disk(gt_b, radius)).sum(axis=(-2, -1), dtype=np.float64)
    gt_match = (gt_b & dilate_disk(fg_b, radius)).sum(axis=(-2, -1), dtype=np.float64)
    n_fg = fg_b.sum(axis=(-2, -1), dtype=np.float64)
    n_gt = gt_b.sum(axis=(-2, -1), dtype=np.float64)

    precision = np.where(n_fg > 0, fg_match / np.maximum(n_fg, 1.0), 1.0)
    recall = np.where(n_gt > 0, gt_match / np.maximum(n_gt, 1.0), 1.0)
    # empty prediction but a true boundary: precision 1, recall 0 (and the converse): F = 0
    precision = np.where((n_fg > 0) & (n_gt == 0), 0.0, precision)
    recall = np.where((n_fg == 0) & (n_gt > 0), 0.0, recall)
    denom = precision + recall
    return np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)


def davis_statistics(per_frame: ArrayLike) -> dict[str, float]:
    """Mean, recall (fraction > 0.5) and decay (first quarter minus last quarter) of a per-frame
    measure, as ``db_statistics`` of the DAVIS evaluation."""
    values = _np(per_frame).astype(np.float64).reshape(-1)
    if len(values) == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    bins = [values[ids[i]: ids[i + 1] + 1] for i in range(4)]
    return {
        "mean": float(np.nanmean(values)),
        "recall": float(np.nanmean(values > 0.5)),
        "decay": float(np.nanmean(bins[0]) - np.nanmean(bins[3])),
    }


# --------------------------------------------------------------------------------------------
# keypoints
# --------------------------------------------------------------------------------------------

def pck(pred_xy: ArrayLike, gt_xy: ArrayLike, threshold: float | ArrayLike, alpha: float = 0.1) -> float:
    """Fraction of keypoints whose prediction lies within ``alpha * threshold`` of the truth.

    ``pred_xy``, ``gt_xy``: (N, 2) pixel coordinates; ``threshold``: a scalar or one value per
    keypoint (e.g. the max side of the target bounding box). Distance <= bound counts as correct.
    Returns NaN for N = 0.
    """
    pred, gt = _np(pred_xy).astype(np.float64), _np(gt_xy).astype(np.float64)
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"pck: expected two (N, 2) arrays, got {pred.shape} and {gt.shape}")
    if len(pred) == 0:
        return float("nan")
    bound = alpha * _np(threshold).astype(np.float64)
    dist = np.linalg.norm(pred - gt, axis=1)
    return float(np.mean(dist <= bound))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Mean of ``a - b`` over paired runs (same seeds, same shots) with its two-sided Student-t
    interval: ``{"mean", "low", "high", "n"}`` (low/high NaN with fewer than two pairs)."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired_difference needs two equal-length non-empty sequences, got {len(a)} and {len(b)}")
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(len(d))}
