"""``lore predict``: classify unlabelled images with a trained run.

Inputs are image files, folders (searched recursively) or text files listing one image path per
line (relative paths are relative to the list's folder; blank lines and ``#`` comments skipped).
Every image gets one output row, in input order: an image that cannot be read is reported in the
``status`` column and the summary line, and never stops the others. The run's own test transform,
class names and precision are used, so the predictions are those ``lore eval`` scores.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .data.datasets import IMAGE_EXTENSIONS, list_images_recursive, load_image
from .errors import LoreError
from .values import default_workers

FORMATS = ("csv", "jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by `lore train`")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (recursive) or text files of image paths")
    parser.add_argument("--out", default=None, help="output file (default: predictions.csv or "
                        "predictions.jsonl in the current directory)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="csv or jsonl (default: from --out's suffix, else csv)")
    parser.add_argument("--topk", type=int, default=5, help="top classes written per image (default: 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="data-loading worker processes (default: min(4, CPU cores))")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], default=None,
                        help="mixed precision (default: the run's own --amp)")
    parser.add_argument("--checkpoint", help="backbone weights, if they moved since training")


# ------------------------------------------------------------------------------------------------
# inputs


def collect_inputs(inputs: list[str]) -> list[str]:
    """Image paths in the order given: files as they are, folders' images sorted, lists' lines."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [str(f) for f in list_images_recursive(p)]
            if not found:
                raise LoreError(f"INPUT {p}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            paths.append(str(p))  # a missing image is a row with its status, like a corrupt one
        elif p.is_file():
            paths += _read_list(p)
        else:
            raise LoreError(f"INPUT {p}: not found (give images, folders or a text file of image paths)")
    return paths


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the first path
    except UnicodeDecodeError as e:
        raise LoreError(f"INPUT {path}: not a UTF-8 text list of image paths (byte {e.start}); "
                        "give images, folders or a text file of paths") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(str(path.parent / line) if not Path(line).is_absolute() else line)
    if not out:
        raise LoreError(f"INPUT {path}: the list holds no image paths")
    return out


class UnlabelledImages(torch.utils.data.Dataset):
    """path -> (image tensor, status): an unreadable image gives a zero tensor and its error."""

    def __init__(self, paths: list[str], transform, shape: tuple[int, int, int]):
        self.paths, self.transform, self.shape = paths, transform, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            if not Path(path).is_file():
                raise LoreError("file not found")
            return self.transform(load_image(path)), "ok"
        except LoreError as e:
            return torch.zeros(self.shape), f"error: {_reason(str(e), path)}"


def _reason(message: str, path: str) -> str:
    """The loader's one-line error without the path (it has its own column) or the advice."""
    import re

    if "cannot decode" in message:
        kind = re.search(r"\((\w+)", message.replace(path, ""))
        return f"cannot decode the image ({kind.group(1)})" if kind else "cannot decode the image"
    if "refused" in message:
        return "refused: too many pixels (decompression bomb guard)"
    return message.replace(path, "").strip(" :") or "unreadable"


# ------------------------------------------------------------------------------------------------
# prediction


@torch.no_grad()
def predict(model: torch.nn.Module, paths: list[str], transform, img_size: int, device: torch.device,
            amp: torch.dtype | None, batch_size: int = 64, workers: int = 0):
    """(probabilities (N, C) float32, statuses) in input order; unreadable images' rows are NaN.
    Paths that are not files are reported without reading or a forward pass (a list of a million
    missing paths costs a million stat calls, not a million zero images through the model)."""
    statuses = ["ok" if Path(p).is_file() else "error: file not found" for p in paths]
    present = [i for i, s in enumerate(statuses) if s == "ok"]
    probs = torch.full((len(paths), model.num_classes), float("nan"))
    loader = torch.utils.data.DataLoader(UnlabelledImages([paths[i] for i in present], transform,
                                                          (3, img_size, img_size)),
                                         batch_size=batch_size, num_workers=workers)
    model.eval()
    done = 0
    for images, status in tqdm(loader, desc="predict", leave=False, file=sys.stderr):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(images.to(device))
        p = logits.float().softmax(dim=-1).cpu()
        p[torch.tensor([s != "ok" for s in status])] = float("nan")
        where = present[done:done + len(status)]
        probs[where] = p
        for i, s in zip(where, status):
            statuses[i] = s
        done += len(status)
    return probs, statuses


def rows(paths: list[str], probs: torch.Tensor, statuses: list[str], classnames: list[str], topk: int):
    """One dict per image: path, status, class, probability, then the top-k names and probabilities."""
    k = min(topk, probs.shape[1])
    top_p, top_i = probs.nan_to_num(-1.0).topk(k, dim=-1)
    for path, status, ps, idx in zip(paths, statuses, top_p.tolist(), top_i.tolist()):
        row = {"path": path, "status": status}
        ok = status == "ok"
        row["class"] = classnames[idx[0]] if ok else ""
        row["probability"] = round(ps[0], 6) if ok else None
        for j in range(k):
            row[f"class_{j + 1}"] = classnames[idx[j]] if ok else ""
            row[f"probability_{j + 1}"] = round(ps[j], 6) if ok else None
        yield row


def render(records: list[dict], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
    return buf.getvalue()


def _output(args: argparse.Namespace) -> tuple[Path, str]:
    from .io import check_output_file

    fmt = args.format
    if args.out is None:
        fmt = fmt or "csv"
        return check_output_file(f"predictions.{fmt}"), fmt
    out = Path(args.out)
    fmt = fmt or ("jsonl" if out.suffix.lower() in (".jsonl", ".json") else "csv")
    return check_output_file(out), fmt


def main(args: argparse.Namespace) -> dict:
    from .checkpoint import load_run
    from .data import eval_transform
    from .io import atomic_write_text
    from .runs import resolve_device, saved_config
    from .runs import run_data_config
    from .train import amp_dtype, warn_amp

    if args.topk < 1:
        raise LoreError(f"--topk must be >= 1, got {args.topk}")
    if args.batch_size < 1 or args.workers < 0:
        raise LoreError("--batch-size must be >= 1 and --workers >= 0")
    out, fmt = _output(args)
    paths = collect_inputs(args.inputs)
    run_dir = Path(args.run)
    device = resolve_device(args.device)
    model, meta = load_run(run_dir, device, backbone_checkpoint=args.checkpoint)
    cfg = saved_config(run_dir, device=str(device), **({"amp": args.amp} if args.amp else {}))
    transform = eval_transform(cfg.img_size, run_data_config(cfg, model.black_box))
    classnames = list(meta.get("classnames") or [str(i) for i in range(meta["num_classes"])])
    warn_amp(cfg, device)
    probs, statuses = predict(model, paths, transform, cfg.img_size, device, amp_dtype(cfg, device),
                              args.batch_size, args.workers)
    records = list(rows(paths, probs, statuses, classnames, args.topk))
    out.parent.mkdir(parents=True, exist_ok=True)  # only now: a refused input leaves no folder behind
    atomic_write_text(out, render(records, fmt))
    bad = [r for r in records if r["status"] != "ok"]
    print(f"{meta['method']} run {run_dir}: {len(records) - len(bad)} of {len(records)} images predicted"
          f"{f', {len(bad)} unreadable (status column)' if bad else ''} -> {out}")
    return {"out": str(out), "images": len(records), "unreadable": len(bad)}
