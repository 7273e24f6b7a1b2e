"""The method registry: each method's module says, in one place, what the method is.

timm-style: a module registers its constructor with ``@register(name, ...)`` and the keywords
describe everything the harness needs to know about it, so ``train``, ``bench``, ``sweep``,
``report`` and the CLI ask the registry and never branch on a method's name. Adding a method is one
module (constructor + :class:`Method` keywords) plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LoreError


def _no_options(cfg: Any) -> dict:
    return {}


@dataclass(frozen=True)
class Method:
    """What a method is, as the harness sees it."""
    name: str
    build: Callable[..., Any]
    # row position in tables and reports: baselines first, LORE last (the paper's layout)
    order: float = 50.0
    # the method's own options (a dataclass of lore.values.opt fields: help, choices, range); they
    # become TrainConfig fields, --flags and YAML keys
    config: type | None = None
    # options the constructor takes from a TrainConfig (LIN width, context length, ...)
    options: Callable[[Any], dict] = _no_options
    # class text embeddings the constructor needs: a function of the config (False: none)
    needs_knowledge: Callable[[Any], bool] | bool = False
    # the knowledge sentences: a function of the config (None: zero-shot CLIP's)
    templates: Callable[[Any], list[str]] | None = None
    # runs the frozen CLIP text tower itself (CoOp-like): class names and a tower spec
    text_side: bool = False
    trains: bool = True                     # False: training-free (its model is complete once built)
    needs_classes: bool = True              # False: a feature extractor without a head (b-b)
    trainable_backbone: bool = False        # full fine-tuning
    dry_run_knowledge: bool = False         # --dry-run gives it random class embeddings
    learned_knowledge: bool = False         # may learn its class embedding (--knowledge learned:DIM)
    check_knowledge: bool = False           # warn when two classes' knowledge rows nearly coincide
    # one line `lore train` prints about the method's choices (None: nothing)
    describe: Callable[[Any], str] | None = None
    # options whose default depends on the backbone: (config, backbone is CLIP) -> {option: value}
    defaults: Callable[[Any, bool], dict] | None = None
    # other names for this method with options (e.g. lore-no-kp)
    aliases: dict[str, dict] = field(default_factory=dict)
    # row labels of this method given a run's model options, and their order (first ones first)
    labels: Callable[[dict], str] | None = None
    label_order: tuple[str, ...] = ()
    # `lore bench`: offered there; which registered model stands for it; its stand-in options
    bench: bool = False
    bench_as: str | None = None
    bench_options: Callable[[Any, int], dict] | None = None

    def label(self, options: dict) -> str:
        return self.labels(options) if self.labels else self.name

    def all_labels(self) -> tuple[str, ...]:
        return self.label_order or (self.name,)

    def wants_knowledge(self, cfg: Any) -> bool:
        return self.needs_knowledge(cfg) if callable(self.needs_knowledge) else bool(self.needs_knowledge)


_REGISTRY: dict[str, Method] = {}


def register(name: str, **description):
    """``@register("vpt-deep", order=5, options=...)`` on a constructor ``(black_box, num_classes,
    **options) -> nn.Module``."""
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].build is not fn:
            raise LoreError(f"method {name!r} is registered twice")
        _REGISTRY[name] = Method(name, fn, **description)
        return fn
    return deco


def unregister(name: str) -> None:
    """Remove a method (tests register throw-away ones)."""
    _REGISTRY.pop(name, None)


def methods() -> list[Method]:
    """Every registered method in table order."""
    return sorted(_REGISTRY.values(), key=lambda m: (m.order, m.name))


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    if name not in _REGISTRY:
        alias = aliases().get(name)
        if alias is not None:  # a grid row's name: say which options it stands for
            options = " ".join(flag_text(k, v) for k, v in alias.items() if k != "method")
            raise LoreError(f"--method {name} is a row name of the grids (lore sweep, lore paper); for one run "
                            f"use --method {alias['method']} {options}")
        raise LoreError(f"unknown --method {name!r}; choose one of: {', '.join(available_methods())}")
    return _REGISTRY[name]


def aliases() -> dict[str, dict]:
    """Every alias: name -> {"method": the method, **its options}."""
    return {alias: {"method": m.name, **options} for m in methods() for alias, options in m.aliases.items()}


def resolve(name: str) -> tuple[Method, dict]:
    """A method or alias name -> (the method, the options the alias sets)."""
    alias = aliases().get(name)
    if alias is not None:
        options = dict(alias)
        return get(options.pop("method")), options
    return get(name), {}


def row_order() -> list[str]:
    """Every row label of every method, in table order."""
    return [label for m in methods() for label in m.all_labels()]


def row_label(method: str, options: dict) -> str:
    return _REGISTRY[method].label(options) if method in _REGISTRY else method


def row_rank(label: str) -> float:
    """A label's position; labels of methods lore does not know go after the baselines, before
    LORE (the main method, order >= 100)."""
    for m in methods():
        if label in m.all_labels():
            return m.order + m.all_labels().index(label) / 10
    return 99.5


def flag_text(key: str, value) -> str:
    """An option as the user types it: ``--no-kp``, ``--kp``, ``--kp-weight 0.5``."""
    flag = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{flag}"
    return f"--{flag} {value}"


def refuse_row_options(rows: list[str], base: dict, command: str) -> None:
    """A grid option that a row's name decides (``--no-kp`` beside the row ``lore``, ``--kp``
    beside ``lore-no-kp``) would silently change that row: refused, naming both. A value the row
    would have anyway is harmless."""
    from dataclasses import fields

    from ..values import typed

    for row in rows:
        method, own = resolve(row)
        options = fields(method.config) if method.config else ()
        given = typed(base, options, command)  # a YAML `kp: no` is the flag --no-kp
        defaults = {f.name: f.default for f in options}
        decided = {k: own.get(k, defaults.get(k)) for alias in method.aliases.values() for k in alias}
        clash = sorted(k for k, v in decided.items() if k in given and given[k] != v)
        if clash:
            k = clash[0]
            raise LoreError(f"{command}: {flag_text(k, given[k])} contradicts the row {row!r} (which trains "
                            f"with {flag_text(k, decided[k])}); rows {', '.join([method.name, *method.aliases])} "
                            f"decide --{k.replace('_', '-')} themselves: drop {flag_text(k, given[k])} and "
                            "choose rows with --methods")
