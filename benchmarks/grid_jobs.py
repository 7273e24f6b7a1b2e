"""One grid's wall time in one process (``--jobs 1``, two threads) beside two worker processes
(``--launcher local --jobs 2``, one thread each), same cells, same table.

The grid is a small but realistic `lore sweep`: LORE and VPT-deep on a generated 4-class
ImageFolder, 4 shots, a random-init 4-block ViT at 64 px, 30 epochs, ``--seeds`` 1..6: 12 cells.
Each configuration runs as its own `lore sweep` process into its own --out; the two tables must
agree (they are compared), and the wall times and their ratio are printed.

    .venv/bin/python benchmarks/grid_jobs.py [--cells 12] [--epochs 5]

Writes benchmarks/out/grid_jobs.json. ``--cells 2 --epochs 1`` checks that it works.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKBONE = ["--backbone", "vit_small_patch16_224", "--no-pretrained", "--backbone-args",
            "img_size=64,patch_size=8,depth=4,embed_dim=192,num_heads=3", "--img-size", "64", "--workers", "0"]
METHODS = ["lore", "vpt-deep"]


def sweep(data: Path, out: Path, seeds: int, epochs: int, threads: int, extra: list[str]) -> float:
    """Wall seconds of one `lore sweep` process."""
    argv = [sys.executable, "-m", "lore", "sweep", "--methods", ",".join(METHODS), "--datasets", f"colors={data}",
            "--shots", "4", "--seeds", ",".join(str(s) for s in range(1, seeds + 1)), *BACKBONE,
            "--knowledge", "ngram:64", "--epochs", str(epochs), "--batch-size", "8", "--device", "cpu",
            "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"lore sweep {' '.join(extra) or '(inline)'} failed:\n{done.stderr[-3000:]}")
    return seconds


def numbers(out: Path) -> list:
    table = json.loads((out / "table.json").read_text())
    return [(c["method"], c["n"], c["mean"], c["std"]) for c in table["cells"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=12, help="grid cells (even: 2 methods x cells/2 seeds)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", default="benchmarks/out/grid_jobs.json")
    args = p.parse_args()
    if args.cells < 2 or args.cells % 2:
        sys.exit("--cells must be an even number >= 2")

    from lore.synthetic.colors import write_imagefolder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_imagefolder(tmp / "colors", n_train=8, n_test=8, size=64)
        seeds = args.cells // 2
        inline = sweep(data, tmp / "jobs1", seeds, args.epochs, 2, [])
        local = sweep(data, tmp / "jobs2", seeds, args.epochs, 2, ["--launcher", "local", "--jobs", "2"])
        same = numbers(tmp / "jobs1") == numbers(tmp / "jobs2")
    result = {"cells": args.cells, "epochs": args.epochs, "cpu_count": os.cpu_count(),
              "jobs1_two_threads_s": round(inline, 1), "local_jobs2_one_thread_each_s": round(local, 1),
              "ratio_jobs1_over_jobs2": round(inline / local, 2), "tables_equal": same}
    print(f"{args.cells} cells: --jobs 1 (2 threads) {inline:.1f} s | --launcher local --jobs 2 (1 thread each) "
          f"{local:.1f} s | ratio {inline / local:.2f}x | tables equal: {same}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        sys.exit("the two tables differ")


if __name__ == "__main__":
    main()
