"""Frozen-feature methods (linear probe, Tip-Adapter(-F), CLIP-Adapter, zero-shot CLIP) train and
evaluate on backbone features computed once instead of in every epoch.

Their training loss depends on an image only through the frozen backbone's pooled feature (the
backbone stays in eval mode: no dropout, no drop-path), so the feature of each *view* of an image
is computed once and the training step runs the model's ``logits_from_features`` on it.

Training views, by ``--aug``:

- ``none``: one view, the test-time transform: exactly what recomputing gives.
- ``flip``: two views, the resized / center-cropped image and its mirror. A sample's view is drawn
  by the flip of the real pipeline (:class:`torchvision.transforms.RandomHorizontalFlip`) from the
  sample's own augmentation seed, so every epoch picks the mirror exactly when the image pipeline
  would have mirrored it: exactly what recomputing gives.
- ``rrc-flip`` (random crops): ``--feature-views K`` augmented views per image are computed once
  (seeded by the run's seed), and each epoch a sample takes one of them, drawn from its
  augmentation seed. Training then sees K crops per image instead of a new one every epoch (as
  Tip-Adapter's reference does with its ``augment_epoch`` views); ``--feature-views 0`` recomputes
  the features of fresh crops every epoch instead.

Test and validation features are computed once per run (in memory); with ``--feature-cache DIR``
(the grids set it to their own ``cache/features`` folder) they are also stored there, keyed on
the backbone weights' fingerprint, the image list (paths, labels, file sizes and times), the
transform, the precision and the device type, so grid cells with the same backbone share them and
a cache made for other weights, images or transform is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms as T
from tqdm.auto import tqdm

from .data import ImageDataset, eval_transform, train_transform
from .errors import LoreError
from .io import atomic_save

# the folder under a grid's output where the grids keep shared features
GRID_CACHE = Path("cache") / "features"


def uses_features(model: nn.Module) -> bool:
    """The model's output depends on an image only through the frozen backbone's pooled feature."""
    return model.feature_head()


def view_transforms(ctx, views: int) -> tuple[str, list]:
    """How a training sample picks its view (``none`` | ``flip`` | ``random``) and each view's transform."""
    cfg = ctx.cfg
    if cfg.aug == "none":
        return "none", [eval_transform(cfg.img_size, ctx.data_config)]
    if cfg.aug == "flip":
        base = train_transform(cfg.img_size, ctx.data_config, "flip").transforms[0]
        return "flip", [base, T.Compose([base, T.RandomHorizontalFlip(p=1.0)])]
    return "random", [train_transform(cfg.img_size, ctx.data_config, cfg.aug)] * views


class FeatureDataset(torch.utils.data.Dataset):
    """``(index, augmentation seed)`` items -> (cached feature of the sample's view, label, index)."""

    def __init__(self, feats: torch.Tensor, labels: list[int], pick: str):
        self.feats, self.labels, self.pick = feats, labels, pick  # feats: (views, N, d)
        self._marker = torch.tensor([[0.0, 1.0]])

    def __len__(self) -> int:
        return self.feats.shape[1]

    def view(self, seed: int | None) -> int:
        if self.pick == "none":
            return 0
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            if self.pick == "flip":  # the pipeline's own flip draw, on a 2-pixel marker
                return int(T.RandomHorizontalFlip()(self._marker)[0, 0] == 1.0)
            return int(torch.randint(self.feats.shape[0], (1,)))

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        return self.feats[self.view(seed), index], self.labels[index], index


class FeatureStep(nn.Module):
    """The training loss of a frozen-feature model on cached features (what its ``training_loss``
    computes on the images)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats, targets, index):
        logits = self.model.logits_from_features(feats)
        loss = F.cross_entropy(logits.float(), targets, reduction="none")
        return loss, logits, {"task": loss.detach()}


@torch.no_grad()
def compute(ctx, model: nn.Module, samples: list, transform, seeds: list[int] | None = None) -> torch.Tensor:
    """(N, d) pooled backbone features of ``samples`` under ``transform`` (per-sample ``seeds`` for a
    random one), in the precision and memory layout of the training step, on the CPU."""
    from .train.context import amp_dtype

    items = list(range(len(samples))) if seeds is None else list(zip(range(len(samples)), seeds))
    batches = [items[i:i + ctx.cfg.batch_size] for i in range(0, len(items), ctx.cfg.batch_size)]
    loader = torch.utils.data.DataLoader(ImageDataset(samples, transform), batch_sampler=batches,
                                         num_workers=ctx.cfg.workers, pin_memory=ctx.device.type == "cuda")
    amp, device = amp_dtype(ctx.cfg, ctx.device), ctx.device
    model.black_box.eval()
    out = []
    for images, _, _ in tqdm(loader, desc="features", leave=False, disable=not ctx.info.main or None,
                             file=sys.stderr):
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out.append(model.black_box(images).pooled.cpu())
    return torch.cat(out)


def training_dataset(ctx, model: nn.Module, samples: list) -> FeatureDataset | None:
    """The cached-feature training set of a frozen-feature model (None: train on images)."""
    if not uses_features(model):
        return None
    pick, transforms = view_transforms(ctx, ctx.cfg.feature_views)
    if not transforms:
        return None  # --feature-views 0: fresh crops every epoch
    # the random views' own seeds: fixed by the run's seed, apart from the epochs' seeds
    g = torch.Generator().manual_seed(ctx.cfg.seed * 7919 + 17)
    feats = []
    for transform in transforms:
        seeds = torch.randint(0, 2**62, (len(samples),), generator=g).tolist() if pick == "random" else None
        feats.append(compute(ctx, model, samples, transform, seeds))
    ctx.log(f"{ctx.cfg.method}: training on cached backbone features ({len(transforms)} view(s) per image, "
            f"--aug {ctx.cfg.aug})")
    return FeatureDataset(torch.stack(feats), [y for _, y in samples], pick)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the frozen backbone's tensors (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.black_box.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _images_key(samples: list) -> list:
    """Paths, labels and each file's size and modification time: a changed image is a new list."""
    out = []
    for path, label in samples:
        try:
            st = os.stat(path)
            out.append([str(path), int(label), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(path), int(label), None, None])
    return out


def cache_key(ctx, model: nn.Module, samples: list, transform) -> str:
    from .train.context import amp_dtype

    if "weights" not in ctx.memo:
        ctx.memo["weights"] = weights_fingerprint(model)
    record = {"weights": ctx.memo["weights"], "images": _images_key(samples), "transform": repr(transform),
              "amp": str(amp_dtype(ctx.cfg, ctx.device)), "device": ctx.device.type, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()


def eval_features(ctx, model: nn.Module, samples: list) -> torch.Tensor:
    """(N, d) test-transform features of ``samples``: computed once per run, and shared through
    --feature-cache DIR between runs of the same backbone weights, images and transform."""
    from safetensors.torch import load_file, save_file

    transform = eval_transform(ctx.cfg.img_size, ctx.data_config)
    key = cache_key(ctx, model, samples, transform)
    if key in ctx.memo:
        return ctx.memo[key]
    folder = Path(ctx.cfg.feature_cache) if ctx.cfg.feature_cache else None
    path = folder / f"{key}.safetensors" if folder else None
    feats = None
    if path is not None and path.is_file():
        try:
            feats = load_file(str(path))["features"]
        except Exception:  # a damaged file is recomputed (and replaced) rather than trusted
            feats = None
        if feats is not None and (feats.ndim != 2 or len(feats) != len(samples)):
            feats = None
    if feats is None:
        feats = compute(ctx, model, samples, transform)
        if path is not None and ctx.info.main:
            try:
                atomic_save(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp))
            except LoreError as e:
                raise LoreError(f"--feature-cache {folder}: {e}") from None
    ctx.memo[key] = feats
    return feats
