"""Evaluation and feature passes: test accuracy, per-epoch metrics, frozen features, BatchNorm
recalibration."""

from __future__ import annotations

import sys
import time

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import bn_modes, features
from ..data import ImageDataset, ShardedSampler, eval_transform
from ..distributed import all_reduce_sum
from ..metrics import accuracy
from .context import Context, amp_dtype


def eval_loader(ctx: Context, samples: list, batch_size: int | None = None):
    """The test-transform loader of ``samples``, sharded across processes."""
    dataset = ImageDataset(samples, eval_transform(ctx.cfg.img_size, ctx.data_config))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or ctx.cfg.batch_size,
                                       sampler=ShardedSampler(len(samples), ctx.info.rank, ctx.info.world),
                                       num_workers=ctx.cfg.workers, pin_memory=ctx.device.type == "cuda")


def _feature_batches(ctx: Context, model: nn.Module, samples: list):
    """The test set as (cached features, labels) batches, in the image loader's batches."""
    feats = features.eval_features(ctx, model, samples)
    labels = torch.tensor([y for _, y in samples])
    for i in range(0, len(samples), ctx.cfg.batch_size):
        yield feats[i:i + ctx.cfg.batch_size], labels[i:i + ctx.cfg.batch_size]


@torch.no_grad()
def evaluate(ctx: Context, model: nn.Module, samples: list) -> dict:
    """Top-1 / top-5 accuracy over ``samples`` (sharded across processes, reduced); a frozen-feature
    model in one process reads its backbone features once (lore.features)."""
    model.eval()
    amp = amp_dtype(ctx.cfg, ctx.device)
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    start = time.time()
    cached = features.uses_features(model) and not ctx.info.enabled
    batches = _feature_batches(ctx, model, samples) if cached else eval_loader(ctx, samples)
    for images, targets, *_ in tqdm(batches, desc="eval", leave=False,
                                    disable=not ctx.info.main or None, file=sys.stderr):
        images, targets = images.to(ctx.device), targets.to(ctx.device)
        with torch.autocast(ctx.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model.logits_from_features(images) if cached else model(images)
        top1, top5 = accuracy(logits.float(), targets, topk=(1, min(5, logits.shape[1])))
        n = len(targets)
        sums += torch.tensor([top1 * n, top5 * n, n], dtype=torch.float64, device=ctx.device)
    sums = all_reduce_sum(sums, ctx.info)
    seconds = time.time() - start
    n = max(sums[2].item(), 1.0)
    return {"acc1": sums[0].item() / n, "acc5": sums[1].item() / n, "n": int(sums[2].item()),
            "seconds": round(seconds, 3), "images_per_s": round(sums[2].item() / max(seconds, 1e-9), 2)}


@torch.no_grad()
def encode(ctx: Context, model: nn.Module, samples: list, use_prompts: bool = False,
           with_logits: bool = False) -> tuple[torch.Tensor, ...]:
    """Pooled features (pre-head), labels (and, ``with_logits``, the model's logits) of ``samples``
    in order (single process). Without prompts: the frozen backbone's features."""
    from ..models.base import AdaptedViT

    model.eval()
    feats, labels, logits = [], [], []
    loader = torch.utils.data.DataLoader(ImageDataset(samples, eval_transform(ctx.cfg.img_size, ctx.data_config)),
                                         batch_size=ctx.cfg.batch_size, num_workers=ctx.cfg.workers)
    for images, targets, _ in tqdm(loader, desc="features", leave=False, disable=not ctx.info.main or None,
                                   file=sys.stderr):
        images = images.to(ctx.device)
        out = model.features(images) if use_prompts else vars(model.black_box(images))
        feats.append(out["pooled"].float().cpu())
        labels.append(targets)
        if with_logits:  # one pass: the plain AdaptedViT forward is head(pooled)
            plain = type(model).forward is AdaptedViT.forward and use_prompts
            logits.append((model.head(out["pooled"]) if plain else model(images)).float().cpu())
    result = (torch.cat(feats), torch.cat(labels))
    return result + (torch.cat(logits),) if with_logits else result


def recalibrate(ctx: Context, model: nn.Module, samples: list) -> None:
    """--bn-mode recalibrate: the White Box's BatchNorm statistics from all training images."""
    bn_modes.recalibrate(model, eval_loader(ctx, samples), ctx.device)


def epoch_metrics(ctx: Context, model: nn.Module, sums: dict, epoch: int, stage: str, lr: float,
                  seconds: float, val: list | None, train_samples: list) -> dict:
    """One metrics.jsonl line: the epoch's loss terms and training accuracy reduced over processes, and
    the validation accuracy every --val-every epochs."""
    keys = sorted(sums)
    # one read of the device-side sums (the step loop never reads them)
    vec = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64).to(ctx.device) for k in keys]) if keys \
        else torch.zeros(0, dtype=torch.float64, device=ctx.device)
    vec = dict(zip(keys, all_reduce_sum(vec, ctx.info).tolist()))
    n = max(vec.get("n", 0.0), 1.0)
    line = {"stage": stage, "epoch": epoch + 1, "lr": lr, "loss": vec.get("loss", 0.0) / n}
    for k in keys:
        if k.startswith("loss_"):
            line[k] = vec[k] / n
    line["train_acc"] = vec.get("correct", 0.0) / n
    if val and ctx.cfg.val_every and (epoch + 1) % ctx.cfg.val_every == 0:
        mode = model.training
        if ctx.cfg.bn_mode == "recalibrate":
            recalibrate(ctx, model, train_samples)
        line["val_acc"] = evaluate(ctx, model, val)["acc1"]
        model.train(mode)
    line["seconds"] = round(seconds, 3)
    return line
