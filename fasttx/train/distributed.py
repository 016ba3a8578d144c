"""Data-parallel training through PyTorch's own engine: torchrun, DDP and FSDP.

    world = init_distributed("cuda")              # reads torchrun's RANK / WORLD_SIZE
    train_module = wrap_model(model, world)       # DDP (or FSDP) of the model's loss
    out = train_module((src, tgt))                # model.loss(src, tgt), gradients synced
    ...
    world.close()

Launched without torchrun, :func:`init_distributed` returns a single-process
:class:`World` and :func:`wrap_model` wraps nothing but the loss. Under torchrun each rank
trains on its own share of every step's batches; gradients are averaged by DDP (or
reduce-scattered by FSDP, which shards parameters, gradients and optimiser state across the
ranks: the choice for the big preset). Collective backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["LossForward", "World", "full_state", "gradient_sync", "init_distributed",
           "load_full_state", "unwrap", "wrap_model"]


@dataclass
class World:
    """The processes of one run. ``rank`` 0 is the main process: it alone prints, logs and
    writes checkpoints."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (one collective)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def init_distributed(device: str | torch.device | None) -> World:
    """The :class:`World` of this process; joins torchrun's process group when launched by
    it (``WORLD_SIZE`` > 1). ``device``: "cpu", "cuda" (each rank takes cuda:LOCAL_RANK),
    or None for CUDA when available."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return World(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return World(rank=rank, world_size=world_size, device=device)


class LossForward(nn.Module):
    """``forward(batch)`` is the model's training loss, so that DDP, which synchronises
    gradients only for calls of its module's ``forward``, sees it. ``batch`` is a
    (src, tgt) pair of padded token ids or a :class:`~fasttx.models.PackedBatch`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        if isinstance(batch, tuple):
            return self.model.loss(*batch)
        return self.model.loss_packed(batch)


def wrap_model(model: nn.Module, world: World, fsdp: bool = False) -> nn.Module:
    """The module whose ``forward(batch)`` returns the training loss of ``model``.

    One process: :class:`LossForward` of the model. torchrun: DistributedDataParallel of it,
    or with ``fsdp`` FSDP (``fully_shard``) on every encoder and decoder layer and on the
    whole model, whose ``loss``, ``loss_packed`` and ``generate`` then gather the shards."""
    if world.distributed and fsdp:
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for layer in [*model.encoder, *model.decoder]:
            fully_shard(layer)
        fully_shard(model)
        for method in ("loss", "loss_packed", "generate"):
            register_fsdp_forward_method(model, method)
        return LossForward(model)
    if world.distributed:
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(LossForward(model), device_ids=device_ids)
    return LossForward(model)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool):
    """Within the block, backward passes of ``module`` (from :func:`wrap_model`) reduce
    gradients across ranks only when ``enabled``: accumulation micro-batches skip it."""
    if isinstance(module, nn.parallel.DistributedDataParallel) and not enabled:
        with module.no_sync():
            yield
        return
    model = unwrap(module)
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP
        model.set_requires_gradient_sync(enabled)
    yield


def unwrap(module: nn.Module) -> nn.Module:
    """The Seq2SeqTransformer inside what :func:`wrap_model` returned."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    return module.model if isinstance(module, LossForward) else module


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimiser state dicts on the CPU, whatever the wrapping.

    A collective under FSDP: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(unwrap(model), optimizer, options=options)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Loads what :func:`full_state` returned (every rank passes the same full dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(unwrap(model), optimizer, model_state_dict=model_state,
                   optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))
