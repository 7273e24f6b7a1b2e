"""What every adaptation method shares: the frozen Black Box, a prompt source and a task head."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import CLIP_LOGIT_SCALE, BlackBox
from ..errors import LoreError


class CosineHead(nn.Module):
    """CLIP-style head: a linear layer on the L2-normalised image embedding, scaled by CLIP's
    logit scale. Initialised from the class text embeddings when given, so training starts at the
    zero-shot classifier."""

    def __init__(self, dim: int, num_classes: int, init: torch.Tensor | None = None,
                 scale: float = CLIP_LOGIT_SCALE):
        super().__init__()
        self.scale = scale
        self.fc = nn.Linear(dim, num_classes)
        if init is not None and init.shape == self.fc.weight.shape:
            with torch.no_grad():
                self.fc.weight.copy_(F.normalize(init.float(), dim=-1))
                self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.scale * F.normalize(x, dim=-1))


def make_head(black_box: BlackBox, num_classes: int, knowledge: torch.Tensor | None = None) -> nn.Module:
    if black_box.is_clip:
        return CosineHead(black_box.out_dim, num_classes, init=knowledge)
    head = nn.Linear(black_box.out_dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def require_clip(black_box: BlackBox, method: str) -> None:
    if not black_box.is_clip:
        raise LoreError(f"--method {method} needs a CLIP backbone whose image embedding lives in the "
                        f"text space (e.g. vit_base_patch16_clip_quickgelu_224.openai), got {black_box.name}")


def text_classifier(black_box: BlackBox, num_classes: int, knowledge: torch.Tensor | None) -> CosineHead:
    """The frozen zero-shot head: 100 * cos(image embedding, class text embedding).

    ``knowledge`` may be None when a saved run is rebuilt: the head's tensors are part of the
    checkpoint, so evaluation never needs the text tower."""
    head = CosineHead(black_box.out_dim, num_classes, init=knowledge)
    if knowledge is not None and knowledge.shape != head.fc.weight.shape:
        raise LoreError(f"class text embeddings are {tuple(knowledge.shape)} but the image embedding "
                        f"is {black_box.out_dim}-d for {num_classes} classes: use the backbone's own "
                        "CLIP text tower as --knowledge")
    return head.requires_grad_(False)


class AdaptedViT(nn.Module):
    """Frozen Black Box + method-specific prompts + task head.

    Subclasses override :meth:`prompts` (and :meth:`training_loss` for extra loss terms).
    ``options`` holds the JSON-serialisable constructor arguments, saved in ``model.json``.
    """

    method: str = "linear"

    # What the harness (train, bench, checkpoint, viz) may ask of a method, declared here with the
    # answers of a plain prompted ViT; a method overrides only what it does differently.
    bare: bool = False                  # the frozen backbone alone (B-B): no head, nothing trained
    needs_train_features: bool = False  # prepare() wants the frozen features of the training shots
    takes_negatives: bool = False       # set_negatives() gives L_kp its wrong class p from outside
    negative_source: str | None = None  # where p comes from: "zeroshot" | "probe" | "model" | None

    def prepare(self, features_labels: tuple[torch.Tensor, torch.Tensor], num_classes: int) -> None:
        """Before any training, with (frozen features, labels) of the training shots when
        ``needs_train_features`` (Tip-Adapter's cache); nothing for most methods."""

    def set_negatives(self, predictions: torch.Tensor) -> None:
        """L_kp's wrong class p per training image (only when ``takes_negatives``)."""
        raise NotImplementedError(f"{self.method} has no wrong-class input")

    def knowledge_width(self) -> int | None:
        """The width of the class knowledge the model's KLA reads (None: it has no KLA)."""
        return None

    def kla_module(self) -> nn.Module | None:
        """The Knowledge-Locality Attention whose attention maps can be drawn, if the model has one
        (and its class knowledge is attached)."""
        return None

    def feature_head(self) -> bool:
        """The logits depend on an image only through the frozen backbone's pooled feature
        (``logits_from_features``), so training may run on features computed once."""
        return False

    def __init__(self, black_box: BlackBox, num_classes: int, head: nn.Module | None = None,
                 **options):
        super().__init__()
        self.black_box = black_box
        self.num_classes = num_classes
        self.head = head if head is not None else make_head(black_box, num_classes)
        self.options = options

    def prompts(self, e0: torch.Tensor) -> torch.Tensor | None:
        """Prompt tokens for E0 (B, h, w, D): (B|1, L_p, P, D) or None."""
        return None

    def features(self, images: torch.Tensor, attn_layers: tuple[int, ...] = (),
                 hidden_layers: tuple[int, ...] = ()) -> dict:
        """The prompted ViT's outputs for a batch of images, for downstream tasks and analysis.

        Args:
            images: (B, 3, H, W) images, normalised as the backbone expects.
            attn_layers: 0-based block indices whose attention weights are also returned.
            hidden_layers: 0-based block indices whose output patch tokens are also returned.

        Returns:
            A dict with ``cls`` (B, D) the final class token; ``patches`` (B, h, w, D) the final
            patch tokens; ``prompts`` (B, P, D) the prompt tokens' outputs, or None without
            prompts; ``pooled`` (B, D_out) the backbone's pooled feature (the image embedding on
            CLIP), which the head classifies; ``attn`` {block: attention weights}; ``hidden``
            {block: (B, h, w, D)}; ``num_prefix`` and ``num_prompts``, the token counts before the
            patches.
        """
        e0 = self.black_box.embed(images)
        out = self.black_box.forward_embed(e0, self.prompts(e0), attn_layers, hidden_layers)
        return vars(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        e0 = self.black_box.embed(images)
        return self.head(self.black_box.forward_embed(e0, self.prompts(e0)).pooled)

    def training_loss(self, images: torch.Tensor, targets: torch.Tensor,
                      index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One training step's loss: (per-sample loss (B,), logits (B, C), {term: per-sample (B,)})."""
        logits = self(images)
        loss = F.cross_entropy(logits.float(), targets, reduction="none")
        return loss, logits, {"task": loss.detach()}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen backbone: trainable parameters and their modules' buffers."""
        skip = "" if self.black_box.trainable else "black_box."
        return {k: v for k, v in self.state_dict().items() if not (skip and k.startswith(skip))}

    def rebuild_options(self) -> dict:
        return dict(self.options)


def zeroshot_sentences(cfg, published=None) -> list[str]:
    """Zero-shot CLIP's class sentences: --template, else the dataset's published templates
    (``published``: a dataset -> templates function, default CoOp's zero-shot ones), else
    'a photo of a {}.'."""
    from ..data.catalog import zeroshot_templates
    from ..knowledge import ZEROSHOT_TEMPLATE, read_templates

    if cfg.dataset and not cfg.template:
        return (published or zeroshot_templates)(cfg.dataset)
    return read_templates(cfg.template or ZEROSHOT_TEMPLATE)
