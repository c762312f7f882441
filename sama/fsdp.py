"""FSDP2 for SAMA through Lightning: ``SamaFSDPStrategy``.

Lightning's ``FSDPStrategy`` (FSDP1) refuses a CPU accelerator ("The strategy `fsdp` requires a
GPU accelerator"), so it can be neither tested nor used here without GPUs; FSDP2
(``torch.distributed.fsdp.fully_shard`` on DTensor parameters) runs on CPU with gloo and on GPUs
with NCCL. Lightning drives FSDP2 through ``ModelParallelStrategy``, which expects the
LightningModule to shard itself in ``configure_model``; this subclass does the sharding for
:class:`~sama.module.SamaModule` instead (a module-level ``configure_model`` would make
``EMAWeightAveraging`` warn on every unsharded run):

* every ``WanTransformerBlock`` of ``module.model.wan.blocks`` is one FSDP unit, and the rest of
  the transformer (patch / condition embedders, output head, SAMA's segment embedding,
  semantic projector and head, LoRA matrices included) is the root unit on ``module.model``;
* the frozen encoders are not registered submodules: they stay whole on every rank;
* a pure data-parallel 1-D mesh over all ranks (``tensor_parallel_size`` is 1).

Checkpoints: ``save_distributed_checkpoint=True`` writes a folder per checkpoint (each rank its
shards, ``torch.distributed.checkpoint``); ``False`` gathers a full single-file checkpoint on
rank 0 (loadable by ``SamaModule.load_from_checkpoint`` / ``sama edit --checkpoint``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.init import _materialize_distributed_module
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

__all__ = ["SamaFSDPStrategy", "shard_sama_module"]


def shard_sama_module(
    module: nn.Module, mesh: Any, reshard_after_forward: bool = True
) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to ``module.model`` (a ``SamaTransformer``): one unit per Wan
    block, then the root unit. Idempotent (an already sharded model is left alone)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    model = module.model
    if isinstance(model, FSDPModule):
        return module
    for block in model.wan.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return module


class SamaFSDPStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with FSDP2 applied to ``SamaModule.model`` (see module docstring).

    Args:
        save_distributed_checkpoint: a sharded checkpoint folder (True) or a full file (False).
        reshard_after_forward: free the gathered block weights after forward (ZeRO-3, True) or
            keep them until backward (ZeRO-2-like, more memory, less communication).
        process_group_backend / timeout: as ``ModelParallelStrategy`` (gloo on CPU, NCCL on GPU).
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        reshard_after_forward: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # pure FSDP: every rank is one data-parallel replica group member
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    @property
    def data_parallel_mesh(self) -> Any:
        return self.device_mesh["data_parallel"]

    def setup(self, trainer: pl.Trainer) -> None:
        """As ``ModelParallelStrategy.setup``, with the sharding done here instead of in the
        module's ``configure_model``."""
        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        if not hasattr(self.lightning_module, "model"):
            raise TypeError(
                f"{type(self).__name__} shards SamaModule.model; {type(self.lightning_module)} "
                "has no 'model' attribute"
            )
        shard_sama_module(
            self.lightning_module, self.data_parallel_mesh, self.reshard_after_forward
        )
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)

    @property
    def sharding(self) -> Literal["fsdp2"]:
        return "fsdp2"


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a module with FSDP2 parameters, on CPU, on rank 0
    (empty on the other ranks); a collective: call it on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
