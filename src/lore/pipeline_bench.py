"""``lore bench --pipeline FOLDER``: which side waits, the input pipeline or the model?

For the images under FOLDER (every image file, recursively; at most ``--images``), on this
machine: the training loader's images/s (decode + RandomResizedCrop + flip + to-tensor, the
training transform of ``lore train``) for each worker count, with the decoded images kept in
memory (``--cache-images on``) and without, beside the model's training images/s from
:func:`lore.bench.run` for the same backbone, image size and batch. The loader is timed after one
warm-up pass (workers started, the image cache filled); the cache's one-off decode is reported on
its own.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from .errors import LoreError


def _loader_images_per_s(dataset, workers: int, batch: int, passes: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers > 0 else None,
                                         generator=torch.Generator().manual_seed(0))
    for _ in loader:  # warm-up: workers started
        pass
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        for _ in loader:
            pass
        times.append(time.perf_counter() - start)
    return len(dataset) / statistics.median(times)


def run(folder: str, workers: list[int], img_size: int, batch: int, passes: int, images: int) -> dict:
    """The loader's images/s per (worker count, image cache) and the one-off decode time."""
    from .data.datasets import ImageDataset, list_images_recursive
    from .data.image_cache import CachedImageDataset
    from .data.transforms import train_transform

    root = Path(folder)
    if not root.is_dir():
        raise LoreError(f"--pipeline {folder}: not a folder of images")
    files = list_images_recursive(root)[:images]
    if not files:
        raise LoreError(f"--pipeline {folder}: no image files under it")
    samples = [(str(p), 0) for p in files]
    # ImageNet statistics and bicubic resizing, as the timm ViTs use
    transform = train_transform(img_size, {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                                           "interpolation": "bicubic"})
    start = time.perf_counter()
    cached = CachedImageDataset(samples, transform)
    decode_s = time.perf_counter() - start
    plain = ImageDataset(samples, transform)
    loader = {}
    for w in workers:
        for name, dataset in (("decode", plain), ("cached", cached)):
            loader[f"{name}/{w}"] = round(_loader_images_per_s(dataset, w, batch, passes), 2)
            # one line redrawn on a terminal, one line each in a log file
            print(f"\rloader {name} with {w} worker(s): {loader[f'{name}/{w}']:.1f} images/s",
                  end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return {"images": len(samples), "decode_once_s": round(decode_s, 3), "loader_images_per_s": loader}


def main(args, model_run) -> dict:
    """The pipeline report: the loader figures, and the model's training images/s (``model_run``:
    :func:`lore.bench.run`) for the fastest of --methods (the one the loader must keep up with)."""
    try:
        workers = sorted({int(w) for w in args.pipeline_workers.split(",") if w.strip()})
    except ValueError:
        raise LoreError(f"--pipeline-workers: a comma list of worker counts, got {args.pipeline_workers!r}") from None
    if not workers or min(workers) < 0 or args.pipeline_images < 1 or args.pipeline_passes < 1:
        raise LoreError("--pipeline-workers must list counts >= 0, --pipeline-images and --pipeline-passes >= 1")
    pipeline = run(args.pipeline, workers, args.img_size, args.batch, args.pipeline_passes, args.pipeline_images)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    model = model_run(methods)
    fastest = max(model["methods"], key=lambda m: model["methods"][m]["train_images_per_s"])
    return {"pipeline": pipeline, "workers": workers, "method": fastest,
            "model_train_images_per_s": model["methods"][fastest]["train_images_per_s"],
            "model": model["methods"], "config": {**model["config"], "folder": str(args.pipeline)}}


def format_table(report: dict) -> str:
    p = report["pipeline"]
    model = report["model_train_images_per_s"]
    lines = [f"{p['images']} images, decoded once in {p['decode_once_s']:.2f} s; model ({report['method']}) "
             f"training: {model:.1f} images/s",
             f"{'workers':>7} {'decode img/s':>13} {'cached img/s':>13} {'cached/decode':>14} {'who waits':>10}"]
    for w in report["workers"]:
        d, c = p["loader_images_per_s"][f"decode/{w}"], p["loader_images_per_s"][f"cached/{w}"]
        waits = "model" if min(d, c) >= model else ("loader" if max(d, c) < model else "loader w/o cache")
        lines.append(f"{w:>7} {d:>13.1f} {c:>13.1f} {c / d:>14.2f} {waits:>10}")
    return "\n".join(lines)
