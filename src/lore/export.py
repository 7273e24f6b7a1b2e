"""``lore export``: a trained run as one ONNX file, checked against PyTorch before it is published.

Only the inference path goes into the graph: for LORE the patch embedding, LIN, the Prompt
Generator, the prompted ViT and the head (KLA, the class knowledge and L_kp are training-only);
for the CLIP prompt learners whose class prompts do not depend on the image (CoOp, ProGrad,
MaPLe) the class text features are computed once and stored as a constant, so no text tower
ships; CoCoOp conditions its prompts on each image and keeps its text tower. The batch dimension
is dynamic. ``model.json`` beside the file says how to preprocess and name the outputs.

Before anything is written under ``--out`` the exported file is run with onnxruntime on fixed
inputs at two batch sizes; the export is refused when its logits differ from PyTorch's by more
than ``--tolerance`` (relative to the largest logit, at least 1).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import LoreError

TOLERANCE = 1e-4  # float32 ONNX vs float32 PyTorch: reassociated sums differ in the last bits
OPSET = 18


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by `lore train`")
    parser.add_argument("--out", required=True, help="the .onnx file to write (model.json goes beside it, "
                        "named after it)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest accepted |logit difference| / max(1, max |logit|) between "
                             f"onnxruntime and PyTorch (default: {TOLERANCE:g})")
    parser.add_argument("--opset", type=int, default=OPSET,
                        help="ONNX opset, {}..{} (torch's exporter builds the lowest and converts upwards; "
                             "default: {})".format(*supported_opsets(), OPSET))
    parser.add_argument("--checkpoint", help="backbone weights, if they moved since training")


def supported_opsets() -> tuple[int, int]:
    """The opsets torch.onnx's exporter writes, as torch states them: its op library's own opset
    (lower ones fall back to it with a traceback on stderr) up to the newest it converts to."""
    from torch.onnx import _constants

    try:
        from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET as lowest
    except ImportError:  # torch moved it: the opset this exporter has built since torch 2.5
        lowest = OPSET
    return int(lowest), int(_constants.ONNX_MAX_OPSET)


def check_opset(opset: int) -> None:
    lowest, highest = supported_opsets()
    if not lowest <= opset <= highest:
        raise LoreError(f"--opset {opset}: torch.onnx writes opsets {lowest}..{highest} for this exporter; "
                        f"choose one in that range (default {OPSET})")


def written_opset(path: Path) -> int:
    """The default-domain opset the ONNX file really declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def require() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise LoreError(f"lore export needs {', '.join(missing)}: pip install 'lore-vit[export]'")


def fixed_inputs(batch: int, img_size: int, seed: int = 0) -> torch.Tensor:
    """Normalised-image-like inputs, the same on every machine."""
    return torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))


def export_onnx(model: torch.nn.Module, path: Path, img_size: int, opset: int = OPSET) -> None:
    """The eval-mode forward pass images (N, 3, S, S) -> logits (N, C), batch size dynamic."""
    model.eval()
    with torch.no_grad():
        # one single file up to protobuf's 2 GB; larger models keep their weights beside it
        big = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > 1.8e9
        program = torch.onnx.export(model, (fixed_inputs(2, img_size),), dynamo=True, opset_version=opset,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        program.save(str(path), external_data=big)


def compare(model: torch.nn.Module, path: Path, img_size: int) -> float:
    """Largest |onnxruntime - PyTorch| logit difference over two batch sizes, relative to
    max(1, max |logit|)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # e.g. an opset newer than this onnxruntime runs
        raise LoreError(f"onnxruntime {ort.__version__} cannot load the exported model "
                        f"({str(e).strip().splitlines()[0][:200]}); nothing was written (try the default "
                        f"--opset {OPSET}, or a newer onnxruntime)") from None
    worst = 0.0
    for batch, seed in ((2, 1), (3, 2)):
        x = fixed_inputs(batch, img_size, seed)
        with torch.no_grad():
            ref = model(x).float().numpy()
        got = session.run(["logits"], {"images": x.numpy()})[0]
        if got.shape != ref.shape:
            raise LoreError(f"the exported model returned logits of shape {got.shape}, PyTorch {ref.shape}")
        scale = max(1.0, float(np.abs(ref).max()))
        worst = max(worst, float(np.abs(got - ref).max()) / scale)
    return worst


def preprocessing(img_size: int, data_config: dict) -> dict:
    """What `lore eval` does to an image before the model, as plain numbers."""
    from .data.transforms import eval_resize

    if data_config.get("resize") == "squash":  # --format vtab-tfds: VPT's resize, aspect ratio not kept
        return {"color": "RGB", "layout": "NCHW", "dtype": "float32", "resize_to": [img_size, img_size],
                "interpolation": "bilinear", "antialias": False, "scale": 1 / 255,
                "mean": list(data_config["mean"]), "std": list(data_config["std"])}
    return {"color": "RGB", "layout": "NCHW", "dtype": "float32",
            "resize_shorter_side": eval_resize(img_size, data_config),
            "interpolation": data_config.get("interpolation", "bicubic"), "center_crop": img_size,
            "scale": 1 / 255, "mean": list(data_config["mean"]), "std": list(data_config["std"])}


def main(args: argparse.Namespace) -> dict:
    from . import __version__
    from .checkpoint import load_run
    from .io import check_output_file
    from .runs import saved_config

    require()
    out = check_output_file(args.out, suffixes=(".onnx",), side_files=(".json",))
    side = out.with_suffix(".json")
    if side.is_dir():  # checked first: the two files are published together or not at all
        raise LoreError(f"--out {out}: its description {side} would be written beside it, but that is a "
                        "directory; choose another --out name")
    check_opset(args.opset)
    if not (args.tolerance > 0 and math.isfinite(args.tolerance)):
        raise LoreError(f"--tolerance must be a positive number, got {args.tolerance}")
    run_dir = Path(args.run)
    model, meta = load_run(run_dir, "cpu", backbone_checkpoint=args.checkpoint)
    model = model.float().eval()
    cfg = saved_config(run_dir)
    img_size = int(cfg.img_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    # write and check in a private folder beside --out; publish only a verified file
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent.resolve()))
    try:
        staged = tmp / out.name
        try:
            export_onnx(model, staged, img_size, args.opset)
        except Exception as e:  # the exporter's own errors are long; keep the first line
            raise LoreError(f"--run {run_dir}: torch.onnx could not export the {meta['method']} model "
                            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})") from None
        opset = written_opset(staged)
        if opset != args.opset:
            raise LoreError(f"--opset {args.opset}: torch.onnx wrote opset {opset} instead; nothing was "
                            f"written (use --opset {opset})")
        diff = compare(model, staged, img_size)
        if not diff <= args.tolerance:
            raise LoreError(f"--run {run_dir}: the exported model's logits differ from PyTorch's by "
                            f"{diff:.3g} (relative), more than --tolerance {args.tolerance:g}; nothing was "
                            "written")
        info = _description(args, out, run_dir, meta, img_size, opset, diff, cfg, model, __version__)
        _publish(tmp, out, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{meta['method']} run {run_dir} -> {out} (+ {side.name}); onnxruntime "
          f"matches PyTorch to {diff:.2g} (tolerance {args.tolerance:g})")
    return info


def _publish(tmp: Path, out: Path, info: dict) -> None:
    """Stage the JSON description beside the checked ONNX file in ``tmp``, then move the ONNX file
    (and, for >2 GB models, its weights) and the description last to ``out``: both or neither."""
    from .io import atomic_write_json

    side = out.with_suffix(".json")
    staged_json = tmp / side.name
    try:
        atomic_write_json(staged_json, info)
    except (LoreError, OSError) as e:  # said of the file the user asked for, not the staging copy
        reason = getattr(e, "strerror", None) or str(e).replace(str(staged_json), side.name)
        raise LoreError(f"--out {out}: cannot write {side} ({reason}); nothing was published") from None
    for f in sorted(p for p in tmp.iterdir() if p != staged_json):
        os.replace(f, out.parent / f.name)
    try:
        os.replace(staged_json, side)
    except OSError as e:
        out.unlink(missing_ok=True)
        raise LoreError(f"--out {out}: cannot write {side} ({e.strerror}); the export was not "
                        "published") from None


def _description(args, out: Path, run_dir: Path, meta: dict, img_size: int, opset: int, diff: float,
                 cfg, model, version: str) -> dict:
    """The JSON beside the ONNX file: what was written, how to feed it, how it was checked."""
    from .runs import run_data_config

    return {"format": "onnx", "opset": opset, "file": out.name, "lore_version": version,
            "run": str(run_dir.resolve()), "method": meta["method"], "backbone": meta["backbone"],
            "classnames": list(meta.get("classnames") or []), "num_classes": meta["num_classes"],
            "input": {"name": "images", "shape": ["batch", 3, img_size, img_size]},
            "output": {"name": "logits", "shape": ["batch", meta["num_classes"]],
                       "probabilities": "softmax over the last axis"},
            "preprocessing": preprocessing(img_size, run_data_config(cfg, model.black_box)),
            "checked": {"runtime": "onnxruntime CPUExecutionProvider", "batch_sizes": [2, 3],
                        "max_relative_logit_difference": diff, "tolerance": args.tolerance}}
