"""Data-parallel training on PyTorch's own engine: ``torchrun`` + ``DistributedDataParallel``.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), :func:`init_from_env` joins the process group: NCCL with one GPU per process when
CUDA is used, gloo on the CPU. Without those variables it returns the single-process context, and
everything runs exactly as before. Each rank trains on its shard of every shuffled epoch
(:func:`sabr.train.batches` with ``shard``); validation figures are summed over all ranks before
SABR decides anything, so every rank takes the same decision. See ``docs/distributed.md``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError
from .train import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) job.

    Attributes:
        rank: global rank (0 writes the files).
        world_size: number of processes; 1 means no distribution at all.
        local_rank: rank on this node (selects the GPU).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (single process).
        device: this process's training device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and shows progress."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` element-wise over all ranks (in float64); identity in a single process."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank."""
        if not self.enabled:
            return text or ""
        box = [text]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (only its trainable parameters are synchronised)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group ``torchrun`` describes in the environment, or return the single-process context.

    Args:
        device: ``"auto"`` (one GPU per process when CUDA is available, else CPU), ``"cpu"`` or ``"cuda"``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} under torchrun but no CUDA GPU is visible; use --device cpu (gloo).")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) on this node; "
                              "set torchrun --nproc_per_node to at most the number of GPUs.")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("distributed: rank %d of %d (%s, %s)", rank, world, backend, dev)
    return DistContext(rank, world, local_rank, backend, dev)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (after a last barrier)."""
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
