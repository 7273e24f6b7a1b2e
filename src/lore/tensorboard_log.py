"""``--log tensorboard``: TensorBoard event files under ``RUN/tb/``, mirroring ``metrics.jsonl``.

``metrics.jsonl`` stays the record every other command reads; the event files are a view of the
same numbers for the tool people already have open. A sweep's or a paper table's cells are run
directories of their own, so ``tensorboard --logdir SWEEP`` lays their curves side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import LoreError

# metrics.jsonl key -> TensorBoard tag (loss terms group under loss/, accuracies under accuracy/)
TAGS = {"loss": "loss/total", "lr": "lr", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
        "seconds": "time/epoch_seconds"}


def require() -> None:
    """Fail before any compute when the option is given but TensorBoard is not installed."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise LoreError("--log tensorboard needs TensorBoard: pip install 'lore-vit[tb]' (or pip install "
                        "tensorboard), or train with --log jsonl") from None


def tag(key: str) -> str | None:
    if key in TAGS:
        return TAGS[key]
    if key.startswith("loss_"):
        return f"loss/{key[len('loss_'):]}"
    return None


def log_dir(run_dir: Path, stage: str) -> Path:
    """One folder per training stage (easy-to-hard trains e, then h): each stage counts its own
    epochs from 1, and TensorBoard's purge on resume would otherwise hide the other stage's curve."""
    return run_dir / "tb" if stage == "main" else run_dir / "tb" / f"stage-{stage}"


class Writer:
    """Scalars per epoch (step = the stage's epoch number) from the lines written to metrics.jsonl."""

    def __init__(self, run_dir: Path, stage: str, resumed_epoch: int = 0):
        require()
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops what a killed run logged after its last checkpoint, as metrics.jsonl does
        self.writer = SummaryWriter(str(log_dir(run_dir, stage)),
                                    purge_step=resumed_epoch + 1 if resumed_epoch else None)

    def epoch(self, line: dict[str, Any]) -> None:
        step = int(line["epoch"])
        for key, value in line.items():
            name = tag(key)
            if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, float(value), step)
        self.writer.flush()

    def scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, float(value), step)
        self.writer.flush()

    def figure(self, name: str, figure, step: int) -> None:
        self.writer.add_figure(name, figure, step, close=False)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@torch.no_grad()
def attention_figure(model: torch.nn.Module, samples: list, img_size: int, data_config: dict,
                     classnames: list[str], method: str, n: int = 4):
    """The ``lore attention`` grid (B-B, KLA, the run's CLS attention) of ``n`` evenly picked images."""
    from .viz.attention import (build_panels, compute_maps, figure, load_images, pick_evenly,
                                resolve_layer, to_display)

    picked = [samples[i] for i in pick_evenly(len(samples), n)]
    paths, labels = [p for p, _ in picked], [int(y) for _, y in picked]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images = load_images(paths, img_size, data_config).to(device)
    maps = compute_maps(model, images, resolve_layer(-1, model.black_box.depth), labels)
    model.train(was_training)
    panels = build_panels([Path(p).name for p in paths], maps, img_size, method, classnames,
                          "true class", per_head=False)
    return figure(to_display(images.cpu(), data_config), panels)


def log_final(run_dir: Path, final: dict, step: int, model: torch.nn.Module | None = None,
              samples: list | None = None, img_size: int = 224, data_config: dict | None = None,
              classnames: list[str] | None = None) -> None:
    """The test accuracy at the last epoch and, given ``samples``, the attention grid of a few."""
    writer = Writer(run_dir, "main")
    try:
        writer.scalar("accuracy/test", final["test_acc1"], step)
        if model is not None and samples:
            fig = attention_figure(model, samples, img_size, data_config or {}, classnames or [],
                                   final.get("method", "run"))
            writer.figure("attention", fig, step)
    finally:
        writer.close()
