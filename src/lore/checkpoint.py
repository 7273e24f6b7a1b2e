"""Run directories: trainable tensors in safetensors, the rebuild recipe in ``model.json``, and
resumable training state.

``checkpoint.safetensors`` holds only what training changed (never a frozen backbone tensor), so a
run for ViT-B is a few MB. ``model.json`` holds what is needed to rebuild the model: method,
backbone and its construction arguments, class names, method options, and a fingerprint of the
backbone weights, checked on reload.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import LoreError
from .io import atomic_save, atomic_write_json, read_json, state_dict_mismatch
from . import rundir

FORMAT_VERSION = 1


def backbone_fingerprint(model: nn.Module) -> str:
    """Hash of the frozen backbone's patch projection and last block: detects a run reloaded on
    other weights (another checkpoint, another random seed)."""
    vit = model.black_box.vit
    h = hashlib.sha256()
    for t in (vit.patch_embed.proj.weight, vit.blocks[-1].mlp.fc2.weight):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(run_dir: str | Path, model: nn.Module, recipe: dict,
               name: str = rundir.WEIGHTS) -> None:
    """Write the trainable tensors and ``model.json`` (atomically, tensors first)."""
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    atomic_save(run_dir / name, lambda tmp: save_file(state, tmp, metadata={"format": "lore"}))
    meta = dict(recipe)
    meta.update(format_version=FORMAT_VERSION, method=model.method,
                options=model.rebuild_options(), num_classes=model.num_classes,
                backbone_fingerprint=None if model.black_box.trainable else backbone_fingerprint(model))
    atomic_write_json(run_dir / rundir.MODEL, meta)


def read_recipe(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LoreError(f"--run {run_dir}: not a directory")
    if not (run_dir / rundir.MODEL).is_file() and (run_dir / rundir.CONFIG).is_file():
        raise LoreError(f"--run {run_dir}: no model.json yet; the run is still training or stopped before "
                        f"it finished (continue it with lore train --resume {run_dir})")
    meta = read_json(run_dir / rundir.MODEL, "run description")
    if not isinstance(meta, dict):
        raise LoreError(f"{run_dir}/model.json is not a JSON object; it was not written by lore train")
    types = {"method": str, "backbone": str, "num_classes": int}
    for key, kind in types.items():
        if key not in meta:
            raise LoreError(f"{run_dir}/model.json has no {key!r}; it was not written by lore train")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise LoreError(f"{run_dir}/model.json: {key} is {meta[key]!r:.60}, not a {kind.__name__}; "
                            "the file is damaged (re-run training)")
    if not isinstance(meta.get("options", {}), dict) or not isinstance(meta.get("classnames") or [], list):
        raise LoreError(f"{run_dir}/model.json: 'options' / 'classnames' have the wrong types; the file is damaged")
    if not 2 <= meta["num_classes"] <= MAX_CLASSES:
        raise LoreError(f"{run_dir}/model.json: num_classes {meta['num_classes']!s:.40} is outside "
                        f"2..{MAX_CLASSES:,}; the file is damaged (re-run training)")
    names = meta.get("classnames") or []
    if names and (len(names) != meta["num_classes"] or not all(isinstance(n, str) for n in names)):
        raise LoreError(f"{run_dir}/model.json: {len(names)} class names for {meta['num_classes']} classes (or "
                        "names that are not text); the file is damaged (re-run training)")
    return meta


MAX_CLASSES = 1_000_000  # far above any label set a ViT head is trained on (ImageNet-21k: 21,843)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LoreError(f"{path}: checkpoint not found (did training finish?)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LoreError(f"{path} is not a readable safetensors checkpoint ({e})") from None
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise LoreError(f"{path}: tensor {bad} holds NaN or Inf (a diverged or damaged run); retrain it")
    return state


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", checkpoint_name: str = rundir.WEIGHTS,
             backbone_checkpoint: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from its run directory (no knowledge encoder needed).

    Args:
        run_dir: a run directory written by ``lore train``.
        device: where the model goes.
        checkpoint_name: the weights file inside the run directory (the final weights by default).
        backbone_checkpoint: local backbone weights, when the run's backbone file has moved.

    Returns:
        ``(model, meta)``: the model in eval mode, and the run's ``model.json`` record (method,
        backbone, number of classes, the method's options).

    Raises:
        LoreError: the run directory is incomplete, its weights do not fit the model, or the
            backbone's weights differ from those the run was trained on.
    """
    from .models import build_model

    run_dir = Path(run_dir)
    meta = read_recipe(run_dir)
    torch.manual_seed(meta.get("backbone_init_seed", 0))  # random-init backbones rebuild identically
    model = build_model(meta["method"], meta["backbone"], meta["num_classes"],
                        pretrained=meta.get("pretrained", True),
                        checkpoint=backbone_checkpoint or meta.get("checkpoint"),
                        backbone_args=meta.get("backbone_args"), **meta.get("options", {}))
    expected = meta.get("backbone_fingerprint")
    if expected and backbone_fingerprint(model) != expected:
        raise LoreError(f"--run {run_dir}: the backbone weights differ from those the run was trained "
                        "on (another checkpoint or pretrained tag?); pass the original --checkpoint")
    load_trainable(model, load_state(run_dir / checkpoint_name), run_dir / checkpoint_name)
    _attach_knowledge(model, run_dir)
    return model.to(device).eval(), meta


def _attach_knowledge(model: nn.Module, run_dir: Path) -> None:
    """Give a LORE model its cached class knowledge back, for KLA attention maps. Optional:
    inference never needs it, and a run whose knowledge file was deleted still loads."""
    path = run_dir / rundir.KNOWLEDGE
    width = model.knowledge_width()
    if width is None or not path.is_file():
        return
    try:
        emb = load_file(str(path))["embeddings"]
    except Exception:
        return
    if emb.shape == (model.num_classes, width):
        model.knowledge = emb.float()


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    problem = state_dict_mismatch(model.trainable_state_dict(), state)
    if problem:
        raise LoreError(f"{source} does not fit this model ({problem}): it was saved for another "
                        "method, backbone or number of classes")
    model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------
# resumable training state: one safetensors file (model + optimizer + RNG), JSON metadata


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     counters: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    scalars = {pid: {k: v for k, v in st.items() if not torch.is_tensor(v)} for pid, st in opt["state"].items()}
    meta = {"counters": json.dumps(counters), "param_groups": json.dumps(opt["param_groups"]),
            "optim_scalars": json.dumps(scalars)}
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG from ``save_train_state``; returns the counters."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise LoreError(f"{path} is not a readable training checkpoint ({e})") from None
    load_trainable(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict = {int(pid): dict(v) for pid, v in json.loads(meta["optim_scalars"]).items()}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return json.loads(meta["counters"])
