"""Options that would change nothing in this run: each said in one ``lore: warning:`` line, and the
run goes on (a recipe or a grid's shared options may set them for other runs)."""

from __future__ import annotations

import sys

from torch import nn

from .bn_modes import batch_norms


def inert_options(cfg, model: nn.Module | None = None) -> list[str]:
    """Why each inert option of ``cfg`` changes nothing; ``model``: the built model, to ask whether
    it has the BatchNorm (or dropout) that --bn-mode acts on."""
    from .config import defaults
    from .models.registry import resolve

    lines = []
    if cfg.log_images and cfg.log != "tensorboard":
        lines.append("--log-images draws into TensorBoard only; it does nothing without --log tensorboard")
    if resolve(cfg.method)[0].name == "lore" and not cfg.kp and cfg.kp_weight != defaults()["kp_weight"]:
        lines.append(f"--kp-weight {cfg.kp_weight} weighs L_kp, which --no-kp leaves out")
    if model is not None and cfg.bn_mode != "train" and not batch_norms(model):
        dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
        if cfg.bn_mode != "reference" or not dropout:
            wb = f" (--wb-norm {cfg.wb_norm})" if cfg.method == "lore" else ""
            lines.append(f"--bn-mode {cfg.bn_mode} acts on BatchNorm layers, and this {cfg.method} model{wb} "
                         "has none")
    return lines + foreign_options(cfg)


class _Reads:
    """A config that records which options are read from it."""

    def __init__(self, cfg) -> None:
        self._cfg, self.names = cfg, set()

    def __getattr__(self, name: str):
        self.names.add(name)
        return getattr(self._cfg, name)


def _options_read(method, cfg) -> set[str] | None:
    """The options the method's constructor options, knowledge, templates and defaults read (ProGrad
    reads CoOp's context, Tip-Adapter-F Tip-Adapter's); None if they cannot be traced."""
    proxy = _Reads(cfg)
    try:
        method.options(proxy)
        for f in (method.describe, method.templates, method.needs_knowledge):
            if callable(f):
                f(proxy)
        if method.defaults:
            method.defaults(proxy, False)
    except Exception:  # noqa: BLE001 - tracing is best effort: no warning rather than a wrong one
        return None
    return proxy.names


def foreign_options(cfg) -> list[str]:
    """Options another method declares, set away from their default (a shared YAML --config, a flag
    meant for another method), that this run's method never reads."""
    from dataclasses import fields

    from .models.registry import methods, resolve

    method = resolve(cfg.method)[0]
    read = _options_read(method, cfg)
    if read is None:
        return []
    return [f"--{f.name.replace('_', '-')} is an option of {m.name}; --method {cfg.method} does not read it"
            for m in methods() if m is not method and m.config for f in fields(m.config)
            if f.name not in read and getattr(cfg, f.name) != f.default]


def warn_inert(cfg, model: nn.Module | None = None) -> None:
    for line in inert_options(cfg, model):
        print(f"lore: warning: {line}", file=sys.stderr)
