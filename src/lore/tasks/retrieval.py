"""Image retrieval on the revisited Oxford 5k / Paris 6k benchmarks (Radenovic et al., 2018).

Protocol (DINO's ``eval_image_retrieval``, no fine-tuning):

1. Read ``ROOT/<dataset>/gnd_<dataset>.pkl`` (``imlist``, ``qimlist``, ``gnd[i] = {bbx, easy,
   hard, junk}``) and the images ``ROOT/<dataset>/jpg/<name>.jpg``.
2. Every image is shrunk (never enlarged) so its longer side is ``imsize`` (PIL thumbnail), and
   cropped to whole patches. Queries are used whole as in DINO; ``crop_queries`` crops them to
   their bounding box first, as the official revisited protocol does.
3. Feature: the final-normed CLS token (``multiscale``: the mean over scales 1, 1/sqrt(2), 1/2),
   L2-normalised.
4. Rank the database by cosine similarity to each query and score Easy / Medium / Hard with
   :func:`lore.metrics.revisited_map` (mAP, mP@1/5/10).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..errors import LoreError
from ..io import inside_root, load_pickle_safe
from ..metrics import revisited_map
from .common import (Extractor, add_common_arguments, check_out_dir, extractor_from_args, fmt,
                     load_image, positive_int, write_results)

DATASETS = ("roxford5k", "rparis6k")
KAPPAS = (1, 5, 10)
MULTISCALE = (1.0, 2 ** -0.5, 0.5)


@dataclass
class RevisitedDataset:
    name: str
    images: list[Path]           # database images, in ``imlist`` order
    queries: list[Path]          # query images, in ``qimlist`` order
    bbx: list[tuple[float, ...]] | None  # query boxes (x1, y1, x2, y2), None if absent
    gnd: list[dict]              # per query: easy, hard, junk index arrays into ``images``


def _indices(value, what: str, size: int, where: Path) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise LoreError(f"{where}: {what} must be a list of image indices") from None
    if len(arr) and (arr.min() < 0 or arr.max() >= size):
        raise LoreError(f"{where}: {what} holds index {int(arr.max() if arr.max() >= size else arr.min())} "
                        f"outside the {size} database images; the file does not match its imlist")
    return arr


def read_revisited(root: str | Path, dataset: str) -> RevisitedDataset:
    """Read the ground truth and check that every image it names is on disk."""
    if dataset not in DATASETS:
        raise LoreError(f"--dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    base = Path(root) / dataset
    gnd_path = base / f"gnd_{dataset}.pkl"
    if not gnd_path.is_file():
        raise LoreError(f"ground truth {gnd_path} not found: put the revisitop file gnd_{dataset}.pkl "
                        f"and the jpg/ folder under {base}")
    cfg = load_pickle_safe(gnd_path, what="ground-truth file")
    if not isinstance(cfg, dict):
        raise LoreError(f"{gnd_path}: expected a dict with imlist, qimlist and gnd, got {type(cfg).__name__}")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in cfg]
    if missing:
        raise LoreError(f"{gnd_path}: missing key(s) {', '.join(missing)}; expected the revisitop "
                        "format (imlist, qimlist, gnd)")
    imlist, qimlist, gnd_raw = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
    if len(gnd_raw) != len(qimlist):
        raise LoreError(f"{gnd_path}: {len(gnd_raw)} gnd entries for {len(qimlist)} queries")
    gnd: list[dict] = []
    bbx: list[tuple[float, ...]] | None = []
    for i, entry in enumerate(gnd_raw):
        if not isinstance(entry, dict):
            raise LoreError(f"{gnd_path}: gnd[{i}] must be a dict with easy, hard, junk")
        lacking = [k for k in ("easy", "hard", "junk") if k not in entry]
        if lacking:
            raise LoreError(f"{gnd_path}: gnd[{i}] lacks {', '.join(lacking)}")
        gnd.append({k: _indices(entry[k], f"gnd[{i}]['{k}']", len(imlist), gnd_path)
                    for k in ("easy", "hard", "junk")})
        box = entry.get("bbx")
        if bbx is not None and box is not None and np.asarray(box).size == 4:
            bbx.append(tuple(float(v) for v in np.asarray(box, dtype=np.float64).reshape(4)))
        else:
            bbx = None
    image_dir = base / "jpg"
    images = [inside_root(image_dir, f"{name}.jpg", f"{gnd_path} (imlist[{i}])") for i, name in enumerate(imlist)]
    queries = [inside_root(image_dir, f"{name}.jpg", f"{gnd_path} (qimlist[{i}])") for i, name in enumerate(qimlist)]
    absent = [p for p in images + queries if not p.is_file()]
    if absent:
        raise LoreError(f"{len(absent)} image(s) named in {gnd_path.name} are missing, e.g. {absent[0]}")
    return RevisitedDataset(dataset, images, queries, bbx, gnd)


def load_retrieval_image(path: Path, imsize: int, box: tuple[float, ...] | None = None) -> Image.Image:
    image = load_image(str(path))
    if box is not None:  # in original pixel coordinates, hence before any resizing
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        if x2 <= x1 or y2 <= y1:
            raise LoreError(f"query {path.name}: empty bounding box {box}")
        image = image.crop((x1, y1, x2, y2))
    image.thumbnail((imsize, imsize), Image.Resampling.LANCZOS)
    return image


def cls_feature(extractor: Extractor, image: torch.Tensor, multiscale: bool) -> torch.Tensor:
    """L2-normalised CLS feature of one (3, H, W) image (mean over scales when ``multiscale``)."""
    feats = []
    for scale in MULTISCALE if multiscale else (1.0,):
        x = image[None]
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        feats.append(extractor.features(extractor.crop_to_patches(x))["cls"][0])
    return F.normalize(torch.stack(feats).mean(dim=0), dim=0)


def extract(extractor: Extractor, paths: list[Path], imsize: int, multiscale: bool,
            boxes: list[tuple[float, ...]] | None = None, desc: str = "images") -> torch.Tensor:
    """(N, D) L2-normalised features, one image at a time (sizes differ)."""
    out = []
    for i, path in enumerate(tqdm(paths, desc=desc, leave=False, dynamic_ncols=True)):
        image = load_retrieval_image(path, imsize, boxes[i] if boxes is not None else None)
        out.append(cls_feature(extractor, extractor.to_tensor(image), multiscale).cpu())
    return torch.stack(out)


def rank(database: torch.Tensor, queries: torch.Tensor) -> np.ndarray:
    """(num_db, num_queries) database indices by decreasing cosine similarity, per query."""
    sim = database @ queries.T
    return torch.argsort(sim, dim=0, descending=True, stable=True).numpy()


def evaluate(extractor: Extractor, data: RevisitedDataset, imsize: int = 224, multiscale: bool = False,
             crop_queries: bool = False) -> dict:
    if crop_queries and data.bbx is None:
        raise LoreError(f"--crop-queries: the ground truth of {data.name} has no query bbx")
    db = extract(extractor, data.images, imsize, multiscale, desc=f"{data.name} database")
    q = extract(extractor, data.queries, imsize, multiscale, data.bbx if crop_queries else None,
                desc=f"{data.name} queries")
    scores = revisited_map(rank(db, q), data.gnd, KAPPAS)
    return {**scores, "kappas": list(KAPPAS), "queries": len(data.queries), "images": len(data.images)}


def format_table(results: dict, title: str) -> str:
    head = f"{'':8s} {'mAP':>7s} " + " ".join(f"{'mP@' + str(k):>7s}" for k in results["kappas"])
    lines = [title, head]
    for level in ("easy", "medium", "hard"):
        r = results[level]
        lines.append(f"{level.capitalize():8s} {fmt(r['map']):>7s} "
                     + " ".join(f"{fmt(v):>7s}" for v in r["mp"]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True,
                        help="folder holding <dataset>/gnd_<dataset>.pkl and <dataset>/jpg/")
    parser.add_argument("--imsize", type=positive_int, default=224,
                        help="longer image side after shrinking (default 224, as DINO)")
    parser.add_argument("--multiscale", action="store_true",
                        help="average the features at scales 1, 1/sqrt(2), 1/2")
    parser.add_argument("--crop-queries", action="store_true",
                        help="crop queries to their bbx (official protocol; DINO does not)")
    add_common_arguments(parser)


def main(args: argparse.Namespace) -> dict:
    out = check_out_dir(args.out)
    data = read_revisited(args.root, args.dataset)
    extractor = extractor_from_args(args)
    if args.imsize < extractor.patch_size:
        raise LoreError(f"--imsize {args.imsize} is smaller than the patch size {extractor.patch_size}")
    scores = evaluate(extractor, data, args.imsize, args.multiscale, args.crop_queries)
    results = {"task": "retrieval", **extractor.describe(), "dataset": args.dataset, **scores,
               "imsize": args.imsize, "multiscale": bool(args.multiscale),
               "crop_queries": bool(args.crop_queries)}
    print(format_table(results, f"{args.dataset}: {results['method']} on {results['backbone']} "
                                f"({scores['queries']} queries, {scores['images']} images)"))
    write_results(out, results)
    return results
