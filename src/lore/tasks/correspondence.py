"""Semantic keypoint correspondence on SPair-71k (Min et al., 2019) with frozen patch features.

Protocol (the SPair evaluation of "Teaching Matters" / "Deep ViT features", no training):

1. Read the pairs ``ROOT/PairAnnotation/<split>/*.json`` (``src_imname``, ``trg_imname``,
   ``src_kps``, ``trg_kps``, ``src_bndbox``, ``trg_bndbox``, ``src_imsize``, ``trg_imsize``,
   ``category``) and the images ``ROOT/JPEGImages/<category>/<imname>``.
2. Each image is resized so its longer side is ``imsize`` and zero-padded (black) to an
   ``imsize`` square, aspect ratio kept; keypoints follow the same transform.
3. Patch tokens (by default the last block's, final-normed; ``--layer`` picks an earlier block)
   are L2-normalised and bilinearly upsampled to the image size; a source keypoint's feature is
   read at its location.
4. Its prediction is the target pixel of highest cosine similarity. With ``match="mutual"`` the
   prediction is kept only when its own nearest neighbour back in the source image lands within
   one patch of the keypoint (mutual nearest neighbours); a rejected match counts as wrong, so
   every annotated keypoint is scored. ``match="nn"`` keeps every nearest neighbour.
   The paper's text says mutual nearest neighbours of last-layer tokens; the code of the protocol
   it cites (Walmer et al., 2023) takes the plain nearest neighbour and reports each backbone at
   its best block: ``--match nn --layer L`` reproduces that.
5. PCK@alpha: the prediction, mapped back to original pixels, is correct when it lies within
   ``alpha * max(bbox height, bbox width)`` of the true target keypoint (``threshold_by="image"``:
   alpha * max(image height, width)). Reported per category (its keypoints pooled) and overall
   (all keypoints pooled), with the mean over categories alongside.

Similarities are computed on the patch grid and then upsampled: the cosine with a fixed vector is
linear in the bilinearly interpolated target features, so this equals upsampling the features
first, at a fraction of the memory.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..errors import LoreError
from ..io import inside_root, read_json
from ..metrics import pck
from .common import (Extractor, add_common_arguments, add_layer_argument, check_out_dir, extractor_from_args,
                     fmt, load_image, positive_float, positive_int, write_results)

REQUIRED_FIELDS = ("src_imname", "trg_imname", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox",
                   "src_imsize", "trg_imsize", "category")
MATCHERS = ("mutual", "nn")
THRESHOLDS = ("bbox", "image")


@dataclass
class SPairPair:
    name: str
    category: str
    src: Path
    trg: Path
    src_kps: np.ndarray        # (K, 2) x, y in original source pixels
    trg_kps: np.ndarray        # (K, 2) the corresponding target keypoints
    src_size: tuple[int, int]  # (W, H) as annotated
    trg_size: tuple[int, int]
    trg_bbox: np.ndarray       # (4,) x1, y1, x2, y2 in target pixels


def _points(value, field: str, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise LoreError(f"SPair annotation {path}: {field} must be a list of [x, y] numbers") from None
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise LoreError(f"SPair annotation {path}: {field} must be a list of [x, y] numbers")
    return arr


def _numbers(value, count: int, field: str, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.size < count or not np.isfinite(arr[:count]).all():
        raise LoreError(f"SPair annotation {path}: {field} must hold {count} numbers, got {value!r}")
    return arr[:count]


def read_pair(path: Path, root: Path) -> SPairPair:
    data = read_json(path, what="SPair annotation")
    if not isinstance(data, dict):
        raise LoreError(f"SPair annotation {path}: expected a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise LoreError(f"SPair annotation {path}: missing field(s) {', '.join(missing)}")
    category = str(data["category"])
    src_kps = _points(data["src_kps"], "src_kps", path)
    trg_kps = _points(data["trg_kps"], "trg_kps", path)
    if src_kps.shape != trg_kps.shape:
        raise LoreError(f"SPair annotation {path}: {len(src_kps)} src_kps but {len(trg_kps)} trg_kps")
    # imsize is [W, H, channels]
    src_w, src_h = (int(v) for v in _numbers(data["src_imsize"], 2, "src_imsize", path))
    trg_w, trg_h = (int(v) for v in _numbers(data["trg_imsize"], 2, "trg_imsize", path))
    _numbers(data["src_bndbox"], 4, "src_bndbox", path)
    trg_bbox = _numbers(data["trg_bndbox"], 4, "trg_bndbox", path)
    # names from the file become paths: each must stay inside ROOT/JPEGImages
    images = root / "JPEGImages"
    src = inside_root(images, f"{category}/{data['src_imname']}", f"{path} (category, src_imname)")
    trg = inside_root(images, f"{category}/{data['trg_imname']}", f"{path} (category, trg_imname)")
    return SPairPair(path.stem, category, src, trg,
                     src_kps, trg_kps, (src_w, src_h), (trg_w, trg_h), trg_bbox)


def read_spair(root: str | Path, split: str = "test", limit: int | None = None) -> list[SPairPair]:
    """The pairs of a split, sorted by category then name. ``limit``: that many pairs spread
    evenly over the sorted list (so every category keeps its share)."""
    root = Path(root)
    split_dir = root / "PairAnnotation" / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in (root / "PairAnnotation").glob("*") if p.is_dir())
        hint = f" (found splits: {', '.join(found)})" if found else " (is --root the SPair-71k folder?)"
        raise LoreError(f"SPair split folder {split_dir} not found{hint}")
    files = sorted(split_dir.glob("*.json"))
    if not files:
        raise LoreError(f"no pair annotations (*.json) in {split_dir}")
    pairs = sorted((read_pair(f, root) for f in files), key=lambda p: (p.category, p.name))
    if limit is not None and limit < len(pairs):
        keep = np.unique(np.linspace(0, len(pairs) - 1, limit).round().astype(np.int64))
        pairs = [pairs[i] for i in keep]
    return pairs


def letterbox(image: Image.Image, imsize: int) -> tuple[Image.Image, float, tuple[int, int]]:
    """Resize the longer side to ``imsize`` and pad to a black square; returns the padded image,
    the scale and the (x, y) offset mapping original pixels to it: p' = p * scale + offset."""
    W, H = image.size
    scale = imsize / max(W, H)
    new_w, new_h = max(1, round(W * scale)), max(1, round(H * scale))
    canvas = Image.new("RGB", (imsize, imsize))
    offset = ((imsize - new_w) // 2, (imsize - new_h) // 2)
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.LANCZOS), offset)
    return canvas, scale, offset


def _sample(grid: torch.Tensor, xy: torch.Tensor, imsize: int) -> torch.Tensor:
    """Bilinear read of a (D, h, w) feature grid at pixel coordinates (K, 2) of the imsize image:
    the value the bilinearly upsampled (align_corners=False) map has at those pixels."""
    norm = (xy + 0.5) / imsize * 2 - 1
    out = F.grid_sample(grid[None], norm[None, None].to(grid.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0, :, 0].T  # (K, D)


def _nearest_pixel(query: torch.Tensor, grid: torch.Tensor, imsize: int) -> torch.Tensor:
    """Pixel (x, y) of the upsampled map most similar to each query feature (K, D) -> (K, 2)."""
    D, h, w = grid.shape
    sim = (query @ grid.reshape(D, h * w)).reshape(1, -1, h, w)
    sim = F.interpolate(sim, size=(imsize, imsize), mode="bilinear", align_corners=False)[0]
    flat = sim.flatten(1).argmax(dim=1)
    return torch.stack([flat % imsize, flat // imsize], dim=1).to(torch.float64)


def match_keypoints(src_grid: torch.Tensor, trg_grid: torch.Tensor, src_xy: torch.Tensor, imsize: int,
                    patch_size: int, match: str = "mutual") -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted target pixels (K, 2) for source keypoints ``src_xy`` (K, 2) (both in the padded
    imsize frame) and whether each prediction is kept (K,) bool.

    ``src_grid``, ``trg_grid``: (D, h, w) L2-normalised patch features.
    """
    pred = _nearest_pixel(_sample(src_grid, src_xy, imsize), trg_grid, imsize)
    if match == "nn":
        return pred, torch.ones(len(pred), dtype=torch.bool)
    back = _nearest_pixel(_sample(trg_grid, pred, imsize), src_grid, imsize)
    kept = (back - src_xy.to(back.dtype)).abs().amax(dim=1) <= patch_size
    return pred, kept


class _GridCache:
    """Patch features of the images of one category (pairs reuse the same images)."""

    def __init__(self, extractor: Extractor, imsize: int):
        self.extractor, self.imsize = extractor, imsize
        self.category: str | None = None
        self.items: dict[Path, tuple[torch.Tensor, float, tuple[int, int]]] = {}

    def get(self, path: Path, size: tuple[int, int], category: str):
        if category != self.category:
            self.category, self.items = category, {}
        if path not in self.items:
            image = load_image(str(path))
            padded, scale, offset = letterbox(image, self.imsize)
            patches = self.extractor.features(self.extractor.to_tensor(padded))["patches"][0]
            grid = F.normalize(patches, dim=-1).permute(2, 0, 1).contiguous()  # (D, h, w)
            self.items[path] = (grid, scale, offset, image.size)
        grid, scale, offset, actual = self.items[path]
        if actual != size:  # every pair's annotation is checked, also for cached images
            raise LoreError(f"image {path} is {actual[0]}x{actual[1]} but the SPair annotation says "
                            f"{size[0]}x{size[1]}; the files do not belong together")
        return grid, scale, offset


def evaluate(extractor: Extractor, pairs: list[SPairPair], imsize: int = 224, alpha: float = 0.1,
             threshold_by: str = "bbox", match: str = "mutual") -> dict:
    if imsize % extractor.patch_size:
        raise LoreError(f"--imsize {imsize} must be a multiple of the patch size {extractor.patch_size}")
    if match not in MATCHERS or threshold_by not in THRESHOLDS:
        raise LoreError(f"match must be one of {MATCHERS} and threshold_by one of {THRESHOLDS}")
    cache = _GridCache(extractor, imsize)
    # per category: predicted and true target points (original pixels) and thresholds
    preds, gts, thresholds = defaultdict(list), defaultdict(list), defaultdict(list)
    kept_total = 0
    for pair in tqdm(pairs, desc="SPair pairs", leave=False, dynamic_ncols=True):
        src_grid, s_scale, s_off = cache.get(pair.src, pair.src_size, pair.category)
        trg_grid, t_scale, t_off = cache.get(pair.trg, pair.trg_size, pair.category)
        if len(pair.src_kps) == 0:  # nothing to score (still checked against its images)
            continue
        src_xy = torch.from_numpy(pair.src_kps * s_scale + np.asarray(s_off)).to(src_grid.device)
        pred, kept = match_keypoints(src_grid, trg_grid, src_xy, imsize, extractor.patch_size, match)
        pred = (pred.cpu().numpy() - np.asarray(t_off)) / t_scale
        pred[~kept.cpu().numpy()] = np.nan  # a rejected match is never within the threshold
        kept_total += int(kept.sum())
        if threshold_by == "bbox":
            x1, y1, x2, y2 = pair.trg_bbox
            threshold = max(x2 - x1, y2 - y1)
        else:
            threshold = max(pair.trg_size)
        preds[pair.category].append(pred)
        gts[pair.category].append(pair.trg_kps)
        thresholds[pair.category].append(np.full(len(pred), threshold, dtype=np.float64))

    per_category = {c: pck(np.concatenate(preds[c]), np.concatenate(gts[c]), np.concatenate(thresholds[c]),
                           alpha) for c in sorted(preds)}
    all_pred = np.concatenate([p for c in preds for p in preds[c]]) if preds else np.zeros((0, 2))
    all_gt = np.concatenate([g for c in gts for g in gts[c]]) if gts else np.zeros((0, 2))
    all_thr = np.concatenate([t for c in thresholds for t in thresholds[c]]) if thresholds else np.zeros(0)
    finite = [v for v in per_category.values() if np.isfinite(v)]
    return {
        "pck": pck(all_pred, all_gt, all_thr, alpha),
        "pck_category_mean": float(np.mean(finite)) if finite else float("nan"),
        "per_category": per_category,
        "pairs": len(pairs),
        "keypoints": int(len(all_gt)),
        "mutual_fraction": kept_total / len(all_gt) if len(all_gt) else float("nan"),
        "alpha": alpha, "threshold_by": threshold_by, "match": match, "imsize": imsize,
        "layer": extractor.layer,
    }


def format_table(results: dict, title: str) -> str:
    alpha = results["alpha"]
    lines = [title, f"{'category':14s} {'PCK@' + format(alpha, 'g'):>8s}"]
    for category, value in results["per_category"].items():
        lines.append(f"{category:14s} {fmt(value):>8s}")
    lines.append(f"{'all keypoints':14s} {fmt(results['pck']):>8s}")
    lines.append(f"{'category mean':14s} {fmt(results['pck_category_mean']):>8s}")
    lines.append(f"{results['pairs']} pairs, {results['keypoints']} keypoints, --layer {results['layer']} (0-based), "
                 f"match={results['match']}"
                 + (f" (kept {fmt(results['mutual_fraction'], 3)})" if results["match"] == "mutual" else "")
                 + f", threshold by {results['threshold_by']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="SPair-71k folder (PairAnnotation/, JPEGImages/)")
    parser.add_argument("--split", default="test", help="PairAnnotation sub-folder: trn, val or test")
    parser.add_argument("--imsize", type=positive_int, default=224,
                        help="images are letterboxed to imsize x imsize (a multiple of the patch size)")
    parser.add_argument("--alpha", type=positive_float, default=0.1, help="PCK@alpha (default 0.1)")
    parser.add_argument("--threshold-by", choices=THRESHOLDS, default="bbox",
                        help="PCK threshold from the target bounding box (default) or image size")
    parser.add_argument("--match", choices=MATCHERS, default="mutual",
                        help="mutual nearest neighbours (default) or plain nearest neighbour")
    add_layer_argument(parser, "as in the paper; the protocol of Walmer et al. reports each backbone's "
                               "best block")
    parser.add_argument("--limit-pairs", type=positive_int, default=None,
                        help="evaluate this many pairs, spread over the split (quick runs)")
    add_common_arguments(parser)


def main(args: argparse.Namespace) -> dict:
    out = check_out_dir(args.out)
    pairs = read_spair(args.root, args.split, args.limit_pairs)
    extractor = extractor_from_args(args)
    scores = evaluate(extractor, pairs, args.imsize, args.alpha, args.threshold_by, args.match)
    results = {"task": "correspondence", **extractor.describe(), "dataset": f"spair-71k/{args.split}",
               **scores}
    print(format_table(results, f"SPair-71k {args.split}: {results['method']} on {results['backbone']}"))
    write_results(out, results)
    return results
