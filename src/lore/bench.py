"""``lore bench``: the cost of B-B, VPT, LORE and the CLIP prompt learners (CoOp, Co-CoOp, ProGrad,
MaPLe) measured side by side in one process.

Each repeat times every method in turn (interleaved), so a slow patch of the machine hits all
methods alike; the reported figure is the median over repeats, after warm-up. Ratios are taken
between figures of the same run only.

The CLIP prompt learners run the frozen CLIP text tower of ``--knowledge`` (default: the
backbone's own) built without weights unless ``--pretrained``: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from .errors import LoreError
from .flops import count_gflops, count_params
from .io import atomic_write_json, check_output_dir

REFERENCES = ("b-b", "vpt-deep", "lore", "coop")
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="vit_small_patch16_224", help="timm ViT name")
    parser.add_argument("--backbone-args", help="key=value,... for timm.create_model")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False,
                        help="load hub weights (speed does not depend on them; default: no)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--methods", default="b-b,vpt-deep,lore", help="comma list of the methods `lore bench` "
                        "offers (b-b, linear, vpt-shallow, vpt-deep, lore, lore-no-kp, coop, cocoop, prograd, maple)")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--knowledge", help="CLIP text tower of the prompt learners, clip:MODEL/TAG "
                        "(default: the backbone's own)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="autocast dtype on CUDA (CPU always runs float32)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--out", help="directory for bench.json (pipeline.json with --pipeline)")
    parser.add_argument("--pipeline", metavar="FOLDER", help="instead: the training loader's images/s on the "
                        "images under FOLDER (per worker count, with and without the image cache) beside the "
                        "model's training images/s, to see which side waits")
    parser.add_argument("--pipeline-workers", default="0,1,2,4", help="--pipeline: worker counts to time")
    parser.add_argument("--pipeline-images", type=int, default=512, help="--pipeline: at most this many images")
    parser.add_argument("--pipeline-passes", type=int, default=3, help="--pipeline: timed passes over the images")


def bench_methods() -> list[str]:
    """The names `lore bench` measures: every method registered with ``bench=True`` and its aliases."""
    from .models.registry import aliases, methods

    offered = [m.name for m in methods() if m.bench]
    return offered + [a for a, spec in aliases().items() if spec["method"] in offered]


def _build(name: str, backbone: str, backbone_args, pretrained: bool, num_classes: int,
           knowledge: str | None = None) -> nn.Module:
    from .backbone import build_black_box
    from .knowledge import default_knowledge_spec
    from .models import build_model
    from .models.coop import weightless
    from .models.registry import resolve

    torch.manual_seed(0)
    method, alias_options = resolve(name)
    black_box = build_black_box(backbone, pretrained=pretrained, backbone_args=backbone_args)
    options: dict = {}
    if method.text_side:
        spec = knowledge or default_knowledge_spec(backbone)
        options = dict(classnames=[f"class {i}" for i in range(num_classes)],
                       text_tower=spec if pretrained else weightless(spec))
    if method.bench_options:
        options.update(method.bench_options(black_box, num_classes))
    options.update(alias_options)
    return build_model(method.bench_as or method.name, black_box, num_classes, **options)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Wall seconds of ``fn()``, with queued GPU work finished before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class _SavedBytes:
    """Bytes autograd keeps for backward (the activation memory of a training step on CPU)."""

    def __init__(self):
        self.total = 0

    def __enter__(self):
        def pack(t):
            self.total += t.numel() * t.element_size()
            return t
        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def run(backbone: str, methods: list[str], img_size: int = 224, batch: int = 32, device: str = "auto",
        dtype: str = "float32", repeats: int = 7, warmup: int = 2, backbone_args=None,
        pretrained: bool = False, num_classes: int = 100, knowledge: str | None = None) -> dict:
    from .runs import resolve_device

    unknown = [m for m in methods if m not in bench_methods()]
    if unknown:
        raise LoreError(f"--methods: unknown {unknown}; choose from {sorted(bench_methods())}")
    if batch < 1 or repeats < 1 or warmup < 0 or img_size < 8:
        raise LoreError("--batch, --repeats must be >= 1, --warmup >= 0, --img-size >= 8")
    dev = resolve_device(device)
    amp = DTYPES[dtype] if dev.type == "cuda" and dtype != "float32" else None
    models = {m: _build(m, backbone, backbone_args, pretrained, num_classes, knowledge).to(dev) for m in methods}
    optims = {m: torch.optim.SGD([p for p in mdl.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
              for m, mdl in models.items()}
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    y = torch.randint(0, num_classes, (batch,), device=dev)

    def infer(m):
        models[m].eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            models[m](x)

    def train_step(m):
        models[m].train()
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _, _ = models[m].training_loss(x, y)
        optims[m].zero_grad(set_to_none=True)
        loss.float().mean().backward()
        optims[m].step()

    times: dict[str, dict[str, list[float]]] = {m: {"infer": [], "train": []} for m in methods}
    for r in range(warmup + repeats):
        for m in methods:  # interleaved: every repeat visits every method
            ti, tt = timed(lambda: infer(m), dev), timed(lambda: train_step(m), dev)
            if r >= warmup:
                times[m]["infer"].append(ti)
                times[m]["train"].append(tt)
        print(f"\rrepeat {r + 1}/{warmup + repeats}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    results = {}
    for m in methods:
        results[m] = {
            "infer_images_per_s": round(batch / statistics.median(times[m]["infer"]), 3),
            "train_images_per_s": round(batch / statistics.median(times[m]["train"]), 3),
            "peak_mem_mb": round(_peak_memory(models[m], optims[m], train_step, m, dev), 2),
            "gflops": round(count_gflops(models[m], img_size, dev), 4),
            "trainable_params": count_params(models[m])["trainable_params"],
        }
    return {"methods": results, "ratios": ratios(results),
            "config": {"backbone": backbone, "backbone_args": backbone_args, "img_size": img_size,
                       "batch": batch, "device": str(dev), "dtype": dtype if amp else "float32",
                       "repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(),
                       "torch": torch.__version__}}


def _peak_memory(model, optim, train_step, m, dev: torch.device) -> float:
    """CUDA: peak allocated bytes of a training step. CPU: parameters + gradients + optimizer
    state + the activations autograd saves (what a step must hold at once)."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        train_step(m)
        return torch.cuda.max_memory_allocated(dev) / 2**20
    with _SavedBytes() as saved:
        train_step(m)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(t.numel() * t.element_size() for s in optim.state.values() for t in s.values()
                if torch.is_tensor(t))
    return (params + grads + state + saved.total) / 2**20


def ratios(results: dict) -> dict:
    """Every method against B-B, VPT-deep, LORE and CoOp: throughput, training-step time, GFLOPs,
    memory."""
    out = {}
    for ref in REFERENCES:
        if ref not in results:
            continue
        r = results[ref]
        for m, v in results.items():
            if m == ref:
                continue
            out[f"{m}/{ref}"] = {
                "infer_throughput": round(v["infer_images_per_s"] / r["infer_images_per_s"], 4),
                "train_step_time": round(r["train_images_per_s"] / v["train_images_per_s"], 4),
                "gflops": round(v["gflops"] / r["gflops"], 4),
                "peak_mem": round(v["peak_mem_mb"] / r["peak_mem_mb"], 4),
            }
    return out


def format_table(report: dict) -> str:
    res = report["methods"]
    lines = [f"{'method':<12} {'infer img/s':>12} {'train img/s':>12} {'peak MB':>10} {'GFLOPs':>9} "
             f"{'trainable':>11}"]
    for m, v in res.items():
        lines.append(f"{m:<12} {v['infer_images_per_s']:>12.1f} {v['train_images_per_s']:>12.1f} "
                     f"{v['peak_mem_mb']:>10.1f} {v['gflops']:>9.3f} {v['trainable_params']:>11,}")
    if report["ratios"]:
        lines.append("")
        lines.append(f"{'ratio':<18} {'throughput':>10} {'step time':>10} {'GFLOPs':>8} {'memory':>8}")
        for k, v in report["ratios"].items():
            lines.append(f"{k:<18} {v['infer_throughput']:>10.3f} {v['train_step_time']:>10.3f} "
                         f"{v['gflops']:>8.3f} {v['peak_mem']:>8.3f}")
    return "\n".join(lines)


def _pipeline(args: argparse.Namespace) -> dict:
    from . import pipeline_bench

    report = pipeline_bench.main(args, lambda methods: run(
        args.backbone, methods, img_size=args.img_size, batch=args.batch, device=args.device, dtype=args.dtype,
        repeats=args.repeats, warmup=args.warmup, backbone_args=args.backbone_args, pretrained=args.pretrained,
        num_classes=args.num_classes, knowledge=args.knowledge))
    print(pipeline_bench.format_table(report))
    if args.out:
        print(f"written: {atomic_write_json(Path(args.out) / 'pipeline.json', report)}")
    return report


def main(args: argparse.Namespace) -> dict:
    if args.threads < 0:
        raise LoreError(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.out:
        check_output_dir(args.out, allow_run=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pipeline:
        return _pipeline(args)
    report = run(args.backbone, [m.strip() for m in args.methods.split(",") if m.strip()],
                 img_size=args.img_size, batch=args.batch, device=args.device, dtype=args.dtype,
                 repeats=args.repeats, warmup=args.warmup, backbone_args=args.backbone_args,
                 pretrained=args.pretrained, num_classes=args.num_classes, knowledge=args.knowledge)
    print(format_table(report))
    if args.out:
        path = atomic_write_json(Path(args.out) / "bench.json", report)
        print(f"written: {path}")
    return report
