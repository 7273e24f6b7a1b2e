"""Published training recipes as data: ``<dataset>.yaml`` (LORE, per backbone, regime and shots)
and ``baselines.yaml`` (the comparison methods' own recipes).

``--recipe paper`` layers them as defaults < recipe < ``--config`` YAML < command-line flags: the
recipe only fills options that the YAML file and the flags leave unset.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from ..errors import LoreError

RECIPE_DIR = Path(__file__).parent
RECIPES = ("paper",)
# the options a method borrows with ``schedule_of`` (how long and how fast it trains, not what it is)
SCHEDULE_KEYS = ("epochs", "batch_size", "lr", "min_lr", "wd", "warmup_epochs", "warmup_lr",
                 "stage_h_epochs", "stage_h_lr", "aug", "train_crop_pct")
META_KEYS = {"source", "notes"}
# What the reference code does to every LORE run besides its configuration file: it switches the
# model to eval mode after epoch 1 and never back (its evaluation loop), so from epoch 2 on the White
# Box's BatchNorm uses epoch 1's running statistics and dropout is off. The paper's numbers were
# made so; ``--recipe paper`` trains LORE (with or without L_kp) the same way, with the reference's
# BatchNorm in LIN and PG (``lore train``'s default is per-image normalisation).
LORE_REFERENCE_BEHAVIOUR = {"bn_mode": "reference", "wb_norm": "batch"}


def _norm_backbone(name: str) -> str:
    # timm's "_quickgelu" variants hold the same OpenAI weights as the plain names
    return name.replace("_quickgelu", "")


@lru_cache(maxsize=None)
def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise LoreError(f"recipe file {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise LoreError(f"recipe file {path}: expected a mapping")
    return data


def available_datasets() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if p.stem != "baselines")


def _dataset_file(dataset: str) -> Path:
    path = RECIPE_DIR / f"{dataset}.yaml"
    if not path.is_file():
        raise LoreError(f"--recipe paper: no recipe file for dataset {dataset!r} ({path} not found); "
                        f"recipes exist for: {', '.join(available_datasets())}")
    return path


def _lore_entry(dataset: str, backbone: str, regime: str, shots: int) -> dict:
    path = _dataset_file(dataset)
    per_backbone = _read(path).get("lore") or {}
    by_norm = {_norm_backbone(k): k for k in per_backbone}
    key = by_norm.get(_norm_backbone(backbone))
    if key is None:
        raise LoreError(f"--recipe paper: {path} has no LORE recipe for backbone {backbone!r}; it has: "
                        f"{', '.join(per_backbone)}")
    entry = per_backbone[key]
    for _ in range(len(per_backbone)):  # follow ``same_as`` links
        if "same_as" not in entry:
            break
        entry = per_backbone[entry["same_as"]]
    table = entry.get(regime) or {}
    transform = dict(_read(path).get("transform") or {})  # the reference's per-dataset augmentation
    if shots not in table:
        have = [f"{r} {k}-shot" for r in ("fewshot", "easy-to-hard") for k in (entry.get(r) or {})]
        raise LoreError(f"--recipe paper: {path} has no {regime} {shots}-shot LORE recipe for {key}; "
                        f"it has: {', '.join(have) or 'none'}")
    return {**transform, **table[shots]}


def lookup(dataset: str, method: str, backbone: str, shots: int | None,
           curriculum: str = "none") -> dict:
    """The recipe's option values for one run (only options, no metadata)."""
    regime = "easy-to-hard" if curriculum == "easy-to-hard" else "fewshot"
    k = shots or 0
    if method == "lore":
        return {**LORE_REFERENCE_BEHAVIOUR, **_lore_entry(dataset, backbone, regime, k)}
    path = RECIPE_DIR / "baselines.yaml"
    recipes = _read(path)
    if method not in recipes:
        raise LoreError(f"--recipe paper: {path} has no recipe for method {method!r}; it has: "
                        f"lore, {', '.join(recipes)}")
    spec = recipes[method]
    if "schedule_of" in spec:
        values = _lore_entry(dataset, backbone, regime, k)
        return {key: v for key, v in values.items() if key in SCHEDULE_KEYS}
    # the baselines' papers give one schedule; easy-to-hard trains each stage with it
    table = spec.get(regime) or spec.get("fewshot") or {}
    if k not in table:
        raise LoreError(f"--recipe paper: {path} has no {k}-shot recipe for {method}; it has: "
                        f"{', '.join(f'{s}-shot' for s in table)}")
    values = dict(table[k] or {})
    values.update((spec.get("datasets") or {}).get(dataset) or {})
    return values


def apply_recipe(values: dict, defaults: dict, recipe_backbone: str | None = None,
                 recipe_shots: int | None = None) -> dict:
    """``values`` (from ``--config`` and explicit flags) over the named recipe; unchanged without one.

    ``defaults``: every option's default (:func:`lore.config.defaults`; passed in, so the recipes
    stay data that the configuration reads, never the other way round). ``recipe_backbone`` /
    ``recipe_shots`` pick the recipe of another backbone / shot count than the one trained (smoke
    runs on a tiny stand-in backbone and tiny data)."""
    name = values.get("recipe")
    if not name:
        return values
    if name not in RECIPES:
        raise LoreError(f"--recipe {name!r}: choose one of {', '.join(RECIPES)}")
    get = lambda key: values.get(key, defaults.get(key))  # noqa: E731
    dataset = get("dataset")
    if not dataset:
        raise LoreError("--recipe paper needs --dataset NAME (the recipes are per dataset)")
    shots = recipe_shots or get("shots")
    if get("method") != "zeroshot" and not shots:
        raise LoreError("--recipe paper needs --shots N (the recipes are per shot count: 16 or 8)")
    recipe = lookup(dataset, get("method"), recipe_backbone or get("backbone"), shots, get("curriculum"))
    unknown = sorted(set(recipe) - set(defaults) - META_KEYS)
    if unknown:
        raise LoreError(f"recipe for {dataset} / {get('method')}: option(s) {unknown} are not known to "
                        "this version of lore train")
    return {**{k: v for k, v in recipe.items() if k not in META_KEYS}, **values}
