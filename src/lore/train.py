"""``lore train``: one harness for every method (single process or torchrun/DDP).

Run directory: ``config.yaml`` (resolved options), ``metrics.jsonl`` (one line per epoch),
``final.json`` (test accuracy, parameters, GFLOPs, speed), ``checkpoint.safetensors`` (trainable
tensors only) + ``model.json`` (how to rebuild), ``fewshot.json`` (the chosen training files),
``checkpoints/step-*.safetensors`` (resumable state: model, optimizer, RNG, position).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import config as config_mod
from .backbone import clip_logits
from .checkpoint import load_train_state, save_model, save_train_state
from .config import TrainConfig
from .curriculum import select_easy, select_hard
from .data import (EpochBatchSampler, ImageDataset, ShardedSampler, eval_transform, few_shot_indices,
                   load_dataset, train_transform)
from .data.catalog import load_paper_dataset
from .data.datasets import Splits, check_class_coverage, check_headers, check_split_integrity
from .data.sampling import check_batch_for_norm
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, convert_sync_batchnorm, init_distributed
from .errors import LoreError
from .flops import GFLOPS_COUNT, count_gflops, count_params, parameter_shares, text_tower_params
from .io import absolute_paths, atomic_write_json, atomic_write_text, check_output_dir
from .knowledge import (NEGATIVE_TEMPLATE, cached_class_embeddings, default_knowledge_spec, learned_knowledge,
                        most_similar_classes)
from . import bn_modes
from .probe import cross_fitted_predictions
from . import tensorboard_log
from .metrics import accuracy
from .models import build_model
from .models.base import zeroshot_sentences
from .models.coop import check_text_side, weightless
from .models.registry import Method, get as method_of
from .progress import Heartbeat
from .lock import run_lock
from .values import refuse_recipe_changes
# the run's resolved options and its recipe's data config are the run directory's: lore.runs
from .runs import resolve_backbone_defaults, resolve_device, run_data_config  # noqa: F401


@dataclass
class Context:
    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    out: Path
    data_config: dict = field(default_factory=dict)

    def log(self, msg: str) -> None:
        if self.info.main:
            tqdm.write(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# entry point


def run(cfg: TrainConfig) -> dict:
    if cfg.resume:
        cfg = _resume_config(cfg)
    cfg = absolute_paths(cfg)
    config_mod.validate(cfg)
    if cfg.log == "tensorboard":
        tensorboard_log.require()
    cfg = resolve_backbone_defaults(cfg)
    if method_of(cfg.method).text_side:
        check_text_side(cfg)
    if cfg.out:
        check_output_dir(cfg.out, "--resume" if cfg.resume else "--out")
    info = init_distributed(resolve_device(cfg.device).type)
    try:
        if cfg.dry_run:
            return dry_run(cfg)
        with run_lock(cfg.out, info.main, "--resume" if cfg.resume else "--out"):
            return _train(cfg, info)
    finally:
        cleanup(info)


def _resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def _resume_config(cfg: TrainConfig) -> TrainConfig:
    run_dir = Path(cfg.resume)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise LoreError(f"--resume {run_dir}: no config.yaml there (not a lore run directory)")
    values = config_mod.load_yaml(str(saved))
    refuse_recipe_changes(cfg, values, run_dir)
    # execution settings may change on resume; the recipe may not
    for key in ("device", "workers", "save_every", "keep_last", "log", "log_images"):
        values[key] = getattr(cfg, key)
    values.update(resume=str(run_dir), out=str(run_dir))
    return config_mod.make(values, source=str(saved))


def build_from_config(cfg: TrainConfig, num_classes: int, knowledge: torch.Tensor | None = None,
                      pretrained: bool | None = None, classnames: list[str] | None = None) -> nn.Module:
    """The model a config describes (same seed -> same initial White Box and random backbone)."""
    torch.manual_seed(cfg.seed)
    method = method_of(cfg.method)
    options = dict(knowledge=knowledge, **method.options(cfg))
    if method.text_side:
        # it runs the frozen CLIP text tower itself; --dry-run builds it without weights
        spec = cfg.knowledge or default_knowledge_spec(cfg.backbone)
        options.update(classnames=classnames or [f"class {i}" for i in range(num_classes)],
                       text_tower=spec if pretrained is not False else weightless(spec))
    return build_model(cfg.method, cfg.backbone, num_classes,
                       pretrained=cfg.pretrained if pretrained is None else pretrained,
                       checkpoint=cfg.checkpoint, backbone_args=cfg.backbone_args, **options)


def text_tower_spec(cfg: TrainConfig) -> str:
    """The CLIP text tower that belongs to the backbone (a ``clip:`` --knowledge names it explicitly)."""
    knowledge = cfg.knowledge or ""
    return knowledge if knowledge.startswith("clip:") else default_knowledge_spec(cfg.backbone)


def _parameter_report(cfg: TrainConfig, model: nn.Module) -> dict:
    text = text_tower_params(text_tower_spec(cfg)) if model.black_box.is_clip else None
    return {**count_params(model), **parameter_shares(model, text)}


def dry_run(cfg: TrainConfig) -> dict:
    """Parameter and GFLOPs summary without data or pre-trained weights."""
    num_classes = cfg.num_classes
    if num_classes is None:
        num_classes = len(load_data(cfg).classnames)
    knowledge = None
    if method_of(cfg.method).dry_run_knowledge:
        knowledge = torch.randn(num_classes, cfg.knowledge_dim)
    model = build_from_config(cfg, num_classes, knowledge=knowledge, pretrained=False)
    params = _parameter_report(cfg, model)
    gflops = count_gflops(model, cfg.img_size)
    baseline = count_gflops(build_model("linear", model.black_box, num_classes), cfg.img_size)
    summary = {"method": cfg.method, "backbone": cfg.backbone, "num_classes": num_classes,
               "img_size": cfg.img_size, **params, "gflops": round(gflops, 4),
               "gflops_backbone": round(baseline, 4), "gflops_ratio": round(gflops / baseline, 4),
               "gflops_count": GFLOPS_COUNT}
    print(f"{cfg.method} on {cfg.backbone} ({num_classes} classes, {cfg.img_size}px)")
    print(f"  trainable parameters: {params['trainable_params']:,} "
          f"({params['trainable_pct_image_tower']:.2f}% of image tower + trainable"
          + (f", {params['trainable_pct_clip']:.2f}% of CLIP image + text towers + trainable"
             if "trainable_pct_clip" in params else "") + ")")
    print(f"  inference GFLOPs/image: {gflops:.3f} (plain backbone {baseline:.3f}, ratio {gflops / baseline:.3f}; "
          f"{GFLOPS_COUNT})")
    if cfg.out:
        atomic_write_json(Path(cfg.out) / "model_summary.json", summary)
        print(f"  written: {Path(cfg.out) / 'model_summary.json'}")
    return summary


# ---------------------------------------------------------------------------------------------
# training


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    device = _resolve_device(cfg, info)
    out = Path(cfg.out)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    data = load_data(cfg)
    classnames = data.classnames
    train_all = data.get("train")
    test = data.splits.get("test") or data.get("val")
    val = data.splits.get("val") if data.splits.get("test") else None
    check_headers(test, "test")
    method = method_of(cfg.method)
    if info.main:
        _start_run_dir(cfg, out, data, method)
    ctx = Context(cfg, info, device, out)
    knowledge = _knowledge(ctx, classnames, method)
    if method.check_knowledge and knowledge is not None:
        warn_degenerate_knowledge(knowledge, classnames, _knowledge_spec(cfg), ctx.log)
    model = build_from_config(cfg, len(classnames), knowledge, classnames=classnames).to(device)
    ctx.data_config = run_data_config(cfg, model.black_box)
    started = time.time()
    stages = _train_model(ctx, method, model, train_all, test, val, knowledge, classnames)
    final = _final(ctx, model, test, stages, time.time() - started, len(classnames))
    if info.main:
        recipe = {"backbone": cfg.backbone, "pretrained": cfg.pretrained, "checkpoint": cfg.checkpoint,
                  "backbone_args": cfg.backbone_args, "backbone_init_seed": cfg.seed,
                  "classnames": classnames, "img_size": cfg.img_size, "data": cfg.data}
        save_model(out, model, recipe)
        atomic_write_json(out / "final.json", final)
        if cfg.log == "tensorboard":
            tensorboard_log.log_final(out, final, cfg.epochs, model, (val or test) if cfg.log_images else None,
                                      cfg.img_size, ctx.data_config, classnames)
        ctx.log(f"test top-1 {final['test_acc1']:.4f}  top-5 {final['test_acc5']:.4f}  -> {out}")
    barrier(info)
    return final


def _start_run_dir(cfg: TrainConfig, out: Path, data: Splits, method: Method) -> None:
    """The run directory with config.yaml, which split was read (and a note when it is not the
    paper's), and the method's own account of its choices."""
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        _refuse_overwrite(out)
    note = f"# {data.split}\n" if data.split else ""
    if data.note:  # the split is not the paper's: said once, here and in config.yaml
        print(f"lore: note: {data.note}", file=sys.stderr)
        note += f"# note: {data.note}\n"
    atomic_write_text(out / "config.yaml", note + config_mod.to_yaml(cfg))
    if method.describe:
        print(f"lore: {method.describe(cfg)}", file=sys.stderr)


def _train_model(ctx: Context, method: Method, model: nn.Module, train_all: list, test: list,
                 val: list | None, knowledge: torch.Tensor | None, classnames: list[str]) -> dict:
    """Train (or, training-free, only build the cache of) the model; the curriculum's stages."""
    cfg = ctx.cfg
    if cfg.curriculum == "easy-to-hard":
        return _easy_to_hard(ctx, model, train_all, test, val, knowledge, classnames)
    chosen = list(range(len(train_all)))
    if cfg.shots:
        chosen = few_shot_indices([y for _, y in train_all], cfg.shots, cfg.seed, classnames).tolist()
        _record_selection(ctx, "fewshot.json", train_all, chosen)
    if hasattr(model, "build_cache"):  # Tip-Adapter(-F): the few-shot cache, before any training
        model.build_cache(_encode(ctx, model, [train_all[i] for i in chosen]), len(classnames))
    if method.trains:
        _fit(ctx, model, [train_all[i] for i in chosen], cfg.lr, "main", val, knowledge, classnames)
    return {}


def _final(ctx: Context, model: nn.Module, test: list, stages: dict, train_seconds: float,
           num_classes: int) -> dict:
    """final.json: test accuracy, parameters, GFLOPs, speed, the last losses."""
    cfg = ctx.cfg
    result = evaluate(ctx, model, test)
    final = {"method": cfg.method, "backbone": cfg.backbone, "dataset": cfg.data, "shots": cfg.shots,
             "seed": cfg.seed, "num_classes": num_classes, "test_samples": result["n"],
             "test_acc1": result["acc1"], "test_acc5": result["acc5"], **_parameter_report(cfg, model),
             "gflops": round(count_gflops(model, cfg.img_size, ctx.device), 4), "gflops_count": GFLOPS_COUNT,
             "seconds": round(train_seconds, 2), "images_per_s": result["images_per_s"]}
    if stages:
        stages.setdefault("h", result)
        final["stages"] = {k: {"test_acc1": v["acc1"], "test_acc5": v["acc5"]} for k, v in stages.items()}
    last = _last_metrics(ctx.out)
    for key in ("loss", "loss_task", "loss_kp"):
        if key in last:
            final[key] = last[key]
    return final


def _refuse_overwrite(out: Path) -> None:
    if (out / "final.json").exists() or (out / "checkpoints").exists():
        raise LoreError(f"--out {out} already holds a run; choose a new directory or continue it "
                        f"with --resume {out}")
    if (out / "metrics.jsonl").exists():  # a fresh run would append to it, then misread it
        raise LoreError(f"--out {out} already holds a metrics.jsonl but no run to continue (one stopped "
                        "before its first checkpoint?); choose a new directory, or remove the file")


def load_data(cfg: TrainConfig) -> Splits:
    """The run's dataset: a paper dataset as distributed (--dataset), else --data in --format."""
    if cfg.dataset:
        data = load_paper_dataset(cfg.dataset, cfg.data, cfg.split_file)
    elif cfg.split_file:
        raise LoreError("--split-file goes with --dataset NAME (a paper dataset read as distributed)")
    else:
        data = load_dataset(cfg.data, cfg.format, cfg.classnames, cfg.image_dir, cfg.holdout)
    check_split_integrity(data)
    check_class_coverage(data, cfg.allow_missing_classes, warn=lambda m: print(m, file=sys.stderr))
    return data


def _knowledge_spec(cfg: TrainConfig) -> str:
    return cfg.knowledge or default_knowledge_spec(cfg.backbone)


def _knowledge(ctx: Context, classnames: list[str], method: Method | None = None) -> torch.Tensor | None:
    """The class text embeddings the method is built with (None: it needs none)."""
    cfg = ctx.cfg
    method = method or method_of(cfg.method)
    if method.needs_knowledge and learned_knowledge(cfg.knowledge) and not method.learned_knowledge:
        raise LoreError(f"--knowledge {cfg.knowledge}: a learned class embedding exists for LORE only")
    if not method.wants_knowledge(cfg) or learned_knowledge(cfg.knowledge):
        return None
    torch.manual_seed(cfg.seed)  # a random-init text tower (tests) encodes the same on every run
    templates = (method.templates or zeroshot_sentences)(cfg)
    return _rank0_cached(ctx, "knowledge.safetensors", _knowledge_spec(cfg), classnames, templates)


def warn_degenerate_knowledge(emb: torch.Tensor, classnames: list[str], spec: str, log,
                              threshold: float = 0.95) -> float:
    """Warn when two classes' knowledge rows are nearly the same: their K-L prototypes then coincide
    and L_kp pulls toward and pushes from the same point (a no-op, or noise)."""
    top, i, j = most_similar_classes(emb)
    if top >= threshold:
        log(f"lore: WARNING: the class knowledge ({spec}) of {classnames[i]!r} and {classnames[j]!r} is "
            f"nearly identical (cosine {top:.3f} >= {threshold}); L_kp can hardly tell these classes "
            "apart. Use richer class descriptions (--template or --knowledge file:), "
            "--knowledge learned:DIM, or --no-kp")
    return top

def _rank0_cached(ctx: Context, name: str, spec: str, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """Rank 0 encodes and writes the cache; the other ranks read it (one file, one encoder run)."""
    if ctx.info.main:
        emb = cached_class_embeddings(ctx.out / name, spec, classnames, templates, ctx.device)
    barrier(ctx.info)
    if not ctx.info.main:
        emb = cached_class_embeddings(ctx.out / name, spec, classnames, templates, ctx.device)
    return emb


def _record_selection(ctx: Context, name: str, samples: list, chosen: list[int], **extra) -> None:
    if ctx.info.main:
        atomic_write_json(ctx.out / name, {"seed": ctx.cfg.seed, "shots": ctx.cfg.shots,
                                           "files": [samples[i][0] for i in chosen],
                                           "labels": [samples[i][1] for i in chosen], **extra})


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


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    # on a CPU only an explicit --amp bf16 (fast where the CPU has AMX / AVX512-BF16 units)
    if cfg.amp == "none" or (device.type != "cuda" and cfg.amp != "bf16"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16


class _Step(nn.Module):
    """The training loss as a module's forward, so DDP's gradient hooks see it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, targets, index):
        return self.model.training_loss(images, targets, index)


def _fit(ctx: Context, model: nn.Module, samples: list, lr: float, stage: str, val: list | None,
         knowledge: torch.Tensor | None, classnames: list[str], epochs: int | None = None,
         negatives: torch.Tensor | None = None) -> None:
    """Train on ``samples`` for ``epochs`` (default --epochs) with a fresh SGD from ``lr``.

    ``negatives``: LORE's wrong class p per sample, fixed for the stage (easy-to-hard stage h: the
    stage-e model's predictions); otherwise zero-shot CLIP's when --negative zeroshot."""
    cfg = ctx.cfg
    _set_negatives(ctx, model, samples, knowledge, classnames, negatives)
    loop = _start_loop(ctx, model, samples, lr, stage, val, cfg.epochs if epochs is None else epochs)
    for epoch in range(loop.counters["epoch"], loop.epochs):
        _train_epoch(loop, epoch)
    if loop.tb is not None:
        loop.tb.close()
    if cfg.bn_mode == "recalibrate":  # the saved model then tests as it will be tested
        _recalibrate(ctx, model, samples)
    model.eval()


def _set_negatives(ctx: Context, model: nn.Module, samples: list, knowledge: torch.Tensor | None,
                   classnames: list[str], negatives: torch.Tensor | None) -> None:
    """The wrong class p of a model that takes it from outside (LORE's --negative zeroshot | probe)."""
    if negatives is not None:
        model.set_negatives(negatives)
    elif getattr(model, "negative", None) == "zeroshot" and knowledge is not None:
        model.set_negatives(_zero_shot_predictions(ctx, model, samples, classnames))
    elif getattr(model, "negative", None) == "probe":
        feats, labels = _encode(ctx, model, samples)
        model.set_negatives(cross_fitted_predictions(feats, labels, len(classnames), seed=ctx.cfg.seed))


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
    cur_lr: float = 0.0


def _start_loop(ctx: Context, model: nn.Module, samples: list, lr: float, stage: str, val: list | None,
                epochs: int) -> _Loop:
    """The optimiser, data, step function and counters of a stage (resumed from its last state)."""
    cfg, info, device = ctx.cfg, ctx.info, ctx.device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LoreError(f"--method {cfg.method} has no trainable parameters")
    check_batch_for_norm(model, cfg.batch_size, info.world)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    dataset = ImageDataset(samples, train_transform(cfg.img_size, ctx.data_config, cfg.aug))
    steps_per_epoch = EpochBatchSampler(len(samples), cfg.batch_size, cfg.seed, 0, info.rank, info.world).steps()
    if steps_per_epoch == 0:
        raise LoreError(f"{len(samples)} training images cannot fill a batch on {info.world} processes")
    counters = {"stage": stage, "epoch": 0, "step": 0, "global_step": 0, "sums": {}}
    resumed = _latest_state(ctx.out / "checkpoints", stage) if cfg.resume else None
    if resumed is not None:
        counters = load_train_state(resumed, model, optimizer)
        ctx.log(f"resumed from {resumed} (epoch {counters['epoch']}, step {counters['step']})")
    tb = None
    if info.main:
        _truncate_metrics(ctx.out / "metrics.jsonl", stage, counters["epoch"])
        if cfg.log == "tensorboard":
            tb = tensorboard_log.Writer(ctx.out, stage, resumed_epoch=counters["epoch"])
    step_fn: nn.Module = _Step(model)
    if info.enabled:
        # the White Box BatchNorm sees the global batch, as in one process
        step_fn = convert_sync_batchnorm(step_fn, device)
        step_fn = nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_fn = torch.compile(step_fn)
    amp = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    return _Loop(ctx, model, samples, lr, stage, val, epochs, optimizer, dataset, steps_per_epoch, counters,
                 step_fn, amp, scaler, tb)


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
    # an own generator: creating the iterator must not draw from the global RNG, or a resumed
    # run's dropout masks would drift from the uninterrupted run's
    loader = torch.utils.data.DataLoader(loop.dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                         pin_memory=ctx.device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed + epoch))
    sums = {k: torch.tensor(v, dtype=torch.float64) for k, v in counters["sums"].items()}
    epoch_start = time.time()
    bar = tqdm(loader, desc=f"{stage} epoch {epoch + 1}/{loop.epochs}", disable=not info.main or None,
               leave=False, dynamic_ncols=True, file=sys.stderr)
    heartbeat = Heartbeat(bar)
    for images, targets, index in bar:
        batch_sums = _train_step(loop, epoch, sampler.global_batch(counters["step"]), images, targets, index)
        for k, v in batch_sums.items():
            sums[k] = sums.get(k, torch.tensor(0.0, dtype=torch.float64)) + v
        bar.set_postfix(loss=f"{batch_sums['loss'] / max(batch_sums['n'], 1):.4f}", lr=f"{loop.cur_lr:.2e}")
        if heartbeat.due():
            ctx.log(f"{stage} epoch {epoch + 1}/{loop.epochs} step {counters['step']}/{loop.steps_per_epoch} "
                    f"loss {float(sums['loss']) / max(float(sums['n']), 1):.4f} lr {loop.cur_lr:.2e} "
                    f"({heartbeat.elapsed():.0f} s into the epoch)")
        if cfg.save_every and counters["global_step"] % cfg.save_every == 0 and \
                counters["step"] < loop.steps_per_epoch:
            counters["sums"] = {k: float(v) for k, v in sums.items()}
            _save_state(ctx, loop.model, loop.optimizer, counters)
    bar.close()
    line = _epoch_metrics(ctx, loop.model, sums, epoch, stage, loop.cur_lr, time.time() - epoch_start, loop.val,
                          loop.samples)
    counters.update(epoch=epoch + 1, step=0, sums={})
    if info.main:
        with open(ctx.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if loop.tb is not None:
            loop.tb.epoch(line)
    _save_state(ctx, loop.model, loop.optimizer, counters)
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
    if device.type == "cuda":  # the patch-embedding conv is faster in NHWC
        images = images.contiguous(memory_format=torch.channels_last)
    targets, index = targets.to(device), index.to(device)
    with torch.autocast(device.type, dtype=loop.amp or torch.float32, enabled=loop.amp is not None):
        per_sample, logits, terms = loop.step_fn(images, targets, index)
    # sum / global batch * world: DDP's gradient averaging then gives the global-batch mean
    loss = per_sample.float().sum() * ctx.info.world / global_batch
    _check_finite(loss, ctx.info, epoch, step, counters["global_step"], ctx.out / "checkpoints")
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(loss).backward()
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    batch_sums = {"n": float(len(targets)), "loss": per_sample.detach().float().sum().item(),
                  "correct": (logits.detach().argmax(-1) == targets).sum().item()}
    for k, v in terms.items():
        batch_sums[f"loss_{k}"] = v.float().sum().item()
    counters["step"] += 1
    counters["global_step"] += 1
    return batch_sums


def _recalibrate(ctx: Context, model: nn.Module, samples: list) -> None:
    """--bn-mode recalibrate: the White Box's BatchNorm statistics from all training images."""
    bn_modes.recalibrate(model, _eval_loader(ctx, samples), ctx.device)


def _check_finite(loss: torch.Tensor, info: DistInfo, epoch: int, step: int, global_step: int,
                  ckpt_dir: Path) -> None:
    flag = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
    if all_reduce_sum(flag, info).item() > 0:
        raise LoreError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step} (global step "
                        f"{global_step}); training stopped, the last good checkpoint in {ckpt_dir} is "
                        "kept. Lower --lr, check the data, or disable --amp")


def _epoch_metrics(ctx: Context, model: nn.Module, sums: dict, epoch: int, stage: str, lr: float,
                   seconds: float, val: list | None, train_samples: list) -> dict:
    keys = sorted(sums)
    vec = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=ctx.device)
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
            _recalibrate(ctx, model, train_samples)
        line["val_acc"] = evaluate(ctx, model, val)["acc1"]
        model.train(mode)
    line["seconds"] = round(seconds, 3)
    return line


def _save_state(ctx: Context, model: nn.Module, optimizer, counters: dict) -> None:
    if not ctx.info.main:
        return
    ckpt_dir = ctx.out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    name = f"{counters['stage']}-step-{counters['global_step']:08d}.safetensors"
    save_train_state(ckpt_dir / name, model, optimizer, counters)
    kept = sorted(ckpt_dir.glob(f"{counters['stage']}-step-*.safetensors"))
    for old in kept[:-ctx.cfg.keep_last]:
        old.unlink(missing_ok=True)


def _latest_state(ckpt_dir: Path, stage: str) -> Path | None:
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


def _truncate_metrics(path: Path, stage: str, epoch: int) -> None:
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


def _last_metrics(out: Path) -> dict:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


# ---------------------------------------------------------------------------------------------
# evaluation and feature passes


def _eval_loader(ctx: Context, samples: list, batch_size: int | None = None):
    dataset = ImageDataset(samples, eval_transform(ctx.cfg.img_size, ctx.data_config))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or ctx.cfg.batch_size,
                                       sampler=ShardedSampler(len(samples), ctx.info.rank, ctx.info.world),
                                       num_workers=ctx.cfg.workers, pin_memory=ctx.device.type == "cuda")


@torch.no_grad()
def evaluate(ctx: Context, model: nn.Module, samples: list) -> dict:
    """Top-1 / top-5 accuracy over ``samples`` (sharded across processes, reduced)."""
    model.eval()
    amp = amp_dtype(ctx.cfg, ctx.device)
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    start = time.time()
    for images, targets, _ in tqdm(_eval_loader(ctx, samples), desc="eval", leave=False,
                                   disable=not ctx.info.main or None, file=sys.stderr):
        images, targets = images.to(ctx.device), targets.to(ctx.device)
        with torch.autocast(ctx.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(images)
        top1, top5 = accuracy(logits.float(), targets, topk=(1, min(5, logits.shape[1])))
        n = len(targets)
        sums += torch.tensor([top1 * n, top5 * n, n], dtype=torch.float64, device=ctx.device)
    sums = all_reduce_sum(sums, ctx.info)
    seconds = time.time() - start
    n = max(sums[2].item(), 1.0)
    return {"acc1": sums[0].item() / n, "acc5": sums[1].item() / n, "n": int(sums[2].item()),
            "seconds": round(seconds, 3), "images_per_s": round(sums[2].item() / max(seconds, 1e-9), 2)}


@torch.no_grad()
def _encode(ctx: Context, model: nn.Module, samples: list, use_prompts: bool = False,
            with_logits: bool = False) -> tuple[torch.Tensor, ...]:
    """Pooled features (pre-head), labels (and, ``with_logits``, the model's logits) of ``samples``
    in order (single process). Without prompts: the frozen backbone's features."""
    from .models.base import AdaptedViT

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


def _zero_shot_predictions(ctx: Context, model: nn.Module, samples: list, classnames: list[str]) -> torch.Tensor:
    """The frozen CLIP's zero-shot prediction for every training image (computed once), with the
    reference's template "a photo of a {}" and the run's test-time transform."""
    # the backbone's own text tower, whatever the knowledge source
    text = _rank0_cached(ctx, "zeroshot_text.safetensors", text_tower_spec(ctx.cfg), classnames, [NEGATIVE_TEMPLATE])
    if text.shape[1] != model.black_box.out_dim:
        raise LoreError(f"--negative zeroshot: text embeddings are {text.shape[1]}-d but the image "
                        f"embedding is {model.black_box.out_dim}-d; use --negative model")
    feats, _ = _encode(ctx, model, samples)
    return clip_logits(feats, text).argmax(dim=-1)


def _easy_to_hard(ctx: Context, model: nn.Module, train_all: list, test: list, val: list | None,
                  knowledge: torch.Tensor | None, classnames: list[str]) -> dict[str, dict]:
    """The reference's two stages (see lore.curriculum); returns the stage-e test result."""
    cfg = ctx.cfg
    feats, labels = _encode(ctx, model, train_all)
    easy = select_easy(feats, labels, cfg.shots, classnames).tolist()
    _record_selection(ctx, "fewshot_e.json", train_all, easy)
    _fit(ctx, model, [train_all[i] for i in easy], cfg.lr, "e", val, knowledge, classnames)
    stages = {"e": evaluate(ctx, model, test)}
    feats, labels, logits = _encode(ctx, model, train_all, use_prompts=True, with_logits=True)
    predictions = logits.argmax(dim=-1)
    hard = select_hard(feats, labels, predictions != labels, cfg.shots).tolist()
    counts = np.bincount(labels[hard].numpy(), minlength=len(classnames))
    short = {classnames[c]: int(counts[c]) for c in np.flatnonzero(counts < cfg.shots)}
    if short:
        ctx.log(f"stage h: {len(short)} class(es) have fewer than {cfg.shots} misclassified training "
                f"images and train on what they have: {dict(list(short.items())[:5])}")
    _record_selection(ctx, "fewshot_h.json", train_all, hard,
                      short=short, predicted=predictions[hard].tolist())
    if not hard:
        ctx.log("stage h skipped: the stage-e model classifies every training image correctly")
        return stages
    negatives = predictions[hard] if hasattr(model, "set_negatives") else None  # LORE's p only
    _fit(ctx, model, [train_all[i] for i in hard], cfg.stage_h_lr, "h", val, knowledge, classnames,
         epochs=cfg.stage_h_epochs, negatives=negatives)
    return stages
