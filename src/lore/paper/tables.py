"""The paper's tables as grids: which runs each needs (backbone, regime, methods, datasets, shots)
and the published numbers beside them (``published.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from ..errors import LoreError

PUBLISHED = Path(__file__).with_name("published.yaml")

CLIP_B16 = "vit_base_patch16_clip_quickgelu_224.openai"
CLIP_B32 = "vit_base_patch32_clip_quickgelu_224.openai"
VIT_B16 = "vit_base_patch16_224.augreg_in21k"
# the paper's column order (Table 1)
DATASETS = ("flowers", "cars", "aircraft", "dogs", "cifar10", "cifar100", "dtd", "imagenet", "eurosat",
            "resisc45", "ucf101", "patternnet")
NATURAL = ("cifar10", "cifar100", "dtd", "imagenet")
# Table 3: the paper ran 16 images per stage only where enough hard images exist
E2H_16 = ("aircraft", "dogs", "cifar10", "cifar100", "imagenet", "eurosat", "resisc45", "patternnet")
BASELINES = ("cocoop", "prograd", "clip-adapter", "coop", "maple")


@dataclass(frozen=True)
class Group:
    """One sweep of the table: every method x dataset x shots on one backbone and regime."""
    tag: str                 # run folder under OUT/runs/ (shared by tables that need the same runs)
    backbone: str            # the paper's backbone: it picks the recipe
    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    shots: tuple[int, ...]   # 0: zero-shot, no training images
    curriculum: str = "none"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    groups: tuple[Group, ...]
    layout: str              # datasets | groups | stages | ablation | cost | tasks


def _fewshot(tag: str, backbone: str) -> tuple[Group, ...]:
    return (Group(tag, backbone, ("zeroshot",), DATASETS, (0,)),
            Group(tag, backbone, BASELINES + ("lore",), DATASETS, (16, 8)))


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("table1", "Few-shot classification, CLIP ViT-B/16, 12 datasets", _fewshot("clip-b16", CLIP_B16),
          "datasets"),
    Table("table2", "Few-shot classification, CLIP ViT-B/32, group averages", _fewshot("clip-b32", CLIP_B32),
          "groups"),
    Table("table3", "Easy-to-hard classification, CLIP ViT-B/16 (-e: easy stage, -h: then the hard stage)",
          (Group("clip-b16", CLIP_B16, ("zeroshot",), DATASETS, (0,)),
           Group("clip-b16-e2h", CLIP_B16, ("coop", "cocoop", "clip-adapter", "prograd", "maple", "lore"),
                 E2H_16, (16,), "easy-to-hard"),
           Group("clip-b16-e2h", CLIP_B16, ("coop", "cocoop", "clip-adapter", "prograd", "maple", "lore"),
                 DATASETS, (8,), "easy-to-hard")), "stages"),
    Table("table4", "Other downstream tasks: B-B vs LORE (White Box trained 16-shot on ImageNet)",
          (Group("clip-b16", CLIP_B16, ("lore",), ("imagenet",), (16,)),
           Group("vit-b16", VIT_B16, ("lore",), ("imagenet",), (16,))), "tasks"),
    Table("table5", "Ablation, 16-shot, average over 4 natural datasets",
          (Group("vit-b16", VIT_B16, ("vpt-deep", "lore-no-kp", "lore"), NATURAL, (16,)),
           Group("clip-b16", CLIP_B16, ("vpt-deep", "lore-no-kp", "lore"), NATURAL, (16,))), "ablation"),
    Table("table7", "Inference cost and accuracy on 4 natural datasets, CLIP ViT-B/16",
          (Group("clip-b16", CLIP_B16, ("zeroshot",), NATURAL, (0,)),
           Group("clip-b16", CLIP_B16, ("vpt-deep", "lore"), NATURAL, (16,))), "cost"),
)}


def get_table(name: str) -> Table:
    if name not in TABLES:
        raise LoreError(f"unknown table {name!r}: choose one of {', '.join(TABLES)}")
    return TABLES[name]


@cache
def published() -> dict:
    return yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))


def published_rows(table: str) -> list[dict]:
    return list(published()[table]["rows"])


def published_columns(table: str) -> list[str]:
    return list(published()[table]["columns"])


def dataset_groups() -> dict[str, tuple[str, ...]]:
    """fine-grained / natural / specialized -> datasets (paper Table 6), in the paper's order."""
    groups: dict[str, list[str]] = {}
    for row in published_rows("table6"):
        groups.setdefault(row["group"], []).append(row["dataset"])
    return {g: tuple(d for d in DATASETS if d in members) for g, members in groups.items()}


def paper_counts(dataset: str) -> dict:
    """classes / train / test images of a dataset as the paper's Table 6 gives them."""
    return next(r for r in published_rows("table6") if r["dataset"] == dataset)
