"""Run a command's protocol in this process with its own named arguments, as the grids do (the
paper's Table 4 tasks, the demo's figures): the protocol module's argument parser reads the
arguments, its ``main`` runs, and an error reaches the caller as a :class:`LoreError`. No exit
codes, no command dispatch: the command line stays the outermost layer."""

from __future__ import annotations

import argparse
import importlib

from .errors import LoreError

# the protocols the grids run, by their command name
MODULES = {"retrieval": "lore.tasks.retrieval", "correspond": "lore.tasks.correspondence",
           "vos": "lore.tasks.vos", "attention": "lore.viz.attention", "locality": "lore.viz.locality",
           "report": "lore.viz.report"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise LoreError(f"lore {self.prog}: {message}")


def run_protocol(command: str, argv: list) -> dict:
    """``run_protocol("retrieval", ["--root", ROOT, ...])``: the protocol's results."""
    module = importlib.import_module(MODULES[command])
    parser = _Parser(prog=command)
    module.add_arguments(parser)
    return module.main(parser.parse_args([str(a) for a in argv]))
