"""``lore attention``: where the CLS token of the plain backbone (B-B) and of a trained run looks,
and where KLA looks for a class, overlaid on the input images. With ``--backbone NAME`` instead of
``--run`` only the bare pre-trained backbone is shown (the paper's figure 1a), no training needed.

Every map is a row of the softmax attention matrix the ViT computes in the chosen block, as
returned by ``BlackBox.forward(attn_layers=...)`` (recomputed there from the block's own q/k
projections, because timm's fused attention kernel never materialises the weights). No gradients,
no rollout: what is shown is what the block used.

Outputs, next to ``--out FIG.png``:
- ``FIG.png``: per image one row: input | B-B CLS | KLA (class) | run CLS (``--backbone``: input |
  B-B CLS); with ``--per-head`` more rows per image, one panel per head of B-B and of the run.
- ``FIG.npz``: the raw maps at token-grid resolution (see :func:`compute_maps` for the keys), so
  numbers can be checked; ``FIG.json``: what was drawn (images, classes, layer, notes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LoreError

# --------------------------------------------------------------------------------------------
# inputs shared with ``lore locality``


def pick_evenly(total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(total)``: dataset lists are sorted by class, so
    the first n images would all show one class."""
    if n < 1:
        raise LoreError(f"--n must be >= 1, got {n}")
    return sorted({int(i) for i in np.linspace(0, total - 1, min(n, total)).round()})


def run_data_config(model: nn.Module, run: str | None) -> dict:
    """The backbone's mean / std with the crop the run was tested with (not the backbone's own);
    a bare backbone's own."""
    from ..runs import saved_config
    from ..runs import run_data_config as with_run_crop

    return with_run_crop(saved_config(run), model.black_box) if run else dict(model.black_box.data_config)


def dataset_samples(data: str | None, fmt: str, split: str, n: int, meta: dict,
                    check_classes: bool, run: str | None = None) -> list[tuple[str, int]]:
    """``n`` (path, label) samples of a split; ``data`` defaults to the run's training data, read
    the way the run read it (a paper dataset as distributed, another in its --format)."""
    from ..data import load_dataset
    from ..data.catalog import load_paper_dataset
    from ..runs import saved_config

    root = data or meta.get("data")
    if not root:
        raise LoreError("no images given: pass --data PATH (or --images IMG...)")
    cfg = saved_config(run) if run and not data else None
    if cfg is not None and cfg.dataset:
        ds = load_paper_dataset(cfg.dataset, root, cfg.split_file)
    elif cfg is not None:
        ds = load_dataset(root, cfg.format, cfg.classnames, cfg.image_dir, cfg.holdout)
    else:
        ds = load_dataset(root, fmt)
    if check_classes and meta.get("classnames") and ds.classnames != meta["classnames"]:
        raise LoreError(f"--data {root}: its {len(ds.classnames)} classes are not the "
                        f"{len(meta['classnames'])} the run was trained on, so its labels cannot name "
                        "the run's classes; pass the run's dataset or use --images")
    samples = ds.get(split)
    return [samples[i] for i in pick_evenly(len(samples), n)]


def load_images(paths: list[str], img_size: int, data_config: dict) -> torch.Tensor:
    """(N, 3, S, S) normalised tensors, with the evaluation transform the run is tested with."""
    from ..data import eval_transform, load_image

    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise LoreError(f"image not found: {missing[0]}")
    transform = eval_transform(img_size, data_config)
    return torch.stack([transform(load_image(p)) for p in paths])


def to_display(images: torch.Tensor, data_config: dict) -> np.ndarray:
    """Undo the normalisation: (N, S, S, 3) uint8, exactly the pixels the model saw."""
    mean = torch.tensor(data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"]).view(1, 3, 1, 1)
    rgb = (images.cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def image_size(meta: dict, model: nn.Module, override: int | None) -> int:
    if override:
        return override
    if meta.get("img_size"):
        return int(meta["img_size"])
    return int(model.black_box.vit.patch_embed.img_size[0])


def resolve_layer(layer: int, depth: int) -> int:
    if not -depth <= layer < depth:
        raise LoreError(f"--layer {layer}: the backbone has {depth} blocks (0..{depth - 1}, or -1 for the last)")
    return layer % depth


# --------------------------------------------------------------------------------------------
# maps


def cls_attention(features: dict, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLS query's attention in block ``layer``.

    Returns the full row over all keys (B, heads, T) (sums to 1: prefix, prompts and patches) and
    its patch part on the token grid (B, heads, h, w), not renormalised, so a map's total is the
    share of attention CLS gives to the image patches.
    """
    attn = features["attn"][layer]  # (B, heads, T, T), layout [prefix, prompts, patches]
    row = attn[:, :, 0]
    start = features["num_prefix"] + features["num_prompts"]
    h, w = features["patches"].shape[1:3]
    return row, row[..., start:].reshape(*row.shape[:2], h, w)


def is_bare(model: nn.Module) -> bool:
    """The plain backbone (B-B) itself: nothing trained to compare it with, no classes to predict."""
    return model.bare


def has_kla(model: nn.Module) -> bool:
    return model.kla_module() is not None


@torch.no_grad()
def compute_maps(model: nn.Module, images: torch.Tensor, layer: int, labels: list[int] | None = None,
                 batch_size: int = 16) -> dict[str, np.ndarray]:
    """Attention maps of B-B (the run's own frozen backbone, no prompts) and of the run's model.

    Keys (N images, H heads, T tokens, h x w grid):
    ``bb_cls_row`` / ``run_cls_row`` (N, H, T) full CLS rows; ``bb_cls_heads`` / ``run_cls_heads``
    (N, H, h, w) patch part per head; ``bb_cls`` / ``run_cls`` (N, h, w) heads averaged;
    ``pred`` (N,) the run's predicted class; with KLA: ``kla`` (N, h, w) KLA attention of the
    class ``kla_class`` (N,), the true class where ``labels`` are given, else the prediction.
    For a bare backbone (:func:`is_bare`) only the ``bb_*`` keys.
    """
    from ..models import build_model

    device = next(model.parameters()).device
    bb = build_model("b-b", model.black_box, 0).eval()
    out: dict[str, list[torch.Tensor]] = {}

    def add(key: str, value: torch.Tensor) -> None:
        out.setdefault(key, []).append(value.float().cpu())

    kla = has_kla(model)
    bare = is_bare(model)
    label_t = torch.tensor(labels) if labels is not None else None
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        for name, m in (("bb", bb),) if bare else (("bb", bb), ("run", model)):
            row, heads = cls_attention(m.features(x, attn_layers=(layer,)), layer)
            add(f"{name}_cls_row", row)
            add(f"{name}_cls_heads", heads)
            add(f"{name}_cls", heads.mean(dim=1))
        if bare:
            continue
        pred = model(x).argmax(dim=-1)
        add("pred", pred)
        if kla:
            classes = label_t[start:start + batch_size].to(device) if label_t is not None else pred
            add("kla", model.kla_attention(x, classes))
            add("kla_class", classes)
    maps = {k: torch.cat(v).numpy() for k, v in out.items()}
    for k in ("pred", "kla_class"):
        if k in maps:
            maps[k] = maps[k].astype(np.int64)
    return maps


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """(..., h, w) -> (..., size, size), bilinear: the token grid laid over the image's pixels."""
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    lead = t.shape[:-2]
    t = F.interpolate(t.reshape(-1, 1, *t.shape[-2:]), size=(size, size), mode="bilinear",
                      align_corners=False)
    return t.reshape(*lead, size, size).numpy()


# --------------------------------------------------------------------------------------------
# figure


def render(pixels: np.ndarray, panels: list[list[tuple[str, int, np.ndarray | None]]], out: Path,
           alpha: float = 0.55) -> None:
    """Draw rows of panels into ``out`` (its suffix picks the format)."""
    from ..io import atomic_save

    fig = figure(pixels, panels, alpha)
    fmt = out.suffix.lstrip(".").lower() or "png"
    atomic_save(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))


def figure(pixels: np.ndarray, panels: list[list[tuple[str, int, np.ndarray | None]]], alpha: float = 0.55):
    """Rows of panels (title, image index, upsampled map or None for the bare input) as a Figure."""
    from matplotlib.figure import Figure

    rows, cols = len(panels), max(len(r) for r in panels)
    # fixed spacing in inches (2 in panels, room for two title lines); much faster than the
    # constrained layout for the many axes of --per-head
    side, gap, head, margin = 2.0, 0.08, 0.4, 0.08
    width, height = cols * side + (cols - 1) * gap + 2 * margin, rows * (side + head) + margin
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=margin / width, right=1 - margin / width, bottom=margin / height,
                        top=1 - head / height, wspace=gap / side, hspace=head / side)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(panels):
        for c, (title, i, heat) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(pixels[i], interpolation="nearest")
            if heat is not None:
                # each panel gets its own colour range: the maps differ in scale, we compare shape
                ax.imshow(heat, cmap="jet", alpha=alpha, interpolation="nearest")
            ax.set_title(title, fontsize=7)
    return fig


def build_panels(names: list[str], maps: dict[str, np.ndarray], size: int, method: str,
                 classnames: list[str], class_source: str, per_head: bool):
    up = {k: upsample(maps[k], size) for k in ("bb_cls", "run_cls", "kla", "bb_cls_heads", "run_cls_heads")
          if k in maps and (per_head or "heads" not in k)}
    label = (lambda c: classnames[c] if 0 <= c < len(classnames) else str(c))
    panels = []
    for i, name in enumerate(names):
        # the share of CLS attention that lands on patches at all (the rest goes to CLS/prompts)
        title = f"{name}\npred: {label(int(maps['pred'][i]))}" if "pred" in maps else name
        row = [(title, i, None),
               (f"B-B CLS, heads mean\n{maps['bb_cls'][i].sum():.0%} on patches", i, up["bb_cls"][i])]
        if "kla" in up:
            row.append((f"KLA: {label(int(maps['kla_class'][i]))}\n({class_source})", i, up["kla"][i]))
        if "run_cls" in up:
            row.append((f"{method} CLS, heads mean\n{maps['run_cls'][i].sum():.0%} on patches", i,
                        up["run_cls"][i]))
        panels.append(row)
        if per_head:
            for key, who in (("bb_cls_heads", "B-B"), ("run_cls_heads", method)):
                if key in up:
                    panels.append([(f"{who} head {h}", i, m) for h, m in enumerate(up[key][i])])
    return panels


# --------------------------------------------------------------------------------------------
# command


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
BARE_IMG_SIZE = 224  # --backbone without --img-size: the paper's input size, not the hub's (DINOv2: 518)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="run directory written by `lore train`")
    model.add_argument("--backbone", help="timm ViT name: the bare pre-trained backbone only (B-B; "
                       "needs --data or --images)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="with --backbone: load pre-trained weights (default: yes)")
    parser.add_argument("--backbone-args", help="with --backbone: key=value,... for timm.create_model")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--images", nargs="+", metavar="IMG", help="image files (KLA uses the predicted class)")
    src.add_argument("--data", help="dataset to take --n images from (KLA uses the true class); "
                     "default: the run's training data")
    parser.add_argument("--format", default="imagefolder", help="dataset format of --data")
    parser.add_argument("--split", default="test", help="split of --data (default: test)")
    parser.add_argument("--n", type=int, default=8, help="images taken from --data, spread over the split")
    parser.add_argument("--out", required=True, help="figure file (FIG.png); raw maps go to FIG.npz")
    parser.add_argument("--per-head", action="store_true", help="also one panel per attention head")
    parser.add_argument("--layer", type=int, default=-1, help="block index, 0-based (default -1: the last)")
    parser.add_argument("--img-size", type=int,
                        help=f"input size (default: the run's; with --backbone {BARE_IMG_SIZE})")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--checkpoint", help="backbone weights (with --run: if they moved since training)")


def load_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, dict]:
    """The run's model and metadata, or the bare backbone with the metadata a run would give."""
    from ..checkpoint import load_run
    from ..models import build_model

    if args.run:
        return load_run(args.run, device, backbone_checkpoint=args.checkpoint)
    if not (args.data or args.images):
        raise LoreError("--backbone: pass --data PATH or --images IMG... (there is no run to take "
                        "images from)")
    model = build_model("b-b", args.backbone, 0, pretrained=args.pretrained, checkpoint=args.checkpoint,
                        backbone_args=args.backbone_args)
    return model.to(device).eval(), {"backbone": args.backbone, "method": "b-b",
                                     "img_size": BARE_IMG_SIZE}


def main(args: argparse.Namespace) -> dict:
    from ..io import atomic_save, atomic_write_json, check_output_file
    from ..runs import resolve_device

    out = check_output_file(args.out, suffixes=FIGURE_SUFFIXES, side_files=(".npz", ".json"))
    if args.batch_size < 1:
        raise LoreError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    model, meta = load_model(args, device)
    classnames = list(meta.get("classnames") or [])
    if args.images:
        paths, labels = list(args.images), None
    else:
        samples = dataset_samples(args.data, args.format, args.split, args.n, meta,
                                  check_classes=not is_bare(model), run=args.run)
        paths, labels = [p for p, _ in samples], [y for _, y in samples]
    layer = resolve_layer(args.layer, model.black_box.depth)
    size = image_size(meta, model, args.img_size)
    data_config = run_data_config(model, args.run)
    images = load_images(paths, size, data_config)

    notes = []
    if not has_kla(model) and not is_bare(model):
        why = ("it has no KLA (trained with --no-kp or another method)" if model.knowledge_width() is None
               else "its knowledge.safetensors is missing")
        notes.append(f"KLA column skipped: {why}")
    maps = compute_maps(model, images, layer, labels, args.batch_size)
    pixels = to_display(images, data_config)
    class_source = "true class" if labels is not None else "predicted class"
    method = str(meta.get("method", model.method))
    panels = build_panels([Path(p).name for p in paths], maps, size, method, classnames, class_source,
                          args.per_head)
    render(pixels, panels, out)

    npz = out.with_suffix(".npz")
    arrays = {**maps, "images": pixels}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)

    def save_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez_compressed(f, **arrays)

    atomic_save(npz, save_npz)
    info = {"run": str(args.run) if args.run else None, "method": method,
            "backbone": meta.get("backbone"), "layer": layer,
            "img_size": size, "patch_size": model.black_box.patch_size,
            "grid": list(maps["bb_cls"].shape[1:]), "images": paths, "labels": labels,
            "predicted": maps["pred"].tolist() if "pred" in maps else None,
            "kla_class": maps["kla_class"].tolist() if "kla_class" in maps else None,
            "kla_class_source": class_source if "kla" in maps else None, "classnames": classnames,
            "per_head": bool(args.per_head), "figure": str(out), "maps": str(npz), "notes": notes}
    atomic_write_json(out.with_suffix(".json"), info)
    for note in notes:
        print(f"note: {note}")
    print(f"attention grid of {len(paths)} image(s), block {layer}: {out} (raw maps: {npz})")
    return info
