"""``lore train``: one harness for every method (single process or torchrun/DDP).

The package's rooms: this module orchestrates a run (options, data, class knowledge, the model,
the curriculum's stages, final.json); :mod:`.loop` trains one stage, :mod:`.evaluate` holds the
evaluation and feature passes, :mod:`.context` the per-run context, :mod:`.bookkeeping` the run's own
files.

Run directory: ``config.yaml`` (resolved options), ``metrics.jsonl`` (one line per epoch),
``final.json`` (test accuracy, parameters, GFLOPs, speed), ``checkpoint.safetensors`` (trainable
tensors only) + ``model.json`` (how to rebuild), ``fewshot.json`` (the chosen training files),
``checkpoints/step-*.safetensors`` (resumable state: model, optimizer, RNG, position).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .. import config as config_mod
from .. import tensorboard_log
from ..backbone import clip_logits
from ..checkpoint import save_model
from ..config import TrainConfig
from ..curriculum import select_easy, select_hard
from ..data import few_shot_indices, load_dataset
from ..data.catalog import load_paper_dataset
from ..data.datasets import Splits, check_class_coverage, check_headers, check_split_integrity
from ..distributed import DistInfo, barrier, cleanup, init_distributed
from ..errors import LoreError
from ..flops import GFLOPS_COUNT, count_gflops, count_params, parameter_shares, text_tower_params
from ..io import absolute_paths, atomic_write_json, atomic_write_text, check_output_dir
from ..knowledge import (NEGATIVE_TEMPLATE, cached_class_embeddings, check_file_spec, default_knowledge_spec,
                         learned_knowledge, most_similar_classes)
from ..lock import run_lock
from ..models import build_model
from ..option_warnings import warn_inert
from ..models.base import zeroshot_sentences
from ..models.coop import check_text_side, weightless
from ..models.registry import Method, get as method_of
from ..probe import cross_fitted_predictions
from ..values import RESUME_MAY_CHANGE, refuse_recipe_changes
from ..runs import resolve_backbone_defaults, resolve_device, run_data_config  # noqa: F401
from .context import Context, amp_dtype, warn_amp  # noqa: F401 - part of the API (cli, predict)
from .evaluate import encode, epoch_metrics as _epoch_metrics, evaluate, recalibrate
from .evaluate import recalibrate as _recalibrate  # noqa: F401 - the name tests spy on
from .loop import fit, learning_rate  # noqa: F401
from .bookkeeping import last_metrics, record_selection, refuse_overwrite
from .. import rundir


def run(cfg: TrainConfig) -> dict:
    """Train (or, with --dry-run, only describe) the run ``cfg`` describes; its final.json."""
    if cfg.resume:
        cfg = _resume_config(cfg)  # refuses changed recipe options first, finished run or not
        if rundir.finished(Path(cfg.resume)) and not cfg.dry_run:
            # a finished run is left as it is: its final.json (time, images/s) is not rewritten
            from ..io import read_json
            print(f"lore: {cfg.resume} is finished (final.json); nothing to resume. `lore eval --run "
                  f"{cfg.resume}` re-evaluates it without changing it", file=sys.stderr)
            return read_json(Path(cfg.resume) / rundir.FINAL, "the run's final.json")
    cfg = absolute_paths(cfg)
    config_mod.validate(cfg)
    if cfg.log == "tensorboard":
        tensorboard_log.require()
    cfg = resolve_backbone_defaults(cfg)
    if method_of(cfg.method).text_side:
        check_text_side(cfg)
    _check_zeroshot_negative(cfg)
    check_file_spec(cfg.knowledge)
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


def _check_zeroshot_negative(cfg: TrainConfig) -> None:
    """--negative zeroshot needs the backbone's CLIP image projection: said before any data is read,
    not as a shape error in the first step."""
    from ..backbone import has_clip_projection

    if cfg.kp and cfg.negative == "zeroshot" and not cfg.checkpoint and not has_clip_projection(cfg.backbone):
        raise LoreError(f"--negative zeroshot needs a CLIP backbone (its zero-shot prediction gives p), got "
                        f"{cfg.backbone}; use --negative model or --negative probe")


def _resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def _resume_config(cfg: TrainConfig) -> TrainConfig:
    run_dir = Path(cfg.resume)
    saved = run_dir / rundir.CONFIG
    if not saved.is_file():
        raise LoreError(f"--resume {run_dir}: no config.yaml there (not a lore run directory)")
    values = config_mod.load_yaml(str(saved))
    refuse_recipe_changes(cfg, values, run_dir)
    # execution settings may change on resume; the recipe may not
    for key in sorted(RESUME_MAY_CHANGE - {"resume", "out"}):
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
        atomic_write_json(Path(cfg.out) / rundir.SUMMARY, summary)
        print(f"  written: {Path(cfg.out) / rundir.SUMMARY}")
    return summary


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    device = _resolve_device(cfg, info)
    out = Path(cfg.out)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    data = load_data(cfg)
    classnames = data.classnames
    train_all = data.get("train")
    test_name, test = data.test_split()
    val = data.splits.get("val") if test_name == "test" else None
    if test_name != "test":  # said in config.yaml and final.json, not only on the terminal
        data.note = "; ".join(filter(None, [data.note, f"the data has no test split: the run is tested on "
                                            f"its {test_name} split, none of whose images it trains on"]))
    check_headers(test, "test")
    method = method_of(cfg.method)
    if info.main:
        _start_run_dir(cfg, out, data, method)
        warn_amp(cfg, device)
    ctx = Context(cfg, info, device, out)
    knowledge = _knowledge(ctx, classnames, method)
    if method.check_knowledge and knowledge is not None:
        warn_degenerate_knowledge(knowledge, classnames, _knowledge_spec(cfg), ctx.log)
    model = build_from_config(cfg, len(classnames), knowledge, classnames=classnames).to(device)
    if info.main:
        warn_inert(cfg, model)
    ctx.data_config = run_data_config(cfg, model.black_box)
    started = time.time()
    stages = _train_model(ctx, method, model, train_all, test, val, knowledge, classnames)
    final = _final(ctx, model, test, stages, time.time() - started, len(classnames))
    final["test_split"] = test_name
    if info.main:
        recipe = {"backbone": cfg.backbone, "pretrained": cfg.pretrained, "checkpoint": cfg.checkpoint,
                  "backbone_args": cfg.backbone_args, "backbone_init_seed": cfg.seed,
                  "classnames": classnames, "img_size": cfg.img_size, "data": cfg.data}
        save_model(out, model, recipe)
        atomic_write_json(out / rundir.FINAL, final)
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
        refuse_overwrite(out)
    note = f"# {data.split}\n" if data.split else ""
    if data.note:  # the split is not the paper's: said once, here and in config.yaml
        print(f"lore: note: {data.note}", file=sys.stderr)
        note += f"# note: {data.note}\n"
    atomic_write_text(out / rundir.CONFIG, note + config_mod.to_yaml(cfg))
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
        record_selection(ctx, rundir.FEWSHOT, train_all, chosen)
    if model.needs_train_features:  # Tip-Adapter(-F): the few-shot cache, before any training
        model.prepare(encode(ctx, model, [train_all[i] for i in chosen]), len(classnames))
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
    last = last_metrics(ctx.out)
    for key in ("loss", "loss_task", "loss_kp"):
        if key in last:
            final[key] = last[key]
    return final


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
    return _rank0_cached(ctx, rundir.KNOWLEDGE, _knowledge_spec(cfg), classnames, templates)


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


def _fit(ctx: Context, model: nn.Module, samples: list, lr: float, stage: str, val: list | None,
         knowledge: torch.Tensor | None, classnames: list[str], epochs: int | None = None,
         negatives: torch.Tensor | None = None) -> None:
    """Train on ``samples`` for ``epochs`` (default --epochs) with a fresh SGD from ``lr``.

    ``negatives``: LORE's wrong class p per sample, fixed for the stage (easy-to-hard stage h: the
    stage-e model's predictions); otherwise zero-shot CLIP's when --negative zeroshot."""
    cfg = ctx.cfg
    _set_negatives(ctx, model, samples, knowledge, classnames, negatives)
    fit(ctx, model, samples, lr, stage, val, cfg.epochs if epochs is None else epochs, _epoch_metrics)
    if cfg.bn_mode == "recalibrate":  # the saved model then tests as it will be tested
        recalibrate(ctx, model, samples)
    model.eval()


def _set_negatives(ctx: Context, model: nn.Module, samples: list, knowledge: torch.Tensor | None,
                   classnames: list[str], negatives: torch.Tensor | None) -> None:
    """The wrong class p of a model that takes it from outside (LORE's --negative zeroshot | probe)."""
    if negatives is not None:
        model.set_negatives(negatives)
    elif model.negative_source == "zeroshot" and knowledge is not None:
        model.set_negatives(_zero_shot_predictions(ctx, model, samples, classnames))
    elif model.negative_source == "probe":
        feats, labels = encode(ctx, model, samples)
        model.set_negatives(cross_fitted_predictions(feats, labels, len(classnames), seed=ctx.cfg.seed))


def _zero_shot_predictions(ctx: Context, model: nn.Module, samples: list, classnames: list[str]) -> torch.Tensor:
    """The frozen CLIP's zero-shot prediction for every training image (computed once), with the
    reference's template "a photo of a {}" and the run's test-time transform."""
    # the backbone's own text tower, whatever the knowledge source
    text = _rank0_cached(ctx, rundir.ZEROSHOT_TEXT, text_tower_spec(ctx.cfg), classnames, [NEGATIVE_TEMPLATE])
    if text.shape[1] != model.black_box.out_dim:
        raise LoreError(f"--negative zeroshot: text embeddings are {text.shape[1]}-d but the image "
                        f"embedding is {model.black_box.out_dim}-d; use --negative model")
    feats, _ = encode(ctx, model, samples)
    return clip_logits(feats, text).argmax(dim=-1)


def _easy_to_hard(ctx: Context, model: nn.Module, train_all: list, test: list, val: list | None,
                  knowledge: torch.Tensor | None, classnames: list[str]) -> dict[str, dict]:
    """The reference's two stages (see lore.curriculum); returns the stage-e test result."""
    cfg = ctx.cfg
    feats, labels = encode(ctx, model, train_all)
    easy = select_easy(feats, labels, cfg.shots, classnames).tolist()
    record_selection(ctx, "fewshot_e.json", train_all, easy)
    _fit(ctx, model, [train_all[i] for i in easy], cfg.lr, "e", val, knowledge, classnames)
    stages = {"e": evaluate(ctx, model, test)}
    feats, labels, logits = encode(ctx, model, train_all, use_prompts=True, with_logits=True)
    predictions = logits.argmax(dim=-1)
    hard = select_hard(feats, labels, predictions != labels, cfg.shots).tolist()
    counts = np.bincount(labels[hard].numpy(), minlength=len(classnames))
    short = {classnames[c]: int(counts[c]) for c in np.flatnonzero(counts < cfg.shots)}
    if short:
        ctx.log(f"stage h: {len(short)} class(es) have fewer than {cfg.shots} misclassified training "
                f"images and train on what they have: {dict(list(short.items())[:5])}")
    record_selection(ctx, "fewshot_h.json", train_all, hard,
                      short=short, predicted=predictions[hard].tolist())
    if not hard:
        ctx.log("stage h skipped: the stage-e model classifies every training image correctly")
        return stages
    negatives = predictions[hard] if model.takes_negatives else None  # LORE's p only
    _fit(ctx, model, [train_all[i] for i in hard], cfg.stage_h_lr, "h", val, knowledge, classnames,
         epochs=cfg.stage_h_epochs, negatives=negatives)
    return stages
