"""torch.distributed glue: torchrun detection, rank-0-only output, metric reduction."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK); NCCL on GPUs,
    gloo on CPU. Without torchrun this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank)


def world_size() -> int:
    """Processes in the default group (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum over processes (in place where ``t`` is contiguous; use the returned tensor)."""
    if info.enabled:
        t = t.contiguous()  # gloo reduces a strided view wrongly, without an error
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    """A new tensor: the mean of ``t`` over all processes."""
    # a contiguous copy: autograd may hand out strided views, which gloo reduces wrongly, silently
    out = t.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out)
    return out.div_(world_size())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all processes on CPU (gloo), where torch's
    SyncBatchNorm refuses to run.

    Training BatchNorm then normalises with the statistics of the global batch in every process,
    so N processes compute what one process computes (LORE's White Box normalises over the
    batch). Per-channel sums, then centred sums of squares, are all-reduced differentiably;
    BatchNorm's definitions are kept: biased variance for normalising, unbiased for the running
    estimate.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = torch.full((1,), x.numel() // C, dtype=x.dtype)
        sums = dist_nn.all_reduce(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:C] / n
        shape = [1, C] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        # two passes, as single-process BatchNorm: E[x^2] - E[x]^2 cancels badly in float32
        var = dist_nn.all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * n / (n - 1), m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` normalising over the global batch: torch's
    SyncBatchNorm on GPUs, :class:`CPUSyncBatchNorm` on CPU (sharing the layer's parameters and
    running statistics)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        sync = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        # the same Parameter and buffer objects, as torch's conversion: the optimiser holds them
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
