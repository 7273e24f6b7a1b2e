"""Metrics against hand-computed values: revisited mAP (junk, queries without positives), DAVIS J and
F (edge cases, boundary extraction, disk tolerance), PCK, top-k accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lore.metrics import (accuracy, davis_f, davis_j, davis_statistics, dilate_disk, pck,
                          revisited_map, seg2bmap)

# ------------------------------------------------------------------------------- accuracy


def test_accuracy_topk_fractions() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0],    # top-1 = 1
                           [0.5, 0.1, 0.4, 0.0],    # top-1 = 0, second = 2
                           [0.0, 0.1, 0.2, 0.3]])   # ranking 3, 2, 1, 0
    target = torch.tensor([1, 2, 0])
    assert accuracy(logits, target, topk=(1, 2, 4)) == pytest.approx([1 / 3, 2 / 3, 1.0])
    # k above the number of classes counts every sample as correct
    assert accuracy(logits, target, topk=(1, 5)) == pytest.approx([1 / 3, 1.0])


# ------------------------------------------------------------------------------- revisited mAP

# Database of 6 images. Query 0: easy [1], hard [3], junk [0], ranked 0,1,2,3,4,5.
# Query 1 has no positives at all. Query 2: easy [4], ranked first.
GND = [
    {"easy": [1], "hard": [3], "junk": [0], "bbx": [0, 0, 1, 1]},
    {"easy": [], "hard": [], "junk": [2]},
    {"easy": [4], "hard": [], "junk": []},
]
RANKS = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [4, 0, 1, 2, 3, 5]]).T  # (num_db, nq)


def test_revisited_map_hand_computed() -> None:
    r = revisited_map(RANKS, GND)
    # Medium, query 0: positives at 1 and 3, the junk image at 0 shifts both up: ranks 0 and 2.
    # Trapezoids with recall step 1/2: (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2 = 0.5 + 0.291666...
    ap_q0_medium = 0.5 + (0.5 + 2 / 3) / 4
    assert ap_q0_medium == pytest.approx(0.7916666667)
    assert r["medium"]["map"] == pytest.approx((ap_q0_medium + 1.0) / 2)  # query 1 skipped
    # mP@k as the official code: precision at min(k, rank of the last positive) = min(k, 3)
    assert r["medium"]["mp"] == pytest.approx([1.0, (2 / 3 + 1) / 2, (2 / 3 + 1) / 2])
    # Easy, query 0: ok [1], junk [0, 3] -> rank 0, AP 1. Query 2: AP 1.
    assert r["easy"]["map"] == pytest.approx(1.0)
    assert r["easy"]["mp"] == pytest.approx([1.0, 1.0, 1.0])
    # Hard, only query 0 has a hard positive: ok [3], junk [0, 1] -> rank 1:
    # trapezoid (0/1 + 1/2)/2 * 1 = 0.25; P@1 = 0, P@5 = P@10 = P@min(2) = 1/2.
    assert r["hard"]["map"] == pytest.approx(0.25)
    assert r["hard"]["mp"] == pytest.approx([0.0, 0.5, 0.5])


def test_revisited_map_junk_is_removed_not_counted_as_negative() -> None:
    gnd = [{"easy": [2], "hard": [], "junk": [0, 1]}]
    ranks = np.array([[0], [1], [2], [3]])
    assert revisited_map(ranks, gnd)["medium"]["map"] == pytest.approx(1.0)
    # the same list without junk: a positive at rank 2 -> trapezoid (0/2 + 1/3)/2
    no_junk = [{"easy": [2], "hard": [], "junk": []}]
    assert revisited_map(ranks, no_junk)["medium"]["map"] == pytest.approx((0 + 1 / 3) / 2)


def test_revisited_map_perfect_and_torch_ranks() -> None:
    gnd = [{"easy": [0, 1], "hard": [2], "junk": []}, {"easy": [3], "hard": [], "junk": [0]}]
    ranks = torch.tensor([[0, 3], [1, 0], [2, 1], [3, 2]])
    r = revisited_map(ranks, gnd)
    assert r["medium"]["map"] == pytest.approx(1.0)
    assert r["hard"]["map"] == pytest.approx(1.0)  # easy 0, 1 are junk for Hard: 2 moves to rank 0
    assert r["easy"]["map"] == pytest.approx(1.0)


def test_revisited_map_hard_rank_two_exact() -> None:
    # one hard positive at rank 2 (no junk): trapezoid (0/2 + 1/3)/2 = 1/6
    gnd = [{"easy": [], "hard": [2], "junk": []}]
    r = revisited_map(np.array([[0], [1], [2]]), gnd)
    assert r["hard"]["map"] == pytest.approx(1 / 6)
    assert math.isnan(r["easy"]["map"])  # no query has an easy positive: nothing to average


def test_revisited_map_shape_check() -> None:
    with pytest.raises(ValueError):
        revisited_map(np.zeros((4, 2), dtype=int), GND)


# ------------------------------------------------------------------------------- DAVIS J


def test_davis_j_values_and_edge_cases() -> None:
    gt = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    assert davis_j(gt, pred) == pytest.approx(1 / 3)
    assert davis_j(torch.from_numpy(gt), torch.from_numpy(pred)) == pytest.approx(1 / 3)
    void = np.array([[0, 0, 1, 0]], bool)  # the false positive sits on a void pixel
    assert davis_j(gt, pred, void) == pytest.approx(1 / 2)
    empty = np.zeros((3, 4), bool)
    assert davis_j(empty, empty) == 1.0           # both empty: perfect
    assert davis_j(empty, np.ones((3, 4), bool)) == 0.0
    seq = davis_j(np.stack([gt, empty[:1]]), np.stack([pred, empty[:1]]))
    assert seq.shape == (2,) and seq == pytest.approx([1 / 3, 1.0])


# ------------------------------------------------------------------------------- DAVIS F


def test_seg2bmap_hand_computed() -> None:
    seg = torch.zeros(4, 4, dtype=torch.bool)
    seg[1:3, 1:3] = True
    expected = np.array([[1, 1, 1, 0],
                         [1, 0, 1, 0],
                         [1, 1, 1, 0],
                         [0, 0, 0, 0]], dtype=bool)
    assert np.array_equal(seg2bmap(seg), expected)


def test_dilate_disk_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    b = rng.random((2, 23, 31)) < 0.03
    for radius in (1, 2, 3, 5, 8):
        ys, xs = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        disk = (xs ** 2 + ys ** 2) <= radius ** 2
        expected = np.zeros(b.shape, bool)
        for t, y, x in zip(*np.nonzero(b)):
            for dy, dx in zip(ys[disk], xs[disk]):
                if 0 <= y + dy < 23 and 0 <= x + dx < 31:
                    expected[t, y + dy, x + dx] = True
        assert np.array_equal(dilate_disk(b, radius), expected), radius


def test_davis_f_hand_computed() -> None:
    # 10x10: tolerance ceil(0.008 * hypot(10, 10)) = 1 pixel (a plus-shaped disk).
    gt = np.zeros((10, 10), bool)
    gt[:, :5] = True                        # boundary: column 4, 10 pixels
    near = np.zeros_like(gt)
    near[:, :6] = True                      # boundary one column right: all matched
    far = np.zeros_like(gt)
    far[:, :7] = True                       # two columns right: nothing matched
    assert davis_f(gt, near) == pytest.approx(1.0)
    assert davis_f(gt, far) == pytest.approx(0.0)
    # rows 0-4 like gt, rows 5-9 two columns wider. Predicted boundary: (0..4, 4), (4, 5), (4, 6),
    # (5..9, 6) = 12 pixels of which 6 touch the gt boundary; 6 of the 10 gt pixels are matched.
    step = np.zeros_like(gt)
    step[:5, :5] = True
    step[5:, :7] = True
    precision, recall = 6 / 12, 6 / 10
    assert davis_f(gt, step) == pytest.approx(2 * precision * recall / (precision + recall))
    # a bigger tolerance in pixels (bound_th >= 1 is taken as pixels) matches everything
    assert davis_f(gt, step, bound_th=2) == pytest.approx(1.0)


def test_davis_f_edge_cases_and_void() -> None:
    empty = np.zeros((12, 12), bool)
    square = np.zeros((12, 12), bool)
    square[3:8, 3:8] = True
    assert davis_f(empty, empty) == 1.0
    assert davis_f(square, empty) == 0.0
    assert davis_f(empty, square) == 0.0
    assert davis_f(square, square) == 1.0
    # void pixels are cut out of both masks before the boundaries are taken
    void = np.zeros_like(square)
    void[:, 6:] = True
    pred = square.copy()
    pred[:, 6:] = False
    assert davis_f(square, pred) < 1.0
    assert davis_f(square, pred, void) == pytest.approx(1.0)
    per_frame = davis_f(np.stack([square, empty]), np.stack([square, square]))
    assert per_frame.shape == (2,) and per_frame == pytest.approx([1.0, 0.0])


def test_davis_f_many_frames_equal_single_frames() -> None:
    rng = np.random.default_rng(1)
    gt = rng.random((37, 20, 24)) < 0.5       # more frames than one chunk of the computation
    pred = gt ^ (rng.random(gt.shape) < 0.1)
    void = rng.random(gt.shape) < 0.05
    per_frame = davis_f(gt, pred, void)
    assert per_frame.shape == (37,)
    assert per_frame == pytest.approx([davis_f(g, p, v) for g, p, v in zip(gt, pred, void)])
    assert davis_j(gt, pred, void) == pytest.approx([davis_j(g, p, v) for g, p, v in zip(gt, pred, void)])


def test_davis_f_against_naive_matching_at_davis_size() -> None:
    # 480x854 (DAVIS 480p): tolerance ceil(0.008 * 979.6) = 8 pixels.
    H, W = 480, 854
    yy, xx = np.mgrid[:H, :W]
    gt = (yy - 240) ** 2 / 120 ** 2 + (xx - 400) ** 2 / 200 ** 2 <= 1
    pred = (yy - 250) ** 2 / 110 ** 2 + (xx - 415) ** 2 / 200 ** 2 <= 1
    gb, pb = seg2bmap(gt), seg2bmap(pred)
    g_pts, p_pts = np.argwhere(gb), np.argwhere(pb)
    d2 = ((g_pts[:, None, :] - p_pts[None, :, :]) ** 2).sum(-1)
    precision = (d2.min(axis=0) <= 64).mean()
    recall = (d2.min(axis=1) <= 64).mean()
    expected = 2 * precision * recall / (precision + recall)
    assert 0.2 < expected < 0.95  # a case with partial matching
    assert davis_f(gt, pred) == pytest.approx(expected, abs=1e-12)


def test_davis_statistics() -> None:
    s = davis_statistics([1.0, 0.6, 0.4, 0.2, 0.0])
    assert s["mean"] == pytest.approx(0.44)
    assert s["recall"] == pytest.approx(0.4)
    # quarters of 5 frames: [1, .6], [.6, .4], [.4, .2], [.2, 0]: decay = 0.8 - 0.1
    assert s["decay"] == pytest.approx(0.7)


# ------------------------------------------------------------------------------- PCK


def test_pck_threshold_inclusive() -> None:
    gt = np.zeros((3, 2))
    pred = np.array([[0.0, 0.0], [10.0, 0.0], [3.0, 4.0]])
    assert pck(pred, gt, threshold=50, alpha=0.1) == pytest.approx(2 / 3)  # 5.0 <= 5.0 counts
    assert pck(pred, gt, threshold=np.array([50, 100, 40]), alpha=0.1) == pytest.approx(2 / 3)
    assert pck(pred, gt, threshold=200, alpha=0.05) == pytest.approx(1.0)
    nan_pred = pred.copy()
    nan_pred[0] = np.nan  # a rejected match is never correct
    assert pck(nan_pred, gt, threshold=50) == pytest.approx(1 / 3)
    assert math.isnan(pck(np.zeros((0, 2)), np.zeros((0, 2)), 10))
