"""The training loop of one stage: a fresh SGD, the learning-rate schedule, AMP, DDP, resume
from the stage's last checkpoint, a checkpoint and a metrics line per epoch."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import bn_modes, features, tensorboard_log
from ..checkpoint import load_train_state
from ..config import TrainConfig
from ..data import EpochBatchSampler, ImageDataset, train_transform
from ..data import image_cache
from ..data.sampling import check_batch_for_norm
from ..distributed import convert_sync_batchnorm
from ..errors import LoreError
from ..progress import Heartbeat
from .context import Context, amp_dtype
from .bookkeeping import latest_state, save_state, truncate_metrics
from .. import rundir

# steps between the host's reads of the running sums and the finiteness record (a logging interval)
SYNC_EVERY = 50


def _cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / max(total, 1)))


def learning_rate(cfg: TrainConfig, lr: float, epoch: int, global_step: int, steps_per_epoch: int,
                  epochs: int, warm: int) -> float:
    """The learning rate of one step: ``warm`` warm-up epochs, then the cosine from ``lr`` to --min-lr.

    ``--warmup constant`` (CoOp / Dassl): --warmup-lr during the warm-up, then a cosine that keeps its
    full length (Dassl's WARMUP_RECOUNT), so it never reaches its end. ``--warmup linear`` (VPT's
    WarmupCosineSchedule): from 0 up to ``lr``, the cosine spanning the remaining epochs."""
    per_epoch = cfg.lr_schedule == "epoch"  # the reference steps its cosine schedule once per epoch
    now = epoch if per_epoch else global_step
    warm_len = warm if per_epoch else warm * steps_per_epoch
    total = epochs if per_epoch else epochs * steps_per_epoch
    if cfg.warmup == "linear":
        if now < warm_len:
            return lr * now / warm_len
        return _cosine_lr(now - warm_len, total - warm_len, lr, cfg.min_lr)
    if global_step < steps_per_epoch * warm:
        return cfg.warmup_lr
    return _cosine_lr(max(now - warm_len, 0), total, lr, cfg.min_lr)


class _Step(nn.Module):
    """The training loss as a module's forward, so DDP's gradient hooks see it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, targets, index):
        return self.model.training_loss(images, targets, index)


@dataclass
class _Loop:
    """One stage's training loop: what it trains, with what, and where it stands."""
    ctx: Context
    model: nn.Module
    samples: list
    lr: float
    stage: str
    val: list | None
    epochs: int
    optimizer: torch.optim.Optimizer
    dataset: ImageDataset
    steps_per_epoch: int
    counters: dict
    step_fn: nn.Module
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler
    tb: object | None
    epoch_metrics: Callable[..., dict]
    batches: "_EpochBatches"
    loader: torch.utils.data.DataLoader
    cur_lr: float = 0.0
    # the first non-finite step of the stage, kept on the device: [global step (inf: none), its loss]
    bad: torch.Tensor | None = None


def fit(ctx: Context, model: nn.Module, samples: list, lr: float, stage: str, val: list | None, epochs: int,
        epoch_metrics: Callable[..., dict]) -> None:
    """Train ``model`` on ``samples`` for ``epochs`` with a fresh SGD from ``lr``, resuming the
    stage from its last checkpoint; ``epoch_metrics`` makes each epoch's metrics line
    (:func:`lore.train.evaluate.epoch_metrics`)."""
    loop = _start_loop(ctx, model, samples, lr, stage, val, epochs, epoch_metrics)
    for epoch in range(loop.counters["epoch"], loop.epochs):
        _train_epoch(loop, epoch)
    if loop.tb is not None:
        loop.tb.close()


def _start_loop(ctx: Context, model: nn.Module, samples: list, lr: float, stage: str, val: list | None,
                epochs: int, epoch_metrics: Callable[..., dict]) -> _Loop:
    """The optimiser, data, step function and counters of a stage (resumed from its last state)."""
    cfg, info, device = ctx.cfg, ctx.info, ctx.device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LoreError(f"--method {cfg.method} has no trainable parameters")
    check_batch_for_norm(model, cfg.batch_size, info.world)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    # frozen-feature methods train on backbone features computed once (lore.features)
    dataset = features.training_dataset(ctx, model, samples) or \
        image_cache.training_dataset(samples, train_transform(cfg.img_size, ctx.data_config, cfg.aug),
                                     cfg.cache_images)
    steps_per_epoch = EpochBatchSampler(len(samples), cfg.batch_size, cfg.seed, 0, info.rank, info.world).steps()
    if steps_per_epoch == 0:
        raise LoreError(f"{len(samples)} training images cannot fill a batch on {info.world} processes")
    counters = {"stage": stage, "epoch": 0, "step": 0, "global_step": 0, "sums": {}}
    resumed = latest_state(ctx.out / rundir.CHECKPOINTS, stage) if cfg.resume else None
    if resumed is not None:
        counters = load_train_state(resumed, model, optimizer)
        ctx.log(f"resumed from {resumed} (epoch {counters['epoch']}, step {counters['step']})")
    tb = None
    if info.main:
        truncate_metrics(ctx.out / rundir.METRICS, stage, counters["epoch"])
        if cfg.log == "tensorboard":
            tb = tensorboard_log.Writer(ctx.out, stage, resumed_epoch=counters["epoch"])
    step_fn: nn.Module = features.FeatureStep(model) if isinstance(dataset, features.FeatureDataset) else _Step(model)
    if info.enabled:
        # the White Box BatchNorm sees the global batch, as in one process
        step_fn = convert_sync_batchnorm(step_fn, device)
        step_fn = nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_fn = torch.compile(step_fn)
    amp = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    batches = _EpochBatches()
    # cached features need no worker processes; a sample's augmentation depends on its own seed only
    workers = 0 if isinstance(dataset, features.FeatureDataset) else cfg.workers
    # one loader for the stage: its workers persist across epochs and prefetch; an own generator, so
    # starting it never draws from the global RNG (a resumed run's dropout masks would drift)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers > 0 else None,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    return _Loop(ctx, model, samples, lr, stage, val, epochs, optimizer, dataset, steps_per_epoch, counters,
                 step_fn, amp, scaler, tb, epoch_metrics, batches, loader,
                 bad=torch.tensor([math.inf, math.nan], dtype=torch.float64, device=device))


class _EpochBatches(torch.utils.data.Sampler):
    """The persistent loader's batch sampler: each epoch's own :class:`EpochBatchSampler`, set before
    the epoch is iterated (so every epoch's sample order is what a fresh loader would give)."""

    def __init__(self):
        self.epoch: EpochBatchSampler | None = None

    def __iter__(self):
        return iter(self.epoch)

    def __len__(self) -> int:
        return len(self.epoch)


def _train_epoch(loop: _Loop, epoch: int) -> None:
    """One epoch (from the resumed step), then its metrics line and checkpoint."""
    ctx, cfg, info, counters, stage = loop.ctx, loop.ctx.cfg, loop.ctx.info, loop.counters, loop.stage
    # the reference evaluates with model.eval() after epoch 1 and never switches back (and its
    # stage h starts after an eval-mode selection pass): --bn-mode reference reproduces that
    frozen_norm = cfg.bn_mode == "reference" and (epoch > 0 or stage == "h")
    loop.model.train(not frozen_norm)
    if cfg.bn_mode == "freeze":
        bn_modes.set_frozen(loop.model, counters["global_step"] >= cfg.bn_freeze_steps)
    sampler = EpochBatchSampler(len(loop.samples), cfg.batch_size, cfg.seed, epoch + 1000 * (stage == "h"),
                                info.rank, info.world, start_step=counters["step"])
    loop.batches.epoch = sampler
    # the running sums stay on the device: a step never waits for the host to read a number
    sums = {k: torch.tensor(v, dtype=torch.float64, device=ctx.device) for k, v in counters["sums"].items()}
    epoch_start = time.time()
    bar = tqdm(loop.loader, desc=f"{stage} epoch {epoch + 1}/{loop.epochs}", disable=not info.main or None,
               leave=False, dynamic_ncols=True, file=sys.stderr)
    heartbeat = Heartbeat(bar)
    for images, targets, index in bar:
        batch_sums = _train_step(loop, epoch, sampler.global_batch(counters["step"]), images, targets, index)
        for k, v in batch_sums.items():
            sums[k] = sums[k] + v if k in sums else v.to(torch.float64)
        saving = bool(cfg.save_every) and counters["global_step"] % cfg.save_every == 0 and \
            counters["step"] < loop.steps_per_epoch
        # the host reads the device once per logging interval (same steps on every process) and
        # before a checkpoint is written: no checkpoint ever holds a step after a non-finite loss
        if saving or counters["global_step"] % SYNC_EVERY == 0:
            check_finite(loop)
            if not bar.disable:
                bar.set_postfix(loss=f"{float(sums['loss']) / max(float(sums['n']), 1):.4f}",
                                lr=f"{loop.cur_lr:.2e}")
        if heartbeat.due():
            ctx.log(f"{stage} epoch {epoch + 1}/{loop.epochs} step {counters['step']}/{loop.steps_per_epoch} "
                    f"loss {float(sums['loss']) / max(float(sums['n']), 1):.4f} lr {loop.cur_lr:.2e} "
                    f"({heartbeat.elapsed():.0f} s into the epoch)")
        if saving:
            counters["sums"] = {k: float(v) for k, v in sums.items()}
            save_state(ctx, loop.model, loop.optimizer, counters)
    bar.close()
    check_finite(loop)  # before the epoch's metrics line and checkpoint
    line = loop.epoch_metrics(ctx, loop.model, sums, epoch, stage, loop.cur_lr, time.time() - epoch_start, loop.val,
                          loop.samples)
    counters.update(epoch=epoch + 1, step=0, sums={})
    if info.main:
        with open(ctx.out / rundir.METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if loop.tb is not None:
            loop.tb.epoch(line)
    save_state(ctx, loop.model, loop.optimizer, counters)
    ctx.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))


def _train_step(loop: _Loop, epoch: int, global_batch: int, images: torch.Tensor, targets: torch.Tensor,
                index: torch.Tensor) -> dict:
    """One optimiser step; the batch's sums (images, loss, correct, loss terms)."""
    ctx, cfg, counters, device = loop.ctx, loop.ctx.cfg, loop.counters, loop.ctx.device
    step = counters["step"]
    loop.cur_lr = learning_rate(cfg, loop.lr, epoch, counters["global_step"], loop.steps_per_epoch, loop.epochs,
                                0 if loop.stage == "h" else cfg.warmup_epochs)
    for g in loop.optimizer.param_groups:
        g["lr"] = loop.cur_lr
    if cfg.bn_mode == "freeze" and counters["global_step"] == cfg.bn_freeze_steps:
        bn_modes.set_frozen(loop.model, True)
    images = images.to(device, non_blocking=True)
    if device.type == "cuda" and images.ndim == 4:  # the patch-embedding conv is faster in NHWC
        images = images.contiguous(memory_format=torch.channels_last)
    targets, index = targets.to(device), index.to(device)
    with torch.autocast(device.type, dtype=loop.amp or torch.float32, enabled=loop.amp is not None):
        per_sample, logits, terms = loop.step_fn(images, targets, index)
    # sum / global batch * world: DDP's gradient averaging then gives the global-batch mean
    loss = per_sample.float().sum() * ctx.info.world / global_batch
    _record_non_finite(loop, loss, counters["global_step"])
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(loss).backward()
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    # device tensors: read by the host only at a logging interval or the epoch's end
    batch_sums = {"n": torch.full((), float(len(targets)), dtype=torch.float64, device=device),
                  "loss": per_sample.detach().float().sum(),
                  "correct": (logits.detach().argmax(-1) == targets).sum()}
    for k, v in terms.items():
        batch_sums[f"loss_{k}"] = v.detach().float().sum()
    counters["step"] += 1
    counters["global_step"] += 1
    return batch_sums


def _record_non_finite(loop: _Loop, loss: torch.Tensor, global_step: int) -> None:
    """Keep, on the device, the first step whose loss is not finite (no host synchronisation)."""
    first = ~torch.isfinite(loss.detach()) & torch.isinf(loop.bad[0])
    loop.bad[0] = torch.where(first, float(global_step), loop.bad[0])
    loop.bad[1] = torch.where(first, loss.detach().double(), loop.bad[1])


def check_finite(loop: _Loop) -> None:
    """Stop training, naming the epoch and step of the first non-finite loss (the earliest over all
    processes); the last checkpoint written before it is kept."""
    bad = loop.bad.clone()
    if loop.ctx.info.enabled:
        import torch.distributed as dist
        step = bad[:1].contiguous()
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
        bad[0] = step[0]
    global_step, value = bad.tolist()
    if math.isinf(global_step):
        return
    epoch, step = divmod(int(global_step), loop.steps_per_epoch)
    raise LoreError(f"loss became {value} at epoch {epoch + 1}, step {step} (global step {int(global_step)}); "
                    f"training stopped, the last good checkpoint in {loop.ctx.out / rundir.CHECKPOINTS} is "
                    "kept. Lower --lr, check the data, or disable --amp")
