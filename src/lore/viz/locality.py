"""``lore locality``: how local the attention of B-B and of a trained run is, block by block.

Definitions (all from the softmax attention weights the ViT computes, see ``lore.viz.attention``):

- ``mean_distance`` (pixels): the ViT paper's "mean attention distance". For every patch query,
  the attention-weighted average of the Euclidean pixel distance between the query patch centre
  and each key patch centre; averaged over all patch queries, then over images. The weights are
  the query's row restricted to the patch keys and *renormalised to sum to 1*: CLS, register and
  prompt tokens have no position, and without renormalisation the mass they take (10 prompts per
  layer for LORE) would count as distance 0 and fake locality. ``patch_mass`` reports the share
  that was kept.
- ``cls_distance`` (pixels): the same for the CLS query, with CLS placed at the image centre
  (its row over the patch keys, renormalised). Low = CLS looks at the middle of the image.
- ``cls_spread`` (pixels): attention-weighted mean distance of the patches CLS attends to from
  the centroid of its attention. Low = CLS looks at one compact region, wherever it is.
- ``cls_entropy`` (nats): entropy of the CLS row over the patch keys (renormalised). A uniform
  row gives log(N) (``max_entropy``); attention on one patch gives 0.
- ``cls_patch_mass``: share of CLS attention that lands on patches at all.

Every quantity is computed per head and per image; JSON holds per block the mean over heads and
images (``<name>``) and the per-head means (``<name>_per_head``). Blocks are 0-based.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import LoreError

STATS = ("mean_distance", "cls_distance", "cls_spread", "cls_entropy", "patch_mass", "cls_patch_mass")


def patch_centres(h: int, w: int, patch_size: int) -> torch.Tensor:
    """(h*w, 2) pixel (row, col) centres of the patches, row-major like the token order."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (torch.stack([rows, cols], dim=-1).reshape(-1, 2).double() + 0.5) * patch_size


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dim; 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def layer_stats(attn: torch.Tensor, grid: tuple[int, int], patch_size: int, num_prefix: int,
                num_prompts: int) -> dict[str, torch.Tensor]:
    """Locality statistics of one block's attention (B, H, T, T), layout [prefix, prompts, patches].

    Returns {name: (B, H)} for every name in :data:`STATS` (see the module docstring).
    """
    h, w = grid
    start = num_prefix + num_prompts
    if attn.shape[-1] != start + h * w:
        raise ValueError(f"attention over {attn.shape[-1]} tokens does not fit {num_prefix} prefix + "
                         f"{num_prompts} prompt + {h}x{w} patch tokens")
    attn = attn.double()
    patch = attn[:, :, start:, start:]  # (B, H, N, N) patch queries -> patch keys
    cls = attn[:, :, 0, start:]  # (B, H, N)
    patch_mass, cls_mass = patch.sum(-1), cls.sum(-1)
    patch = patch / patch_mass[..., None]
    cls = cls / cls_mass[..., None]
    centres = patch_centres(h, w, patch_size).to(attn.device)  # (N, 2)
    dist = torch.cdist(centres, centres)  # (N, N)
    image_centre = centres.new_tensor([h * patch_size / 2, w * patch_size / 2])
    centroid = cls @ centres  # (B, H, 2)
    return {
        "mean_distance": (patch * dist).sum(-1).mean(-1),
        "cls_distance": (cls * (centres - image_centre).norm(dim=-1)).sum(-1),
        "cls_spread": (cls * (centres - centroid[..., None, :]).norm(dim=-1)).sum(-1),
        "cls_entropy": entropy(cls),
        "patch_mass": patch_mass.mean(-1),
        "cls_patch_mass": cls_mass,
    }


@torch.no_grad()
def model_locality(model: nn.Module, images: torch.Tensor,
                   batch_size: int = 16) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """({name: (depth, heads)} per-head means over the images for every block, token grid)."""
    device = next(model.parameters()).device
    depth = model.black_box.depth
    patch_size = model.black_box.patch_size
    sums: dict[str, torch.Tensor] = {}
    grid = (0, 0)
    for start in range(0, len(images), batch_size):
        f = model.features(images[start:start + batch_size].to(device), attn_layers=tuple(range(depth)))
        grid = tuple(f["patches"].shape[1:3])
        for layer in range(depth):
            stats = layer_stats(f["attn"][layer], grid, patch_size, f["num_prefix"], f["num_prompts"])
            for name, value in stats.items():
                sums.setdefault(name, torch.zeros(depth, value.shape[1], dtype=torch.float64))
                sums[name][layer] += value.sum(0).cpu()
    return {name: (s / len(images)).numpy() for name, s in sums.items()}, grid


def summarise(per_head: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for name in STATS:
        out[name] = per_head[name].mean(axis=1).tolist()
        out[f"{name}_per_head"] = per_head[name].tolist()
    return out


def plot(result: dict, out: Path) -> None:
    from matplotlib.figure import Figure

    from ..io import atomic_save

    panels = (("mean_distance", "mean attention distance (px)", True),
              ("cls_distance", "CLS distance from image centre (px)", False),
              ("cls_spread", "CLS spread around its centroid (px)", False),
              ("cls_entropy", "CLS entropy over patches (nats)", False))
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2).flat
    layers = result["layers"]
    for ax, (key, title, heads) in zip(axes, panels):
        for i, (name, stats) in enumerate(result["models"].items()):
            colour = f"C{i}"
            ax.plot(layers, stats[key], "o-", color=colour, label=name)
            if heads:  # the ViT paper's view: one dot per head
                per_head = np.asarray(stats[f"{key}_per_head"])
                xs = np.repeat(layers, per_head.shape[1]) + 0.08 * (2 * i - 1)
                ax.scatter(xs, per_head.ravel(), s=8, color=colour, alpha=0.35)
        if key == "cls_entropy":
            ax.axhline(result["max_entropy"], color="grey", ls="--", lw=1, label="uniform (log N)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("block (0-based)")
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"locality: {result['method']} vs B-B on {result['backbone']} "
                 f"({result['n_images']} images, {result['img_size']} px)", fontsize=11)
    atomic_save(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by `lore train`")
    parser.add_argument("--data", help="dataset (default: the run's training data)")
    parser.add_argument("--format", default="imagefolder", help="dataset format of --data")
    parser.add_argument("--split", default="test", help="split of --data (default: test)")
    parser.add_argument("--n", type=int, default=64, help="images, spread over the split (default 64)")
    parser.add_argument("--out", help="JSON file (default RUN_DIR/locality.json); the plot goes "
                        "next to it as .png")
    parser.add_argument("--img-size", type=int, help="input size (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--checkpoint", help="backbone weights, if they moved since training")


def main(args: argparse.Namespace) -> dict:
    from ..checkpoint import load_run
    from ..io import atomic_write_json, check_output_file
    from ..models import build_model
    from ..runs import resolve_device
    from .attention import dataset_samples, image_size, load_images, run_data_config

    if args.batch_size < 1:
        raise LoreError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = check_output_file(args.out or Path(args.run) / "locality.json", suffixes=(".json",),
                            side_files=(".png",))
    device = resolve_device(args.device)
    model, meta = load_run(args.run, device, backbone_checkpoint=args.checkpoint)
    samples = dataset_samples(args.data, args.format, args.split, args.n, meta, check_classes=False,
                              run=args.run)
    size = image_size(meta, model, args.img_size)
    images = load_images([p for p, _ in samples], size, run_data_config(model, args.run))
    method = str(meta.get("method", model.method))
    bb = build_model("b-b", model.black_box, 0).eval()
    models = {"b-b": bb} if method == "b-b" else {"b-b": bb, method: model}
    bbox = model.black_box
    stats, grids = {}, {}
    for name, m in models.items():
        per_head, grids[name] = model_locality(m, images, args.batch_size)
        stats[name] = summarise(per_head)
    grid = grids["b-b"]
    result = {
        "run": str(args.run), "method": method, "backbone": meta.get("backbone"),
        "data": str(args.data or meta.get("data")), "split": args.split, "n_images": len(samples),
        "img_size": size, "patch_size": bbox.patch_size, "grid": list(grid),
        "layers": list(range(bbox.depth)), "max_entropy": math.log(grid[0] * grid[1]),
        "definitions": {
            "mean_distance": "pixels; patch queries, weights over patch keys renormalised to 1, "
                             "distance between patch centres; mean over queries, heads, images",
            "cls_distance": "pixels; CLS placed at the image centre, its weights over patch keys "
                            "renormalised to 1",
            "cls_spread": "pixels; CLS-weighted mean distance of patches from the CLS attention centroid",
            "cls_entropy": "nats; entropy of CLS over patch keys (renormalised); uniform = max_entropy",
            "patch_mass": "share of a patch query's attention on patch keys (before renormalising)",
            "cls_patch_mass": "share of CLS attention on patch keys (before renormalising)",
        },
        "models": stats,
    }
    atomic_write_json(out, result)
    png = out.with_suffix(".png")
    plot(result, png)
    for name, stats in result["models"].items():
        print(f"{name:>12s}: mean attention distance {stats['mean_distance'][0]:.1f} -> "
              f"{stats['mean_distance'][-1]:.1f} px (first -> last block), CLS entropy last block "
              f"{stats['cls_entropy'][-1]:.3f} / {result['max_entropy']:.3f} nats")
    print(f"written: {out} and {png}")
    return result
