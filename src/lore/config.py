"""The training configuration: defaults (the paper's recipe) < ``--config FILE`` < command line.

The CLI flags are generated from this dataclass, so a field, its YAML key and its ``--flag`` are
the same name (underscores become dashes on the command line).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .errors import LoreError
from .recipes import apply_recipe
from .values import INT_RANGES, SEED_MAX, default_workers, opt, typed  # noqa: F401 - opt: the options' API




@dataclass
class CommonOptions:
    """The harness's options; each method adds its own (``Method.config``, in its module), and
    :data:`TrainConfig` holds them all."""
    # what to train
    method: str = opt("lore", "the adaptation method (lore train --help lists the registered ones)")
    backbone: str = opt("vit_base_patch16_clip_quickgelu_224.openai",
                         "timm model name (optionally .pretrained_tag); OpenAI CLIP: the *_quickgelu_* models")
    pretrained: bool = opt(True, "load the backbone's pre-trained weights from the hub")
    checkpoint: str | None = opt(None, "local backbone weights (.safetensors/.pth/.npz) of the same architecture")
    backbone_args: str | None = opt(None, "key=value,... passed to timm.create_model")
    # data
    data: str | None = opt(None, "dataset root (or split/CSV file)")
    dataset: str | None = opt(None, "one of the paper's datasets (cifar10, cifar100, imagenet, dtd, aircraft, "
                              "dogs, flowers, cars, eurosat, ucf101, resisc45, patternnet): --data is then "
                              "its folder as distributed (--format ignored); LORE's template defaults to its own")
    format: str = opt("imagefolder", "dataset format (vtab: a VTAB-1k task folder, train800val200 / test; "
                      "vtab-tune: train800 / val200; fgvc: an FGVC folder with VPT's train/val/test.json; "
                      "fgvc-tune: train.json / val.json; vtab-tfds / vtab-tfds-tune: --data TFDS_DATA_DIR/TASK, "
                      "VTAB-1k read from TensorFlow Datasets with VPT's split definitions)",
                      ["imagefolder", "vpt-json", "coop-split", "csv", "vtab", "vtab-tune", "vtab-tfds",
                       "vtab-tfds-tune", "fgvc", "fgvc-tune"])
    classnames: str | None = opt(None, "file with one class name per line (or JSON list)")
    image_dir: str | None = opt(None, "directory the dataset's relative image paths start from")
    holdout: float = opt(0.2, "test fraction for an ImageFolder without train/test folders")
    split_file: str | None = opt(None, "--dataset flowers|cars|eurosat: CoOp's split_zhou_*.json kept "
                                 "elsewhere; resisc45: TorchGeo's resisc45-train.txt (-val, -test beside it)")
    allow_missing_classes: bool = opt(False, "train even when a class of the dataset's class list has "
                                      "no training or test image (a warning instead of an error)")
    shots: int | None = opt(None, "few-shot: K training images per class")
    out: str | None = opt(None, "run directory")
    # recipe
    recipe: str | None = opt(None, "apply a published recipe (defaults < recipe < --config < flags)", ["paper"])
    seed: int = opt(1993, "seed for few-shot sampling, initialisation and data order")
    epochs: int = opt(50, "training epochs (per curriculum stage)")
    batch_size: int = opt(64, "global batch size (split across processes)")
    lr: float = opt(0.003, "initial learning rate (SGD, cosine-annealed)")
    min_lr: float = opt(1e-4, "final learning rate of the cosine schedule")
    wd: float = opt(0.1, "weight decay")
    momentum: float = opt(0.9, "SGD momentum")
    img_size: int = opt(224, "training / test image size")
    aug: str = opt("rrc-flip", "training augmentation: RandomResizedCrop + flip (paper), flip only, or none",
                   ["rrc-flip", "flip", "none"])
    crop_pct: float | None = opt(None, "test-time center-crop fraction: Resize(img_size / crop_pct) + "
                                 "CenterCrop(img_size) (default: 1.0 for CLIP as the reference, else the "
                                 "backbone's own)")
    train_crop_pct: float | None = opt(None, "crop fraction of the 'flip' augmentation's resize + center "
                                       "crop (default: --crop-pct)")
    feature_views: int = opt(10, "frozen-feature methods (linear, tip-adapter-f, clip-adapter) under --aug "
                             "rrc-flip: augmented views per image whose backbone features are computed once "
                             "(0: fresh crops every epoch); --aug none / flip are cached exactly", low=0)
    lr_schedule: str = opt("epoch", "cosine learning rate stepped once per epoch (reference) or every step",
                           ["epoch", "step"])
    bn_mode: str = opt("train", "White Box BatchNorm/dropout mode while training: proper train mode; the "
                       "reference code's (eval mode from epoch 2 on: running statistics of epoch 1, no "
                       "dropout; all of stage h); recalibrate (train mode, BatchNorm statistics "
                       "re-estimated on the training images before every evaluation); freeze (BatchNorm "
                       "statistics averaged over the first --bn-freeze-steps steps, then fixed; dropout "
                       "stays on)", ["train", "reference", "recalibrate", "freeze"])
    bn_freeze_steps: int = opt(2, "--bn-mode freeze: warm-up steps whose batch statistics BatchNorm keeps")
    val_every: int = opt(0, "evaluate on the val split every N epochs (0: never)")
    warmup_epochs: int = opt(0, "epochs at the constant --warmup-lr before the cosine schedule (CoOp-style)")
    warmup_lr: float = opt(1e-5, "learning rate during the warm-up epochs")
    warmup: str = opt("constant", "warm-up form: constant --warmup-lr, the cosine then keeping its full "
                      "length (CoOp); or linear from 0 to --lr, the cosine spanning the remaining epochs (VPT)",
                      ["constant", "linear"])
    # execution
    device: str = opt("auto", "cpu | cuda | cuda:N | auto")
    workers: int = opt(default_workers(), "data-loading worker processes (at most the machine's cores)")
    cache_images: str = opt("auto", "keep the decoded training images in memory (auto: when they fit in a "
                            "quarter of the available memory); results are the same either way",
                            ["auto", "on", "off"])
    feature_cache: str | None = opt(None, "folder where test / val backbone features are kept and shared by "
                                    "runs with the same backbone weights, images and transform (grids set "
                                    "it; default: in memory only)")
    amp: str = opt("auto", "mixed precision: auto = bf16/fp16 on CUDA, none on CPU (where --amp bf16 "
                   "is used if asked)", ["auto", "bf16", "fp16", "none"])
    compile: bool = opt(False, "torch.compile the training step")
    log: str = opt("jsonl", "training curves: metrics.jsonl always; tensorboard also writes event files "
                   "under RUN/tb/ (needs pip install 'lore-vit[tb]')", ["jsonl", "tensorboard"])
    log_images: bool = opt(False, "with --log tensorboard: the attention grid of a few validation (else "
                           "test) images at the end")
    deterministic: bool = opt(False, "deterministic algorithms (bit-identical reruns and resumes)")
    save_every: int = opt(0, "also checkpoint every N steps (0: only at epoch ends)")
    keep_last: int = opt(2, "training checkpoints to keep")
    resume: str | None = opt(None, "continue the run in this directory from its last checkpoint")
    dry_run: bool = opt(False, "build the model, print parameters and GFLOPs, write model_summary.json, exit")
    num_classes: int | None = opt(None, "number of classes for --dry-run (no data needed)")
    # class knowledge (LORE and the CLIP baselines)
    knowledge: str | None = opt(None, "class knowledge: clip:MODEL/TAG | sentence:MODEL | file:PATH | "
                                "ngram:DIM (spelling only) | random:DIM (a control) | learned:DIM (LORE learns "
                                "it)")
    template: str | None = opt(None, "sentence template with {} (or a file of templates)")
    global_prompts: int | None = opt(None, "learnable prompts per layer (LORE: 8; VPT: 10)")
    knowledge_dim: int = opt(512, "knowledge width for --dry-run without --knowledge")
    curriculum: str = opt("none", "training curriculum", ["none", "easy-to-hard"])
    stage_h_lr: float = opt(5e-4, "initial learning rate of the easy-to-hard 'hard' stage (cosine to --min-lr)")
    stage_h_epochs: int = opt(5, "epochs of the easy-to-hard 'hard' stage (a fresh SGD)")




def _compose() -> type:
    """TrainConfig: the common options, then every registered method's own (each declared once)."""
    from .models.registry import methods

    specs = [(f.name, f.type, field(default=f.default, metadata=f.metadata)) for f in fields(CommonOptions)]
    owner: dict[str, str] = {f.name: "the harness" for f in fields(CommonOptions)}
    for m in methods():
        for f in fields(m.config) if m.config else ():
            if f.name in owner:
                raise LoreError(f"option {f.name!r} of method {m.name} is already declared by {owner[f.name]}")
            owner[f.name] = m.name
            specs.append((f.name, f.type, field(default=f.default, metadata=f.metadata)))
    cls = dataclasses.make_dataclass("TrainConfig", specs)
    cls.__module__ = __name__  # (make_dataclass's module= is Python 3.12+)
    cls.__doc__ = "Every option of `lore train`: the common ones and each method's own."
    return cls


TrainConfig = _compose()


def validate(cfg: TrainConfig) -> None:
    for name, low in INT_RANGES.items():
        if getattr(cfg, name) < low:
            raise LoreError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.min_lr < 0 or cfg.min_lr > cfg.lr:
        raise LoreError(f"--lr must be > 0 and --min-lr in [0, lr]; got lr={cfg.lr}, min-lr={cfg.min_lr}")
    for name in ("crop_pct", "train_crop_pct"):
        value = getattr(cfg, name)
        if value is not None and not 0 < value <= 1:
            raise LoreError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")
    if cfg.wd < 0:
        raise LoreError(f"--wd must be >= 0, got {cfg.wd}")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise LoreError(f"--seed must be in 0..{SEED_MAX} (32 bits), got {cfg.seed}")
    if cfg.warmup == "linear" and cfg.warmup_epochs >= cfg.epochs:
        # the linear warm-up would still be rising when training ends: every step short of lr, the
        # first at 0; with a per-epoch schedule and one epoch, no step would train at all
        raise LoreError(f"--warmup-epochs {cfg.warmup_epochs} with --warmup linear needs more than that many "
                        f"--epochs (got {cfg.epochs}); lower --warmup-epochs or raise --epochs")
    from .knowledge import check_width
    check_width(cfg.knowledge)
    if cfg.warmup_lr < 0:
        raise LoreError(f"--warmup-lr must be >= 0, got {cfg.warmup_lr}")
    if cfg.warmup == "constant" and cfg.warmup_lr == 0 and cfg.warmup_epochs >= cfg.epochs > 0:
        # the constant warm-up would cover every step: a run that trains nothing
        raise LoreError(f"--warmup-lr 0 for --warmup-epochs {cfg.warmup_epochs} of --epochs {cfg.epochs}: no "
                        "step would train; give --warmup-lr > 0 or fewer --warmup-epochs")
    if cfg.global_prompts is not None and cfg.global_prompts < 0:
        raise LoreError(f"--global-prompts must be >= 0, got {cfg.global_prompts}")
    if cfg.shots is not None and cfg.shots < 1:
        raise LoreError(f"--shots must be >= 1, got {cfg.shots}")
    if not 0 <= cfg.pg_dropout < 1:
        raise LoreError(f"--pg-dropout must be in [0, 1), got {cfg.pg_dropout}")
    if not 0 <= cfg.holdout < 1:
        raise LoreError(f"--holdout must be in [0, 1), got {cfg.holdout}")
    if cfg.curriculum == "easy-to-hard" and not cfg.shots:
        raise LoreError("--curriculum easy-to-hard needs --shots N (images per class in each stage)")
    if not cfg.dry_run and not cfg.resume:
        if not cfg.data:
            raise LoreError("--data PATH is required (or --dry-run --num-classes N)")
        if not cfg.out:
            raise LoreError("--out RUN_DIR is required")
    if cfg.dataset and cfg.format != "imagefolder" and not cfg.resume:
        # --dataset reads --data as that dataset is distributed: a --format beside it would be ignored
        raise LoreError(f"--dataset {cfg.dataset} reads --data in that dataset's own layout; --format "
                        f"{cfg.format} would be ignored: drop one of them")
    if cfg.num_classes is not None and cfg.data and not cfg.dry_run and not cfg.resume:
        # the data sets the class count; a --num-classes beside it would only be recorded, unused
        raise LoreError(f"--num-classes {cfg.num_classes}: the data sets the number of classes; --num-classes "
                        "is for --dry-run without --data")
    if cfg.dry_run and not cfg.data and not cfg.num_classes:
        raise LoreError("--dry-run needs --num-classes N or --data PATH")


# `lore train --help` groups the common options; each method's own options get a group of their own
HELP_GROUPS = {
    "model": ("method", "backbone", "pretrained", "checkpoint", "backbone_args", "knowledge", "template",
              "global_prompts", "knowledge_dim"),
    "data": ("data", "dataset", "format", "classnames", "image_dir", "holdout", "split_file",
             "allow_missing_classes", "shots", "img_size", "aug", "train_crop_pct", "feature_views"),
    "optimisation": ("recipe", "seed", "epochs", "batch_size", "lr", "min_lr", "wd", "momentum", "lr_schedule",
                     "warmup_epochs", "warmup_lr", "warmup", "bn_mode", "bn_freeze_steps", "curriculum",
                     "stage_h_lr", "stage_h_epochs"),
    "evaluation": ("val_every", "crop_pct", "dry_run", "num_classes"),
    "execution": ("out", "resume", "device", "workers", "feature_cache", "amp", "compile", "log", "log_images",
                  "deterministic", "save_every", "keep_last", "cache_images"),
}


def _help_group(name: str) -> str:
    """The --help group of an option: its HELP_GROUPS entry, its method's, else "other"."""
    from .models.registry import methods

    for group, names in HELP_GROUPS.items():
        if name in names:
            return f"{group} options"
    for m in methods():
        if m.config and name in {f.name for f in fields(m.config)}:
            return f"{m.name} options"
    return "other options"


def _method_help() -> str:
    from .models.registry import aliases, methods

    return "the adaptation method: " + ", ".join([m.name for m in methods()] + sorted(aliases()))


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                  skip: frozenset[str] | set[str] = frozenset()) -> None:
    """``--config`` and one flag per :class:`TrainConfig` field (except those in ``skip``), in --help
    groups (data, model, optimisation, evaluation, execution, one per method) on a parser; a group
    given by the caller (``lore sweep``, ``lore paper``) holds them all."""
    parser.add_argument("--config", help="YAML file of options (command-line flags win)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    if isinstance(parser, argparse.ArgumentParser):  # the common groups first, in this order
        from .models.registry import methods

        titles = [*HELP_GROUPS, "other", *(m.name for m in methods() if m.config)]
        groups = {f"{t} options": parser.add_argument_group(f"{t} options") for t in titles}
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        target = parser
        if isinstance(parser, argparse.ArgumentParser):
            title = _help_group(f.name)
            target = groups[title]
        flag = "--" + f.name.replace("_", "-")
        text = _method_help() if f.name == "method" else f.metadata["help"]
        kw = dict(help=f"{text} (default: {f.default})", default=argparse.SUPPRESS, dest=f.name)
        kind = str(f.type)  # annotations are strings here (from __future__ import annotations)
        if "bool" in kind:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            cast = int if "int" in kind else float if "float" in kind else str
            target.add_argument(flag, type=cast, choices=f.metadata["choices"], **kw)


def defaults() -> dict:
    """Every option's default value."""
    return {f.name: f.default for f in fields(TrainConfig)}


def from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    values = apply_recipe(values, defaults())
    return make(values, source=getattr(args, "config", None) or "command line")


def load_yaml(path: str, what: str | None = None) -> dict:
    """A YAML mapping of options; ``what`` names the file in errors (default ``--config PATH``; a
    run's own config.yaml is named as such, so a broken one is not blamed on --config)."""
    p = Path(path)
    what = what or (f"{p.parent}/config.yaml of that run" if p.name == "config.yaml" and
                    (p.parent / "model.json").is_file() else f"--config {path}")
    if not p.is_file():
        raise LoreError(f"{what}: file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LoreError(f"{what}: not a valid UTF-8 YAML file ({str(e).splitlines()[0][:160]})") from None
    except RecursionError:
        raise LoreError(f"{what}: nested deeper than an options file ever is") from None
    if not isinstance(data, dict):
        raise LoreError(f"{what}: expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def make(values: dict, source: str = "config") -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LoreError(f"{source}: unknown option(s) {unknown}")
    cfg = TrainConfig(**typed(values, fields(TrainConfig), source))
    for f in fields(TrainConfig):
        choices = f.metadata["choices"]
        if choices and getattr(cfg, f.name) is not None and getattr(cfg, f.name) not in choices:
            raise LoreError(f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)!r}: choose one of {choices}")
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
