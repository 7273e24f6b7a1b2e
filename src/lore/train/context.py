"""The per-run context every training and evaluation pass reads: options, processes, device,
run directory, the run's data config; and the mixed-precision choice."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..distributed import DistInfo


@dataclass
class Context:
    """One run: its options, its process group, device, directory and test-transform data config."""
    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    out: Path
    data_config: dict = field(default_factory=dict)
    # what a run computes once and reads again (the backbone's fingerprint, cached features)
    memo: dict = field(default_factory=dict)

    def log(self, msg: str) -> None:
        if self.info.main:
            tqdm.write(msg, file=sys.stderr)


def warn_amp(cfg: TrainConfig, device: torch.device) -> None:
    """Said once when a run or a prediction starts: --amp fp16 off CUDA is float32, not fp16."""
    if cfg.amp == "fp16" and device.type != "cuda":
        print(f"lore: warning: --amp fp16 runs on CUDA only; on {device.type} this runs in float32 "
              "(--amp bf16 lowers the precision on a CPU)", file=sys.stderr)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    # on a CPU only an explicit --amp bf16 (fast where the CPU has AMX / AVX512-BF16 units)
    """The autocast dtype of --amp on this device (None: full precision)."""
    if cfg.amp == "none" or (device.type != "cuda" and cfg.amp != "bf16"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16
