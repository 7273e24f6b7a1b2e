"""The one cell runner under `lore sweep`, `lore paper` and `lore demo`: a cell is a ``lore train``
run described by its TrainConfig (``cfg.out`` is its run directory).

One resume rule: a finished cell made with the same resolved options is reused, an interrupted one
(with training checkpoints) resumes, and one made with other options is refused, before anything
is written when the grid asks first (:func:`refuse_changed`). A failing cell is recorded, and the
grid goes on, by :func:`lore.grid.worker.run_cell`, which runs every grid's cells through here.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from . import rundir
from .config import TrainConfig
from .errors import LoreError
from .io import read_json
from .values import EXECUTION_FIELDS, absolute_paths

OTHER_OPTIONS_HINT = "delete it or sweep into another --out"


def check_same_options(cfg: TrainConfig, hint: str = OTHER_OPTIONS_HINT) -> None:
    """A kept cell must have been trained with the options asked for now, or a table mixes recipes."""
    from .config import load_yaml
    from .runs import resolve_backbone_defaults

    run_dir = Path(cfg.out)
    saved = load_yaml(str(run_dir / rundir.CONFIG))
    # runs store absolute paths and the backbone-dependent defaults they resolved
    wanted = dataclasses.asdict(resolve_backbone_defaults(absolute_paths(cfg)))
    # options the saved run predates (added to lore later) are taken to have had their default
    diff = sorted(k for k in wanted if k not in EXECUTION_FIELDS and k in saved and saved[k] != wanted[k])
    if diff:
        k = diff[0]
        raise LoreError(f"{run_dir} was run with other options ({k}: {saved.get(k)!r} there, "
                        f"{wanted[k]!r} now); {hint}")


def refuse_changed(cfgs: list[TrainConfig], hint: str = OTHER_OPTIONS_HINT) -> None:
    """Before a grid writes anything: every cell's options are in range, and every cell that
    already holds a run was made with its options."""
    from .config import validate

    for cfg in cfgs:
        validate(cfg)
    for cfg in cfgs:
        if rundir.holds_run(cfg.out):
            check_same_options(cfg, hint)


def run(cfg: TrainConfig, fresh: bool = False, hint: str = OTHER_OPTIONS_HINT) -> tuple[dict, str]:
    """(final.json of the cell, how: 'skipped', 'resumed' or 'ran'). ``fresh``: replace whatever
    run the cell's directory holds."""
    from .train import run as train_run

    run_dir = Path(cfg.out)
    if fresh and rundir.is_run_dir(run_dir):
        shutil.rmtree(run_dir)
    if rundir.finished(run_dir):
        check_same_options(cfg, hint)
        return read_json(run_dir / rundir.FINAL, "cell result"), "skipped"
    if rundir.resumable(run_dir):
        check_same_options(cfg, hint)
        return train_run(dataclasses.replace(cfg, resume=str(run_dir))), "resumed"
    return train_run(cfg), "ran"
