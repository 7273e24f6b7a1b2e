"""ProGrad (Zhu et al., ICCV 2023): CoOp trained with prompt-aligned gradients.

Each step computes two gradients of the context:

- g_ce: of the cross-entropy on the labels (the update direction),
- g_kl: of KL(p_zs || p) * T^2, the divergence of the model's prediction p = softmax(logits / T)
  from the frozen zero-shot CLIP's prediction p_zs = softmax(100 cos(x, text_c) / T),

and, where they conflict (g_ce . g_kl < 0), removes lambda times the component of g_ce along g_kl:

    g = g_ce - lambda * (g_ce . g_kl / |g_kl|^2) g_kl

The reference code does this per parameter tensor (here: the context), with T = 1 and lambda = 1;
its KL term is the cross-entropy to p_zs, which has the same gradient.

In the shared harness the model returns the cross-entropy as its loss; ``training_loss`` takes
g_kl with ``torch.autograd.grad`` and a hook on the context turns the g_ce that the harness's
``backward()`` produces into g before it reaches ``.grad`` (the projection commutes with positive
scaling of g_ce and is scale-free in g_kl, so loss scaling and AMP's gradient scaler pass through
it unchanged).

Under DDP the projection, not being linear, must see the gradients of the whole batch: both are
averaged over the processes before it (the hook runs before DDP's own all-reduce, which then
averages identical tensors), so N processes take the single-process step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import BlackBox, clip_logits
from ..distributed import mean_over_processes, world_size
from ..errors import LoreError
from ..values import opt
from .registry import register
from .base import AdaptedViT, zeroshot_sentences
from .clip_adapter import image_embedding
from .coop import CTX_INIT, CoOp, ctx_init, require_text_side, template_words


def project_conflicting(grad: torch.Tensor, ref: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """``grad`` minus ``lam`` times its component along ``ref`` when the two point against each
    other (negative dot product); ``grad`` unchanged otherwise. Pure, no host sync."""
    g, r = grad.float(), ref.float()
    dot = (g * r).sum()
    coef = lam * dot.clamp(max=0.0) / r.pow(2).sum().clamp_min(torch.finfo(torch.float32).tiny)
    return (g - coef * r).to(grad.dtype)


def kl_to_zeroshot(logits: torch.Tensor, zeroshot: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample KL(softmax(zeroshot / T) || softmax(logits / T)) * T^2, (B,)."""
    target = F.log_softmax(zeroshot.float() / temperature, dim=-1)
    own = F.log_softmax(logits.float() / temperature, dim=-1)
    return (target.exp() * (target - own)).sum(-1) * temperature ** 2


class ProGrad(CoOp):
    method = "prograd"

    def __init__(self, black_box: BlackBox, num_classes: int, classnames: list[str], text_tower: str,
                 knowledge: torch.Tensor | None = None, n_ctx: int = 16, csc: bool = False,
                 ctx_init: str | None = CTX_INIT, lam: float = 1.0, temperature: float = 1.0):
        if lam < 0 or temperature <= 0:
            raise LoreError(f"--method prograd: lambda must be >= 0 and T > 0, got {lam}, {temperature}")
        super().__init__(black_box, num_classes, classnames, text_tower, n_ctx=n_ctx, csc=csc,
                         ctx_init=ctx_init, lam=lam, temperature=temperature)
        self.lam, self.temperature = lam, temperature
        if knowledge is not None and knowledge.shape != (num_classes, black_box.out_dim):
            raise LoreError(f"--method prograd: zero-shot class text embeddings are {tuple(knowledge.shape)}, "
                            f"expected ({num_classes}, {black_box.out_dim}); use the backbone's own CLIP "
                            "text tower as --knowledge")
        # the zero-shot classifier is needed to train only: not saved, a reloaded run evaluates without it
        self.register_buffer("zeroshot_text", knowledge.float() if knowledge is not None else None,
                             persistent=False)
        self._kl_grad: torch.Tensor | None = None
        self.ctx.register_hook(self._align)

    def _align(self, grad: torch.Tensor) -> torch.Tensor:
        ref, self._kl_grad = self._kl_grad, None  # one projection per training_loss
        if ref is None:
            return grad
        if world_size() > 1:
            grad = mean_over_processes(grad)
        return project_conflicting(grad, ref, self.lam)

    def training_loss(self, images: torch.Tensor, targets: torch.Tensor,
                      index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if self.zeroshot_text is None:
            raise LoreError("--method prograd trains against the zero-shot CLIP predictions: build it "
                            "with the class text embeddings (knowledge=...)")
        x = image_embedding(self.black_box, images)
        logits = self.logits(x)
        with torch.no_grad():
            zeroshot = clip_logits(x.float(), self.zeroshot_text)
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        kl = kl_to_zeroshot(logits, zeroshot, self.temperature)
        self._kl_grad = None
        if torch.is_grad_enabled() and self.ctx.requires_grad:
            self._kl_grad = torch.autograd.grad(kl.sum(), self.ctx, retain_graph=True)[0]
            if world_size() > 1:
                self._kl_grad = mean_over_processes(self._kl_grad)
        return ce, logits, {"task": ce.detach(), "kl": kl.detach()}


@dataclass
class ProGradOptions:
    """ProGrad's options (its context: CoOp's --coop-ctx / --coop-csc)."""
    prograd_lambda: float = opt(1.0, "ProGrad: share of the conflicting gradient component removed", low=0)


def _prograd_options(cfg) -> dict:
    # like the official code, the context starts from the words of the teacher's template
    template = cfg.template
    if not template and cfg.dataset:
        from ..data.catalog import prograd_templates
        template = prograd_templates(cfg.dataset)[0]
    return dict(n_ctx=cfg.coop_ctx, csc=cfg.coop_csc, lam=cfg.prograd_lambda,
                ctx_init=ctx_init(cfg, template_words(template) or CTX_INIT))


def _prograd_sentences(cfg) -> list[str]:
    from ..data.catalog import prograd_templates

    return zeroshot_sentences(cfg, prograd_templates)  # its teacher's published templates


def _prograd_bench(black_box: BlackBox, num_classes: int) -> dict:
    # a stand-in zero-shot classifier: the cost does not depend on it
    return {"knowledge": F.normalize(torch.randn(num_classes, black_box.out_dim), dim=-1)}


@register("prograd", config=ProGradOptions, order=8, text_side=True, needs_knowledge=True, options=_prograd_options,
          templates=_prograd_sentences, bench=True, bench_options=_prograd_bench)
def _prograd(black_box: BlackBox, num_classes: int, classnames: list[str] | None = None,
             text_tower: str | None = None, knowledge: torch.Tensor | None = None, n_ctx: int = 16,
             csc: bool = False, ctx_init: str | None = CTX_INIT, lam: float = 1.0,
             temperature: float = 1.0, **_) -> AdaptedViT:
    require_text_side(black_box, "prograd", classnames, text_tower)
    return ProGrad(black_box, num_classes, classnames, text_tower, knowledge=knowledge, n_ctx=n_ctx,
                   csc=csc, ctx_init=ctx_init, lam=lam, temperature=temperature)
