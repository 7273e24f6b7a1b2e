"""``lore demo``: the whole method offline, on 2 CPU cores, in minutes.

1. Generate local-mark images (letters on clutter): 16 "upstream" letters and 8 "downstream" ones.
2. Pre-train a small ViT on the upstream letters (the stand-in for ImageNet/CLIP pre-training;
   cached in OUT/upstream/ after the first run).
3. Adapt the frozen backbone few-shot to the downstream letters with linear, vpt-deep,
   lore --no-kp and lore, through the same ``lore train`` harness users run.
4. Write the results table, attention grids and the HTML report.

Every number printed is what this run measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import LoreError
from .io import atomic_save, atomic_write_json, atomic_write_text

BACKBONE = "vit_small_patch16_224"
BACKBONE_ARGS = "img_size=48,patch_size=8,embed_dim=96,depth=4,num_heads=3"
IMG_SIZE = 48
UPSTREAM, DOWNSTREAM = "ABCDEFGHIJKLMNOP", "QRSTUVWX"
METHODS = {  # run name -> extra train options
    "linear": {"method": "linear"},
    "vpt-deep": {"method": "vpt-deep"},
    "lore-no-kp": {"method": "lore", "kp": False},
    "lore": {"method": "lore"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    parser.add_argument("--shots", type=int, default=16, help="downstream images per class")
    parser.add_argument("--epochs", type=int, default=30, help="adaptation epochs per method")
    parser.add_argument("--pretrain-epochs", type=int, default=30, help="upstream pre-training epochs")
    parser.add_argument("--upstream-per-class", type=int, default=150)
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.01, help="adaptation learning rate (all methods)")
    parser.add_argument("--wd", type=float, default=0.5,
                        help="weight decay, all methods (the paper's value for Flowers/Cars)")
    parser.add_argument("--seed", type=int, default=1993)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="re-run the adaptation runs too")


def _knowledge_spec() -> tuple[str, str]:
    from .knowledge import offline_sentence_model

    path = offline_sentence_model()
    if path:
        try:
            import sentence_transformers  # noqa: F401
            return f"sentence:{path}", "sentence-transformers all-MiniLM-L6-v2 (offline, from PyPI)"
        except ImportError:
            pass
    return "ngram:256", ("FALLBACK: hashed character trigrams (no text encoder installed; "
                         "pip install 'lore[demo]' for all-MiniLM-L6-v2)")


def _generate(out: Path, args) -> tuple[Path, Path]:
    from .synthetic.marks import write_marks

    up, down = out / "data" / "upstream", out / "data" / "downstream"
    stamp = out / "data" / "done.json"
    spec = {"up": args.upstream_per_class, "test": args.test_per_class, "seed": args.seed, "size": IMG_SIZE}
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return up, down
    print(f"[1/4] generating local-mark images in {out / 'data'}", file=sys.stderr)
    write_marks(up, UPSTREAM, args.upstream_per_class, 0, size=IMG_SIZE, seed=args.seed)
    write_marks(down, DOWNSTREAM, max(args.shots * 2, 24), args.test_per_class, size=IMG_SIZE,
                seed=args.seed + 1)
    atomic_write_json(stamp, spec)
    return up, down


def _pretrain(out: Path, upstream: Path, args) -> Path:
    """Supervised pre-training of the small ViT on the upstream letters (AdamW, in memory)."""
    import timm
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from .backbone import BlackBox, parse_backbone_args
    from .data import ImageDataset, eval_transform, load_dataset

    path = out / "upstream" / "backbone.safetensors"
    key = hashlib.sha256(json.dumps([BACKBONE_ARGS, args.pretrain_epochs, args.upstream_per_class,
                                     args.seed]).encode()).hexdigest()[:12]
    stamp = out / "upstream" / "backbone.json"
    if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        print(f"[2/4] pre-trained backbone found: {path} (cached)", file=sys.stderr)
        return path
    print(f"[2/4] pre-training the {BACKBONE} ({BACKBONE_ARGS}) on {len(UPSTREAM)} upstream letters",
          file=sys.stderr)
    torch.manual_seed(args.seed)
    vit = timm.create_model(BACKBONE, pretrained=False, num_classes=len(UPSTREAM),
                            **parse_backbone_args(BACKBONE_ARGS))
    data = load_dataset(str(upstream), "imagefolder", holdout=0.1)
    tf = eval_transform(IMG_SIZE, BlackBox(vit).data_config)
    vit.requires_grad_(True)
    loader = torch.utils.data.DataLoader(ImageDataset(data.get("train"), tf), batch_size=512,
                                         num_workers=args.workers)
    xs, ys = zip(*[(x, y) for x, y, _ in loader])
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    opt = torch.optim.AdamW(vit.parameters(), lr=5e-4, weight_decay=0.05)
    steps = args.pretrain_epochs * ((len(x_all) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=steps, pct_start=0.1)
    vit.train()
    g = torch.Generator().manual_seed(args.seed)
    bar = tqdm(range(args.pretrain_epochs), desc="pre-train", file=sys.stderr)
    for _ in bar:
        perm = torch.randperm(len(x_all), generator=g)
        correct = 0
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            logits = vit(x_all[idx])
            loss = F.cross_entropy(logits, y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += (logits.argmax(-1) == y_all[idx]).sum().item()
        bar.set_postfix(train_acc=f"{correct / len(x_all):.3f}")
    state = {k: v.detach().contiguous() for k, v in vit.state_dict().items()}
    atomic_save(path, lambda tmp: save_file(state, tmp))
    atomic_write_json(stamp, {"key": key, "train_acc": correct / len(x_all), "backbone": BACKBONE,
                              "backbone_args": BACKBONE_ARGS})
    return path


def _adapt(out: Path, downstream: Path, backbone_ckpt: Path, knowledge: str, args) -> dict[str, dict]:
    import shutil

    from .config import TrainConfig
    from .train import run

    from .config import to_yaml

    results = {}
    for i, (name, extra) in enumerate(METHODS.items()):
        run_dir = out / "runs" / name
        cfg = TrainConfig(backbone=BACKBONE, backbone_args=BACKBONE_ARGS, pretrained=False,
                          checkpoint=str(backbone_ckpt), data=str(downstream), out=str(run_dir),
                          shots=args.shots, seed=args.seed, epochs=args.epochs, batch_size=32,
                          lr=args.lr, min_lr=args.lr / 50, wd=args.wd, img_size=IMG_SIZE,
                          aug="none", workers=args.workers, device="cpu", knowledge=knowledge, **extra)
        saved = run_dir / "config.yaml"
        same = saved.is_file() and saved.read_text() == to_yaml(cfg)
        if (run_dir / "final.json").is_file() and same and not args.fresh:
            print(f"[3/4] {name}: finished earlier with these options ({run_dir}); --fresh re-runs it",
                  file=sys.stderr)
        else:
            if run_dir.exists():  # the demo's own earlier (other options, or interrupted) run
                shutil.rmtree(run_dir)
            print(f"[3/4] adapting with {name} ({i + 1}/{len(METHODS)})", file=sys.stderr)
            run(cfg)
        results[name] = json.loads((run_dir / "final.json").read_text())
    return results


def _table(results: dict[str, dict]) -> str:
    rows = ["| method | test top-1 | trainable params | GFLOPs/image | train s |", "|---|---|---|---|---|"]
    best = max(r["test_acc1"] for r in results.values())
    for name, r in results.items():
        acc = f"{100 * r['test_acc1']:.2f}"
        acc = f"**{acc}**" if r["test_acc1"] == best else acc
        rows.append(f"| {name} | {acc} | {r['trainable_params']:,} | {r['gflops']:.4f} | {r['seconds']:.1f} |")
    return "\n".join(rows)


def _extras(out: Path, downstream: Path, args) -> list[str]:
    """Attention grid, locality figure and HTML report, where those commands are available."""
    from .cli import main as cli

    made = []
    lore_run = out / "runs" / "lore"
    steps = [
        (["attention", "--run", lore_run, "--data", downstream, "--n", "6", "--out", out / "attention.png",
          "--device", "cpu"], out / "attention.png"),
        (["locality", "--run", lore_run, "--data", downstream, "--n", "32", "--out", out / "locality",
          "--device", "cpu"], out / "locality"),
        (["report", *[out / "runs" / m for m in METHODS], "--out", out / "report.html"], out / "report.html"),
    ]
    for argv, target in steps:
        code = cli([str(a) for a in argv])
        if code == 0 and target.exists():
            made.append(str(target))
        else:
            print(f"  (skipped {argv[0]}: exit {code})", file=sys.stderr)
    return made


def main(args: argparse.Namespace) -> dict:
    if args.shots < 1 or args.epochs < 1:
        raise LoreError("--shots and --epochs must be >= 1")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    knowledge, knowledge_name = _knowledge_spec()
    upstream, downstream = _generate(out, args)
    backbone = _pretrain(out, upstream, args)
    print(f"      class knowledge: {knowledge_name}", file=sys.stderr)
    results = _adapt(out, downstream, backbone, knowledge, args)
    print("[4/4] attention maps, locality and report", file=sys.stderr)
    made = _extras(out, downstream, args)
    table = _table(results)
    summary = {"results": {k: {"test_acc1": v["test_acc1"], "trainable_params": v["trainable_params"],
                               "gflops": v["gflops"]} for k, v in results.items()},
               "knowledge": knowledge_name, "shots": args.shots, "epochs": args.epochs,
               "downstream_classes": len(DOWNSTREAM), "seconds": round(time.time() - start, 1),
               "backbone": {"name": BACKBONE, "args": BACKBONE_ARGS, "weights": str(backbone)}}
    atomic_write_json(out / "results.json", summary)
    atomic_write_text(out / "results.md", f"# lore demo: {args.shots}-shot, {len(DOWNSTREAM)} downstream "
                      f"letters\n\nclass knowledge: {knowledge_name}\n\n{table}\n")
    print()
    print(f"{args.shots}-shot adaptation of a frozen ViT to {len(DOWNSTREAM)} new letter classes "
          f"(chance {100 / len(DOWNSTREAM):.1f}%):")
    print(table)
    print()
    print(f"outputs in {out}:")
    print(f"  results table   {out / 'results.md'}")
    print(f"  runs            {out / 'runs'}/<method>/final.json, metrics.jsonl, checkpoint.safetensors")
    for m in made:
        print(f"  {Path(m).name:<15} {m}")
    print(f"done in {time.time() - start:.0f} s")
    return summary
