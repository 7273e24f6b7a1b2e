"""A training run's own files in its directory: the refusal to overwrite a finished run, the
chosen training files, resumable checkpoints (rotation, the newest readable one), and metrics.jsonl
(appended per epoch, trimmed on resume)."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from ..checkpoint import save_train_state
from ..errors import LoreError
from ..io import atomic_write_json, atomic_write_text
from .context import Context
from .. import rundir


def refuse_overwrite(out: Path) -> None:
    """A fresh run must not start over a finished or resumable one, nor append to a stray metrics.jsonl."""
    if (out / rundir.FINAL).exists() or (out / rundir.CHECKPOINTS).exists():
        raise LoreError(f"--out {out} already holds a run; choose a new directory or continue it "
                        f"with --resume {out}")
    if (out / rundir.METRICS).exists():  # a fresh run would append to it, then misread it
        raise LoreError(f"--out {out} already holds a metrics.jsonl but no run to continue (one stopped "
                        "before its first checkpoint?); choose a new directory, or remove the file")


def record_selection(ctx: Context, name: str, samples: list, chosen: list[int], **extra) -> None:
    """The training files a stage chose (fewshot*.json), with their labels and the seed."""
    if ctx.info.main:
        atomic_write_json(ctx.out / name, {"seed": ctx.cfg.seed, "shots": ctx.cfg.shots,
                                           "files": [samples[i][0] for i in chosen],
                                           "labels": [samples[i][1] for i in chosen], **extra})


def save_state(ctx: Context, model: nn.Module, optimizer, counters: dict) -> None:
    """A resumable checkpoint of the stage (main process only), keeping the last --keep-last."""
    if not ctx.info.main:
        return
    ckpt_dir = ctx.out / rundir.CHECKPOINTS
    ckpt_dir.mkdir(exist_ok=True)
    name = f"{counters['stage']}-step-{counters['global_step']:08d}.safetensors"
    save_train_state(ckpt_dir / name, model, optimizer, counters)
    kept = sorted(ckpt_dir.glob(f"{counters['stage']}-step-*.safetensors"))
    for old in kept[:-ctx.cfg.keep_last]:
        old.unlink(missing_ok=True)


def latest_state(ckpt_dir: Path, stage: str) -> Path | None:
    """Newest readable training checkpoint of ``stage`` (a truncated newest one is skipped)."""
    from safetensors import safe_open

    for path in sorted(ckpt_dir.glob(f"{stage}-step-*.safetensors"), reverse=True):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.metadata()
            return path
        except Exception:
            continue
    return None


def truncate_metrics(path: Path, stage: str, epoch: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint (no duplicates on resume)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        rec = json.loads(ln)
        if rec.get("stage") == stage and rec.get("epoch", 0) > epoch:
            continue
        keep.append(ln)
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(k + "\n" for k in keep))


def last_metrics(out: Path) -> dict:
    """The run's last metrics.jsonl line ({} when there is none)."""
    path = out / rundir.METRICS
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}
