"""Semi-supervised video object segmentation on DAVIS-2017 by label propagation (DINO protocol).

Protocol (DINO's ``eval_video_segmentation``, no training):

1. Sequences from ``ROOT/ImageSets/2017/<set>.txt``; frames ``ROOT/JPEGImages/480p/<seq>/*.jpg``;
   the first frame's objects from ``ROOT/Annotations/480p/<seq>/<first frame>.png`` (indexed PNG:
   0 background, 1..K objects, 255 void).
2. Frames are resized to ``short_side`` on their shorter side, the longer side floored to a
   multiple of 64 (as DINO; of the patch size when 64 is not a multiple of it).
3. Features: final-normed patch tokens of each frame.
4. Each next frame takes its labels from the first frame and the ``n_last`` previous frames
   (:func:`label_propagation`: cosine affinity within a ``radius``-patch window, top-``topk``
   sources per target patch, softmax at ``temperature``). The soft labels of a frame become a
   source for the next frames.
5. Soft labels are upsampled bilinearly by the patch size, min-max normalised per object, argmax;
   the label map is resized (nearest) to the original frame size and written as an indexed PNG
   with the DAVIS palette, ``OUT/<seq>/<frame>.png``.
6. Score with the DAVIS 2017 semi-supervised evaluation: per object, J (IoU) and F (boundary
   F-measure) on every frame but the first and the last; J&F = (mean J + mean F) / 2, means over
   all objects of all sequences.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import LoreError
from ..io import inside_root
from ..metrics import davis_f, davis_j, davis_statistics
from .common import (Extractor, add_common_arguments, add_layer_argument, check_out_dir, extractor_from_args,
                     fmt, load_image, non_negative_int, positive_float, positive_int, write_results)

VOID = 255


def davis_palette() -> np.ndarray:
    """The DAVIS (PASCAL VOC) colour map, (256, 3) uint8: label bits spread over the colour bits."""
    ids = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for j in range(8):
        bits = (ids >> (3 * j)) & 7
        for channel in range(3):
            palette[:, channel] |= ((bits >> channel) & 1) << (7 - j)
    return palette.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# label propagation
# --------------------------------------------------------------------------------------------

def _band_width(radius: int) -> int:
    """Target rows per band: narrow bands waste less work outside the windows, wide ones make
    fewer, larger matrix products (each parallel region costs thread start-up on a busy CPU)."""
    return max(4, radius)


@functools.lru_cache(maxsize=32)
def _window_plan(h: int, w: int, radius: int, device: str) -> tuple[bool, list[tuple], torch.Tensor]:
    """How to cut the affinity into bands that hold every radius-window.

    Patches are flattened with the longer grid axis outermost, so the sources a band of targets
    can see form one contiguous slice. Returns (long_axis_is_w, [(t0, t1, s0, s1, bias)],
    first_source) with flat target range [t0, t1), source range [s0, s1), an additive
    (t1-t0, s1-s0) bias: 0 inside the square window |di| <= radius, |dj| <= radius (DINO's mask),
    -inf outside, and each target's s0 as an (h*w, 1) tensor. Built from grid coordinates in a
    few milliseconds and cached per (h, w, radius).
    """
    long_is_w = w >= h
    L, S = (w, h) if long_is_w else (h, w)
    if radius <= 0 or radius >= max(h, w) - 1:  # the window covers the whole frame: no bias
        return long_is_w, [(0, L * S, 0, L * S, None)], torch.zeros(L * S, 1, dtype=torch.long, device=device)
    band = _band_width(radius)
    # numpy: small single-threaded element-wise work, no thread start-up cost
    short = np.arange(S)
    plan = []
    first_source = np.zeros((L * S, 1), dtype=np.int64)
    for l0 in range(0, L, band):
        l1 = min(l0 + band, L)
        s0, s1 = max(l0 - radius, 0), min(l1 + radius, L)
        t_long, s_long = np.arange(l0, l1).repeat(S), np.arange(s0, s1).repeat(S)
        t_short, s_short = np.tile(short, l1 - l0), np.tile(short, s1 - s0)
        inside = (np.abs(t_long[:, None] - s_long[None]) <= radius) & \
                 (np.abs(t_short[:, None] - s_short[None]) <= radius)
        bias = torch.from_numpy(np.where(inside, np.float32(0), np.float32(-np.inf))).to(device)
        plan.append((l0 * S, l1 * S, s0 * S, s1 * S, bias))
        first_source[l0 * S: l1 * S] = s0 * S
    return long_is_w, plan, torch.from_numpy(first_source).to(device)


def label_propagation(feat_tar: torch.Tensor, feats_src: torch.Tensor, segs_src: torch.Tensor, h: int,
                      w: int, topk: int = 5, radius: int = 12, temperature: float = 0.1) -> torch.Tensor:
    """Labels of a target frame from source frames (DINO's label propagation step).

    ``feat_tar``: (h*w, d) target patch features; ``feats_src``: (n, d, h*w) source features;
    ``segs_src``: (n, C, h, w) source (soft) labels. Returns (C, h, w).

    Features are L2-normalised; each target patch keeps the ``topk`` largest cosine affinities
    over all source frames within ``radius`` patches (square window; 0 = anywhere), weights them
    by exp(cos / temperature) normalised to sum 1 (a softmax over the kept ones) and averages
    their labels. Same result as the DINO reference (except that DINO also keeps sources tied
    with the k-th value), but only bands around the windows are multiplied, no (h*w)^2 mask is
    stored, and exp runs on k values per patch.
    """
    n, d, hw = feats_src.shape
    C = segs_src.shape[1]
    if feat_tar.shape != (h * w, d) or hw != h * w or segs_src.shape != (n, C, h, w):
        raise ValueError(f"label_propagation: shapes {tuple(feat_tar.shape)}, {tuple(feats_src.shape)}, "
                         f"{tuple(segs_src.shape)} do not fit h={h}, w={w}")
    long_is_w, plan, first_source = _window_plan(h, w, radius, str(feat_tar.device))
    # Lay everything out as (long axis, short axis[, frame]) so a band of rows is a slice.
    L, S = (w, h) if long_is_w else (h, w)
    src_view = feats_src.reshape(n, d, h, w)
    src_view = src_view.permute(3, 2, 0, 1) if long_is_w else src_view.permute(2, 3, 0, 1)
    src = torch.empty(hw * n, d, dtype=feats_src.dtype, device=feats_src.device)
    src.view(L, S, n, d).copy_(src_view)  # row p * n + f: patch p of source frame f
    src.div_(src.norm(dim=1, keepdim=True).clamp_min(1e-12))
    tar = feat_tar.reshape(h, w, d)
    tar = F.normalize((tar.transpose(0, 1) if long_is_w else tar).reshape(hw, d), dim=1)
    k = min(topk, min((s1 - s0) * n for _, _, s0, s1, _ in plan))
    values = torch.empty(hw, k, dtype=tar.dtype, device=tar.device)
    index = torch.empty(hw, k, dtype=torch.long, device=tar.device)
    for t0, t1, s0, s1, bias in plan:
        aff = tar[t0:t1] @ src[s0 * n: s1 * n].T  # (targets, sources x frames)
        if bias is not None:
            aff.view(t1 - t0, s1 - s0, n).add_(bias[:, :, None])
        torch.topk(aff, k, dim=1, out=(values[t0:t1], index[t0:t1]))
    index += first_source * n  # band-local -> global row of ``src``
    # the small per-patch steps run once for the whole frame (few parallel regions)
    weights = torch.softmax(values / temperature, dim=1)
    seg = segs_src.permute(3, 2, 0, 1) if long_is_w else segs_src.permute(2, 3, 0, 1)
    table = seg.reshape(hw * n, C).to(tar.dtype)
    out = torch.einsum("mk,mkc->mc", weights, table[index])
    if long_is_w:
        return out.reshape(w, h, C).permute(2, 1, 0)
    return out.reshape(h, w, C).permute(2, 0, 1)


# --------------------------------------------------------------------------------------------
# DAVIS files
# --------------------------------------------------------------------------------------------

@dataclass
class DavisSequence:
    name: str
    frames: list[Path]
    annotations: list[Path | None]  # per frame, None where the set has no ground truth


def read_davis(root: str | Path, set_name: str = "val", resolution: str = "480p") -> list[DavisSequence]:
    root = Path(root)
    list_file = root / "ImageSets" / "2017" / f"{set_name}.txt"
    if not list_file.is_file():
        found = sorted(p.stem for p in (root / "ImageSets" / "2017").glob("*.txt"))
        hint = f" (found: {', '.join(found)})" if found else " (is --root the DAVIS folder?)"
        raise LoreError(f"DAVIS sequence list {list_file} not found{hint}")
    names = [(i, line.strip()) for i, line in enumerate(_read_text(list_file).splitlines(), 1) if line.strip()]
    if not names:
        raise LoreError(f"DAVIS sequence list {list_file} is empty")
    sequences = []
    for line, name in names:
        # a sequence name becomes a path to read frames from and to write masks to: keep it inside
        frame_dir = inside_root(root / "JPEGImages" / resolution, name, list_file, line)
        inside_root(root / "Annotations" / resolution, name, list_file, line)
        frames = sorted(frame_dir.glob("*.jpg"))
        if not frames:
            raise LoreError(f"DAVIS sequence {name}: no frames (*.jpg) in {frame_dir}")
        ann_dir = root / "Annotations" / resolution / name
        annotations = [ann_dir / f"{f.stem}.png" for f in frames]
        if not annotations[0].is_file():
            raise LoreError(f"DAVIS sequence {name} has no first-frame annotation {annotations[0]}; "
                            "semi-supervised propagation needs it")
        # headers only (no decoding): a frame of another size fails now, not after hours
        size = _image_size(annotations[0])
        for path in frames + [a for a in annotations[1:] if a.is_file()]:
            if _image_size(path) != size:
                other = _image_size(path)
                raise LoreError(f"DAVIS sequence {name}: {path} is {other[0]}x{other[1]} but the first "
                                f"annotation is {size[0]}x{size[1]}; all frames must have the same size")
        sequences.append(DavisSequence(name, frames, [a if a.is_file() else None for a in annotations]))
    return sequences


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LoreError(f"{path} is not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise LoreError(f"cannot read image {path} ({type(e).__name__}: {e})") from None


def read_annotation(path: Path) -> np.ndarray:
    """Indexed PNG -> (H, W) uint8 labels."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise LoreError(f"annotation {path} is a {im.mode} image; DAVIS annotations are indexed "
                                "(palette) PNGs whose pixel values are object ids")
            return np.array(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise LoreError(f"cannot decode annotation {path} ({type(e).__name__}: {e})") from None


def write_annotation(path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
    # plain writes: the caller stages whole sequences and publishes them at once
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def working_size(height: int, width: int, short_side: int, patch: int) -> tuple[int, int]:
    """(H, W) the frames are resized to: shorter side ``short_side`` (floored to the patch size),
    longer side scaled and floored to a multiple of 64 (DINO), or of the patch size."""
    multiple = 64 if 64 % patch == 0 else patch
    short = short_side - short_side % patch
    if height <= width:
        long = int(short * width / height) // multiple * multiple
        return short, max(long, multiple)
    long = int(short * height / width) // multiple * multiple
    return max(long, multiple), short


# --------------------------------------------------------------------------------------------
# protocol
# --------------------------------------------------------------------------------------------

def _frame_features(extractor: Extractor, path: Path, size: tuple[int, int],
                    expect: tuple[int, int]) -> torch.Tensor:
    image = load_image(str(path))
    if image.size != expect:
        raise LoreError(f"frame {path} is {image.size[0]}x{image.size[1]} but the first annotation is "
                        f"{expect[0]}x{expect[1]}; all frames of a sequence must have the same size")
    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    patches = extractor.features(extractor.to_tensor(image))["patches"][0]  # (h, w, D)
    return patches.reshape(-1, patches.shape[-1])


def normalise_mask(mask: torch.Tensor) -> torch.Tensor:
    """Per-channel min-max scaling to [0, 1] of channels that are present (max > 0), as DINO's
    ``norm_mask``; a constant positive channel covers everything (DINO divides 0 by 0 there)."""
    lo = mask.amin(dim=(1, 2), keepdim=True)
    hi = mask.amax(dim=(1, 2), keepdim=True)
    scaled = torch.where(hi > lo, (mask - lo) / (hi - lo).clamp_min(1e-12), torch.ones_like(mask))
    return torch.where(hi > 0, scaled, mask)


def propagate_sequence(extractor: Extractor, seq: DavisSequence, short_side: int = 480, n_last: int = 7,
                       topk: int = 5, radius: int = 12, temperature: float = 0.1,
                       out_dir: Path | None = None, palette: np.ndarray | None = None) -> list[np.ndarray]:
    """Label maps (H, W) uint8 of every frame (the first is the given annotation); with
    ``out_dir`` also written as ``out_dir/<seq>/<frame>.png``."""
    palette = davis_palette() if palette is None else palette
    first = read_annotation(seq.annotations[0])
    H, W = first.shape
    size = working_size(H, W, short_side, extractor.patch_size)
    p = extractor.patch_size
    h, w = size[0] // p, size[1] // p
    objects = np.where(first == VOID, 0, first)
    num_labels = int(objects.max()) + 1
    small = np.array(Image.fromarray(objects).resize((w, h), Image.Resampling.NEAREST))
    first_seg = F.one_hot(torch.from_numpy(small).long(), num_labels).permute(2, 0, 1).float()
    first_feat = _frame_features(extractor, seq.frames[0], size, (W, H))
    first_seg = first_seg.to(first_feat.device)

    labels = [first]
    if out_dir is not None:
        write_annotation(out_dir / seq.name / f"{seq.frames[0].stem}.png", first, palette)
    recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_last)
    for frame in tqdm(seq.frames[1:], desc=seq.name, leave=False, dynamic_ncols=True):
        feat = _frame_features(extractor, frame, size, (W, H))
        feats = torch.stack([first_feat] + [f for f, _ in recent])  # (n, h*w, D)
        segs = torch.stack([first_seg] + [s for _, s in recent])    # (n, C, h, w)
        seg = label_propagation(feat, feats.transpose(1, 2), segs, h, w, topk, radius, temperature)
        recent.append((feat, seg))
        up = F.interpolate(seg[None], scale_factor=p, mode="bilinear", align_corners=False)[0]
        label = normalise_mask(up).argmax(dim=0).to(torch.uint8).cpu().numpy()
        label = np.array(Image.fromarray(label).resize((W, H), Image.Resampling.NEAREST))
        labels.append(label)
        if out_dir is not None:
            write_annotation(out_dir / seq.name / f"{frame.stem}.png", label, palette)
    return labels


def score_sequence(seq: DavisSequence, predictions: list[np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Per object ``"<seq>_<id>"``: per-frame J and F on frames 1..T-2 (the DAVIS semi-supervised
    evaluation drops the first and the last frame; clips of 2 frames keep their second)."""
    gt = np.stack([read_annotation(a) for a in seq.annotations])
    pred = np.stack(predictions)
    if gt.shape != pred.shape:
        raise LoreError(f"DAVIS sequence {seq.name}: annotations of size {gt.shape[1:]} differ from "
                        f"the frames' {pred.shape[1:]}")
    keep = slice(1, -1) if len(gt) > 2 else slice(1, None)
    gt, pred = gt[keep], pred[keep]
    void = gt == VOID
    num_objects = int(np.where(predictions[0] == VOID, 0, predictions[0]).max())
    scores = {}
    for obj in range(1, num_objects + 1):
        j = davis_j(gt == obj, pred == obj, void)
        f = davis_f(gt == obj, pred == obj, void)
        scores[f"{seq.name}_{obj}"] = {"J": np.atleast_1d(j).tolist(), "F": np.atleast_1d(f).tolist()}
    return scores


def evaluate(extractor: Extractor, sequences: list[DavisSequence], out_dir: Path | None = None,
             short_side: int = 480, n_last: int = 7, topk: int = 5, radius: int = 12,
             temperature: float = 0.1) -> dict:
    palette = davis_palette()
    per_object: dict[str, dict] = {}
    unscored = []
    for seq in tqdm(sequences, desc="DAVIS sequences", dynamic_ncols=True):
        predictions = propagate_sequence(extractor, seq, short_side, n_last, topk, radius, temperature,
                                         out_dir, palette)
        if len(seq.frames) < 2 or any(a is None for a in seq.annotations):
            unscored.append(seq.name)  # test sets: only the first frame is annotated
            continue
        for name, values in score_sequence(seq, predictions).items():
            j, f = davis_statistics(values["J"]), davis_statistics(values["F"])
            per_object[name] = {"J": j["mean"], "F": f["mean"], "J_recall": j["recall"],
                                "F_recall": f["recall"], "J_decay": j["decay"], "F_decay": f["decay"]}

    def mean(key: str) -> float:
        values = [v[key] for v in per_object.values()]
        return float(np.mean(values)) if values else float("nan")

    J, Fm = mean("J"), mean("F")
    return {"J": J, "F": Fm, "JF": (J + Fm) / 2 if per_object else float("nan"),
            "J_recall": mean("J_recall"), "J_decay": mean("J_decay"),
            "F_recall": mean("F_recall"), "F_decay": mean("F_decay"),
            "per_object": per_object, "sequences": len(sequences), "unscored": unscored,
            "short_side": short_side, "n_last": n_last, "topk": topk, "radius": radius,
            "temperature": temperature}


def format_table(results: dict, title: str) -> str:
    lines = [title, f"{'object':28s} {'J':>7s} {'F':>7s} {'J&F':>7s}"]
    for name, r in results["per_object"].items():
        lines.append(f"{name:28s} {fmt(r['J']):>7s} {fmt(r['F']):>7s} {fmt((r['J'] + r['F']) / 2):>7s}")
    lines.append(f"{'mean (' + str(len(results['per_object'])) + ' objects)':28s} {fmt(results['J']):>7s} "
                 f"{fmt(results['F']):>7s} {fmt(results['JF']):>7s}")
    if results["unscored"]:
        lines.append(f"not scored (no ground truth past the first frame): {', '.join(results['unscored'])}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="DAVIS folder (ImageSets/, JPEGImages/, Annotations/)")
    parser.add_argument("--set", default="val", help="sequence list ImageSets/2017/<set>.txt (default val)")
    parser.add_argument("--resolution", default="480p", help="frame folder under JPEGImages/ and Annotations/")
    parser.add_argument("--short-side", type=positive_int, default=480, help="frames' shorter side (default 480)")
    parser.add_argument("--n-last-frames", type=non_negative_int, default=7,
                        help="previous frames used as sources besides the first (default 7)")
    parser.add_argument("--topk", type=positive_int, default=5, help="sources kept per patch (default 5)")
    parser.add_argument("--radius", type=non_negative_int, default=12,
                        help="neighbourhood radius in patches, 0 = whole frame (default 12)")
    parser.add_argument("--temperature", type=positive_float, default=0.1,
                        help="affinity temperature (default 0.1)")
    add_layer_argument(parser, "as in DINO's label propagation")
    add_common_arguments(parser)


def _publish(staging: Path, out: Path) -> None:
    """Move the finished sequence folders from ``staging`` into ``out`` (same file system)."""
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(staging.iterdir()):
        target = out / folder.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(folder, target)


def main(args: argparse.Namespace) -> dict:
    out = check_out_dir(args.out)
    sequences = read_davis(args.root, args.set, args.resolution)
    extractor = extractor_from_args(args)
    if args.short_side < extractor.patch_size:
        raise LoreError(f"--short-side {args.short_side} is smaller than the patch size {extractor.patch_size}")
    # Masks are written next to OUT first and moved in only when every sequence succeeded, so a
    # failure (a corrupt frame, Ctrl-C) leaves an existing OUT as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        scores = evaluate(extractor, sequences, staging, args.short_side, args.n_last_frames, args.topk,
                          args.radius, args.temperature)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    results = {"task": "vos", **extractor.describe(), "dataset": f"davis-2017/{args.set}",
               "layer": extractor.layer, **scores}
    print(format_table(results, f"DAVIS-2017 {args.set}: {results['method']} on {results['backbone']}"))
    write_results(out, results)
    return results
