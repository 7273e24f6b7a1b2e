"""The Black Box: a frozen, unchanged timm ``VisionTransformer`` that accepts prompt tokens.

Token layout inside the ViT: ``[prefix (CLS, registers), prompts (P), patches (h*w)]``. Prompts are
inserted after the positional embedding and before ``norm_pre`` (what CLIP calls ``ln_pre``).
With deep prompts (one set per layer) the prompt slots are *replaced* before every later block, so
the outputs at prompt slots of layer i-1 are discarded (VPT-deep).

The wrapper never edits the timm module: it re-runs its public pieces (``patch_embed``,
``_pos_embed``, ``norm_pre``, ``blocks``, ``norm``) in the same order as ``forward_features``.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from . import pretrained  # tells timm the offline backbone names before any look-up
from .errors import LoreError
from .network import hub_offline_if_unreachable
from .values import check_patch_multiple
from .io import state_dict_mismatch

log = logging.getLogger(__name__)

CLIP_LOGIT_SCALE = 100.0  # exp(learned logit_scale) of the released CLIP models


@dataclass
class BlackBoxOutput:
    """What one pass of the Black Box returns.

    cls:     (B, D) final-normed CLS token.
    patches: (B, h, w, D) final-normed patch tokens.
    prompts: (B, P, D) final-normed outputs at the prompt slots, or None.
    pooled:  (B, D_out) the feature a task head sees (CLIP: the projected image embedding).
    attn:    {layer: (B, heads, T, T)} softmax attention weights of the requested layers.
    hidden:  {layer: (B, h, w, D)} patch tokens leaving the requested blocks, before any final
             norm (the dense-descriptor protocols read intermediate blocks).
    """

    cls: torch.Tensor
    patches: torch.Tensor
    prompts: torch.Tensor | None
    pooled: torch.Tensor
    attn: dict[int, torch.Tensor] = field(default_factory=dict)
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    num_prefix: int = 1
    num_prompts: int = 0

    @property
    def grid(self) -> tuple[int, int]:
        return self.patches.shape[1], self.patches.shape[2]


# pre-trained tags of timm CLIP architectures whose head is an ImageNet classifier, not the projection
_FINE_TUNED_MARKS = ("ft", "in1k", "in12k", "in21k", "in22k")


def _pretrained_cfg(name: str):
    """timm's pre-trained config of ``name`` (a bare name resolves to the default tag), or None for
    a tag timm does not know (lore.pretrained names, typos: building the model reports those)."""
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        return None


def resolved_tag(name: str) -> str:
    """The pre-trained tag timm uses for ``name`` (a bare name resolves to the default tag)."""
    cfg = _pretrained_cfg(name)
    return (cfg.tag if cfg is not None else None) or name.partition(".")[2]


def has_clip_projection(name: str) -> bool:
    """Do these weights end in CLIP's image projection (a head into the joint text space)?

    Decided on the tag timm resolves, not on the name alone: a bare ``vit_base_patch16_clip_224``
    is an ImageNet fine-tuned classifier with a 1000-way head."""
    tag = resolved_tag(name)
    return "_clip_" in name.partition(".")[0] and not any(mark in tag for mark in _FINE_TUNED_MARKS)


def pretrained_crop_pct(name: str) -> float:
    """The test-time crop fraction of the backbone's pre-trained config (timm's default if unknown)."""
    cfg = _pretrained_cfg(name) or _pretrained_cfg(name.partition(".")[0])
    return float(cfg.crop_pct) if cfg is not None and cfg.crop_pct else timm.data.DEFAULT_CROP_PCT


def quickgelu_name(name: str) -> str | None:
    """The QuickGELU twin of an OpenAI CLIP timm name built with GELU, else None.

    OpenAI trained its CLIP towers with QuickGELU; timm's plain ``*_clip_*`` models use GELU."""
    arch = name.partition(".")[0]
    if "_clip_" not in arch or "quickgelu" in arch or resolved_tag(name) != "openai":
        return None
    return arch.replace("_clip_", "_clip_quickgelu_", 1) + ".openai"


def parse_backbone_args(spec: str | dict | None) -> dict:
    """``"img_size=32,patch_size=8,depth=2"`` -> ``{"img_size": 32, ...}`` (ints, floats, bools)."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    out: dict = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise LoreError(f"--backbone-args: expected key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        out[key] = _parse_scalar(value)
    return out


def _parse_scalar(value: str):
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _check_name(name: str) -> None:
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5] if arch else []
        hint = f" (did you mean one of: {', '.join(close)}?)" if close else ""
        raise LoreError(f"unknown backbone {name!r}: not a timm model name{hint}")


def create_vit(
    name: str,
    pretrained: bool = True,
    checkpoint: str | None = None,
    backbone_args: dict | None = None,
) -> VisionTransformer:
    """Build a timm ViT by name; weights from the hub (``pretrained``) or a local ``checkpoint``.

    ``dynamic_img_size=True`` lets every task feed any input size (position embeddings are
    interpolated by timm). Non-CLIP models lose their classifier; CLIP models keep ``head``, the
    image projection into the joint image-text space.
    """
    _check_name(name)
    kwargs = dict(dynamic_img_size=True)
    kwargs.update(backbone_args or {})
    twin = quickgelu_name(name)
    if twin:
        warnings.warn(f"backbone {name} runs the OpenAI CLIP weights with GELU, but they were "
                      f"trained with QuickGELU; use {twin} to reproduce CLIP's (and the paper's) "
                      "results", UserWarning, stacklevel=2)
    if not has_clip_projection(name):
        kwargs.setdefault("num_classes", 0)
    from . import pretrained as offline  # names built from other sources than the timm hub
    if pretrained and checkpoint is None and not offline.is_registered(name):
        hub_offline_if_unreachable()  # no network: fail (or use the cache) at once, not after retries
    try:
        create = offline.create if offline.is_registered(name) else timm.create_model
        model = create(name, pretrained=pretrained and checkpoint is None, **kwargs)
    except TypeError as e:
        if not backbone_args:  # nothing of the user's was passed: the model is not a ViT
            raise LoreError(f"--backbone {name} is not a timm Vision Transformer ({e}); choose a ViT "
                            "such as vit_base_patch16_224") from None
        raise LoreError(f"--backbone-args {backbone_args} not accepted by {name}: {e}") from None
    except (RuntimeError, OSError, ValueError) as e:
        if pretrained and checkpoint is None:
            raise LoreError(
                f"could not fetch pre-trained weights for {name} ({type(e).__name__}: {e}). "
                "Check the network / hub cache, pass --checkpoint FILE, or use --no-pretrained"
            ) from None
        raise LoreError(f"could not build backbone {name}: {e}") from None
    if not isinstance(model, VisionTransformer):
        raise LoreError(
            f"backbone {name} is a {type(model).__name__}; lore supports timm VisionTransformer "
            "models (ViT, DeiT, CLIP, DINO/DINOv2, SigLIP, ...)"
        )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, name)
    return model


def load_checkpoint(model: VisionTransformer, path: str, name: str) -> None:
    """Load a local .safetensors / .pth / .npz file with timm's own loader and key filters."""
    p = Path(path)
    if not p.is_file():
        raise LoreError(f"--checkpoint {path}: file not found")
    if p.suffix == ".npz":
        try:
            model.load_pretrained(str(p))
        except Exception as e:  # numpy key errors, shape mismatches
            raise LoreError(f"--checkpoint {path} does not fit backbone {name}: {e}") from None
        return
    try:
        state = timm.models.load_state_dict(str(p), weights_only=True)
    except Exception as e:
        raise LoreError(f"--checkpoint {path} could not be read ({type(e).__name__}: {e}); "
                        "use a .safetensors, .pth or .npz file") from None
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as e:
            raise LoreError(f"--checkpoint {path} does not fit backbone {name}: {e}") from None
    own = model.state_dict()
    head_keys = {k for k in state if k.startswith("head.")}
    if "head.weight" not in own or (
        "head.weight" in state and state["head.weight"].shape != own["head.weight"].shape
    ):
        state = {k: v for k, v in state.items() if k not in head_keys}
    problem = state_dict_mismatch(own, state, optional=("head.",))
    if problem:
        raise LoreError(f"--checkpoint {path} does not fit backbone {name}: {problem}. Pass the "
                        "checkpoint's own architecture as --backbone")
    model.load_state_dict(state, strict=False)


def attention_weights(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention of a timm ``Attention`` module on its (already normed) input x: (B, H, T, T).

    Recomputed from the module's own projections, so the fused kernel timm uses in the forward
    pass does not hide the weights.
    """
    B, T, _ = x.shape
    qkv = attn.qkv(x).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


class BlackBox(nn.Module):
    """Frozen ViT that runs with optional prompt tokens.

    Prompts are a tensor (B or 1, L_p, P, D): ``L_p == 1`` is shallow (input-only) prompting,
    ``L_p == depth`` deep prompting (slots replaced before every block), ``1 < L_p < depth``
    replaced before the first L_p blocks only, after which the prompt outputs flow on (MaPLe).
    """

    def __init__(self, vit: VisionTransformer, name: str = "", trainable: bool = False):
        super().__init__()
        self.vit = vit
        self.name = name
        self.is_clip = has_clip_projection(name) and isinstance(vit.head, nn.Linear)
        self.trainable = trainable
        self.vit.requires_grad_(trainable)
        if not trainable:
            self.vit.eval()

    # frozen weights stay in eval mode (no dropout / drop-path) whatever mode the wrapper is in
    def train(self, mode: bool = True) -> "BlackBox":
        super().train(mode)
        if not self.trainable:
            self.vit.eval()
        return self

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_heads(self) -> int:
        return self.vit.blocks[0].attn.num_heads

    @property
    def num_prefix(self) -> int:
        return self.vit.num_prefix_tokens

    @property
    def patch_size(self) -> int:
        return self.vit.patch_embed.patch_size[0]

    @property
    def out_dim(self) -> int:
        """Width of ``pooled`` (CLIP: the joint-embedding width)."""
        return self.vit.head.out_features if self.is_clip else self.vit.num_features

    @property
    def data_config(self) -> dict:
        return timm.data.resolve_data_config({}, model=self.vit)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """E0: the patch projection of the pixels, (B, h, w, D), no position embedding."""
        check_patch_multiple(images.shape[-2:], self.patch_size)
        e0 = self.vit.patch_embed(images)
        if e0.ndim == 3:  # fixed-size timm models return (B, N, D)
            h, w = self.vit.patch_embed.grid_size
            e0 = e0.reshape(e0.shape[0], h, w, e0.shape[-1])
        return e0

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None,
                attn_layers: tuple[int, ...] = (), hidden_layers: tuple[int, ...] = ()) -> BlackBoxOutput:
        return self.forward_embed(self.embed(images), prompts, attn_layers, hidden_layers)

    def forward_embed(self, e0: torch.Tensor, prompts: torch.Tensor | None = None,
                      attn_layers: tuple[int, ...] = (), hidden_layers: tuple[int, ...] = ()) -> BlackBoxOutput:
        """Run the ViT from E0 (B, h, w, D) with prompts (B|1, L_p, P, D) inserted after the prefix.
        ``attn_layers`` / ``hidden_layers``: 0-based block indices whose attention weights / output
        patch tokens are also returned."""
        vit = self.vit
        B, h, w, D = e0.shape
        x = vit._pos_embed(e0 if vit.dynamic_img_size else e0.reshape(B, h * w, D))
        x = vit.patch_drop(x)
        npre = vit.num_prefix_tokens
        P = 0
        if prompts is not None:
            if prompts.ndim != 4 or not 1 <= prompts.shape[1] <= self.depth or prompts.shape[-1] != D:
                raise ValueError(f"prompts must be (B, 1..{self.depth}, P, {D}), got {tuple(prompts.shape)}")
            prompts = prompts.to(x.dtype).expand(B, -1, -1, -1)
            P = prompts.shape[2]
            x = torch.cat([x[:, :npre], prompts[:, 0], x[:, npre:]], dim=1)
        x = vit.norm_pre(x)
        deep = prompts is not None and prompts.shape[1] > 1
        attn: dict[int, torch.Tensor] = {}
        hidden: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(vit.blocks):
            if deep and 0 < i < prompts.shape[1]:
                x = torch.cat([x[:, :npre], prompts[:, i], x[:, npre + P:]], dim=1)
            if i in attn_layers:
                attn[i] = attention_weights(blk.attn, blk.norm1(x))
            x = blk(x)
            if i in hidden_layers:
                hidden[i] = x[:, npre + P:].reshape(B, h, w, D)
        x = vit.norm(x)
        patches = x[:, npre + P:].reshape(B, h, w, D)
        return BlackBoxOutput(
            cls=x[:, 0],
            patches=patches,
            prompts=x[:, npre:npre + P] if P else None,
            pooled=self._pool(x, npre, P),
            attn=attn,
            hidden=hidden,
            num_prefix=npre,
            num_prompts=P,
        )

    def _pool(self, x: torch.Tensor, npre: int, P: int) -> torch.Tensor:
        vit = self.vit
        # prompt outputs never enter the pooled feature
        tokens = torch.cat([x[:, :npre], x[:, npre + P:]], dim=1) if P else x
        if vit.attn_pool is not None:
            pooled = vit.attn_pool(tokens if vit.pool_include_prefix else tokens[:, npre:])
        elif vit.global_pool == "avg":
            pooled = tokens[:, npre:].mean(dim=1)
        else:  # 'token'
            pooled = tokens[:, 0]
        pooled = vit.fc_norm(pooled)
        return vit.head(pooled) if self.is_clip else pooled


def build_black_box(name: str, pretrained: bool = True, checkpoint: str | None = None,
                    backbone_args: dict | str | None = None, trainable: bool = False) -> BlackBox:
    vit = create_vit(name, pretrained, checkpoint, parse_backbone_args(backbone_args))
    return BlackBox(vit, name=name, trainable=trainable)


def clip_logits(features: torch.Tensor, class_embeddings: torch.Tensor,
                scale: float = CLIP_LOGIT_SCALE) -> torch.Tensor:
    """CLIP zero-shot style logits: scale * cos(image feature, class embedding)."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(class_embeddings, dim=-1).t()
