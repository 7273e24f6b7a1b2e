"""The ``lore`` command line. Every subcommand turns a :class:`LoreError` into one line on stderr
and exit status 2."""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import threading
from pathlib import Path

from . import rundir
from .errors import LoreError
from .values import default_workers

# subcommand -> (module, help). Modules are imported only when their command runs.
COMMANDS = {
    "train": ("lore.cli", "train a method on a classification dataset"),
    "eval": ("lore.cli", "re-evaluate a saved run"),
    "predict": ("lore.predict", "classify unlabelled images with a trained run (CSV or JSON lines)"),
    "export": ("lore.export", "a trained run as an ONNX file, checked against PyTorch with onnxruntime"),
    "retrieval": ("lore.tasks.retrieval", "image retrieval on revisited Oxford/Paris"),
    "correspond": ("lore.tasks.correspondence", "SPair-71k keypoint correspondence"),
    "vos": ("lore.tasks.vos", "DAVIS-2017 video object segmentation by label propagation"),
    "attention": ("lore.viz.attention", "attention-map grid: B-B vs KLA vs LORE"),
    "locality": ("lore.viz.locality", "mean attention distance and entropy per layer"),
    "report": ("lore.viz.report", "one self-contained HTML report of runs"),
    "bench": ("lore.bench", "cost of B-B, VPT and LORE measured side by side"),
    "demo": ("lore.demo", "LORE vs baselines on real solar-cell images (ELPV) with DINOv2 ViT-S/14"),
    "sweep": ("lore.sweep", "grid of methods x datasets x shots x seeds"),
    "data": ("lore.data.check", "the paper's datasets as distributed: check a folder's split sizes, list them"),
    "paper": ("lore.paper", "reproduce one of the paper's tables (runs, table.md with published numbers)"),
    "grid": ("lore.grid.status", "where a grid stands: `lore grid status OUT` (done / running / failed / pending)"),
}


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import add_arguments
    add_arguments(parser)


def _train_main(args: argparse.Namespace) -> dict:
    from .config import from_args
    from .train import run
    return run(from_args(args))


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory written by `lore train`")
    parser.add_argument("--data", help="dataset (default: the one the run was trained on)")
    parser.add_argument("--format", help="dataset format (default: the run's)")
    parser.add_argument("--classnames", help="class-name file (default: the run's)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--batch-size", type=_count(1), default=64)
    parser.add_argument("--workers", type=_count(0), default=default_workers(),
                        help="data-loading worker processes (default: min(4, CPU cores))")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", help="backbone weights, if they moved since training")
    parser.add_argument("--out", help="directory for eval_<split>.json (default: the run directory)")


def _count(low: int):
    """An argparse type: an integer >= ``low`` (a bad value is one option error line)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _eval_main(args: argparse.Namespace) -> dict:
    from .checkpoint import load_run
    from .data import load_dataset
    from .distributed import DistInfo
    from .io import atomic_write_json, check_output_dir
    from .runs import resolve_device, saved_config
    from .train import Context, evaluate, run_data_config

    run_dir = Path(args.run)
    out = check_output_dir(args.out or run_dir, "--out" if args.out else "--run", allow_run=not args.out)
    device = resolve_device(args.device)
    model, meta = load_run(run_dir, device, backbone_checkpoint=args.checkpoint)
    cfg = saved_config(run_dir, batch_size=args.batch_size, workers=args.workers, device=str(device))
    data_path = args.data or meta.get("data") or cfg.data
    if cfg.dataset and not args.format:  # a run on a paper dataset reads it as distributed
        from .data.catalog import load_paper_dataset
        data = load_paper_dataset(cfg.dataset, data_path, cfg.split_file)
    else:
        data = load_dataset(data_path, args.format or cfg.format, args.classnames or cfg.classnames,
                            cfg.image_dir, cfg.holdout)
    if meta.get("classnames") and data.classnames != meta["classnames"]:
        raise LoreError(f"--data {data_path}: its {len(data.classnames)} classes do not match the "
                        f"{len(meta['classnames'])} the run was trained on (first differing: "
                        f"{_first_difference(data.classnames, meta['classnames'])}); pass the same "
                        "class list (--classnames)")
    samples = data.get(args.split)
    _warn_if_trained_on(run_dir, samples, args.split)
    ctx = Context(cfg, DistInfo(), device, run_dir, run_data_config(cfg, model.black_box))
    result = evaluate(ctx, model, samples)
    result.update(split=args.split, data=str(data_path))
    print(f"{meta['method']} on {data_path} [{args.split}]: top-1 {result['acc1']:.4f}  "
          f"top-5 {result['acc5']:.4f}  ({result['n']} images)")
    atomic_write_json(out / f"eval_{args.split}.json", result)
    return result


def _warn_if_trained_on(run_dir: Path, samples: list, split: str) -> None:
    """`eval --split val` on a run whose few-shot pool held val images scores images it trained on."""
    import json

    shots = run_dir / rundir.FEWSHOT
    if split == "test" or not shots.is_file():
        return
    try:
        trained = set(json.loads(shots.read_text(encoding="utf-8")).get("files") or [])
    except (ValueError, AttributeError):
        return
    seen = sum(p in trained for p, _ in samples)
    if seen:
        print(f"lore: warning: {seen} of the {len(samples)} {split} images were among the run's training "
              f"shots ({shots}); this accuracy is not a held-out score", file=sys.stderr)


def _first_difference(a: list[str], b: list[str]) -> str:
    for x, y in zip(a, b):
        if x != y:
            return f"{x!r} vs {y!r}"
    return f"{len(a)} vs {len(b)} classes"


class _Parser(argparse.ArgumentParser):
    """Option errors as one line (exit 2), like every other input error."""

    def error(self, message: str):
        where = "" if self.prog == "lore" else f"{self.prog}: "  # no "lore: error: lore: ..."
        self.exit(2, f"lore: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="lore", description="LORE: locality-aware prompt learning "
                                     "for frozen pre-trained ViTs")
    parser.add_argument("--version", action="version", version=f"lore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_command=name, _module=module)
    return parser


def _handlers(name: str, module: str):
    if name == "train":
        return _train_arguments, _train_main
    if name == "eval":
        return _eval_arguments, _eval_main
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("lore"):
            raise LoreError(f"`lore {name}` is not available in this version") from None
        raise
    return mod.add_arguments, mod.main


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    # the subcommand's own options are added only for the command being run (fast start-up)
    pre, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    add, _ = _handlers(pre._command, pre._module)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    add(sub_action.choices[pre._command])
    return parser.parse_args(argv)


def _clean_message(e: BaseException) -> str:
    """One line, also for errors re-raised from DataLoader worker processes."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split("LoreError: ", 1)[-1]
    return text.splitlines()[0] if text else type(e).__name__


def _error_line(message: str) -> None:
    # start on a fresh line: a progress bar cleared with \r would otherwise share it in log files
    print(f"\nlore: error: {message}" if _bar_active() else f"lore: error: {message}", file=sys.stderr)


def _bar_active() -> bool:
    tqdm = sys.modules.get("tqdm")
    instances = getattr(getattr(tqdm, "tqdm", None), "_instances", None)
    return bool(instances)


class _Terminated(BaseException):
    """SIGTERM (a scheduler's or `kill`'s stop), raised in the main thread like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    try:
        try:
            args = _parse(argv)
        except SystemExit as e:  # argparse: --help, or an option error already printed
            return int(e.code or 0)
        _, run = _handlers(args._command, args._module)
        run(args)
    except LoreError as e:
        _error_line(_clean_message(e))
        return 2
    except OSError as e:  # the environment said no (disk full, read-only, permissions): one line too
        if e.errno is None:
            raise
        if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename:
            _error_line(f"{e.filename} is a file where a folder is needed; choose another --out")
        else:
            _error_line(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return 2
    except KeyboardInterrupt:
        print("lore: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("lore: terminated (SIGTERM); files already written, checkpoints included, are intact",
              file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
