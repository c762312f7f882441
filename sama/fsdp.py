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
* ``sharding_strategy: FULL_SHARD`` (default): one 1-D mesh over all ranks, every rank holds
  ``1 / W`` of the transformer; ``HYBRID_SHARD``: a 2-D ``(replicate, shard)`` mesh, the weights
  sharded within groups of ``hybrid_shard_size`` ranks (default: the devices of one node) and
  replicated across groups (FSDP2's HSDP: reduce-scatter inside a group, all-reduce across);
* ``cpu_offload: true``: FSDP2's ``CPUOffloadPolicy``, the sharded parameters, their gradients
  and the optimizer states live in host memory (pinned on GPU machines), and each unit is copied
  to the device for its forward and backward; the optimizer steps on the CPU.

Checkpoints: ``save_distributed_checkpoint=True`` writes a folder per checkpoint (each rank its
shards, ``torch.distributed.checkpoint``); ``False`` gathers a full single-file checkpoint on
rank 0 (loadable by ``SamaModule.load_from_checkpoint`` / ``sama edit --checkpoint``).
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.init import _materialize_distributed_module
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from callbacks.ema import RAW_PREFIX
from sama.checkpoint_files import load_checkpoint_file
from sama.files import atomic_write

__all__ = [
    "SHARDING_STRATEGIES",
    "SamaFSDPStrategy",
    "consolidate_checkpoint",
    "full_state_dict",
    "shard_sama_module",
]

_METADATA_NAME = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME


def shard_sama_module(
    module: nn.Module, mesh: Any, reshard_after_forward: bool = True, cpu_offload: bool = False
) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to ``module.model`` (a ``SamaTransformer``): one unit per Wan
    block, then the root unit. ``mesh``: 1-D (full shard) or 2-D ``(replicate, shard)``
    (hybrid shard); ``cpu_offload``: ``CPUOffloadPolicy``. Idempotent (an already sharded
    model is left alone)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

    model = module.model
    if isinstance(model, FSDPModule):
        return module
    options: dict[str, Any] = {
        "mesh": mesh,
        "reshard_after_forward": reshard_after_forward,
        # pinned host memory needs an accelerator; on a CPU mesh there is nothing to copy
        "offload_policy": CPUOffloadPolicy(pin_memory=mesh.device_type != "cpu")
        if cpu_offload
        else OffloadPolicy(),
    }
    for block in model.wan.blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    return module


SHARDING_STRATEGIES = ("FULL_SHARD", "HYBRID_SHARD")


class SamaFSDPStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with FSDP2 applied to ``SamaModule.model`` (see module docstring).

    Args:
        save_distributed_checkpoint: a sharded checkpoint folder (True) or a full file (False).
        reshard_after_forward: free the gathered block weights after forward (ZeRO-3, True) or
            keep them until backward (ZeRO-2-like, more memory, less communication).
        sharding_strategy: ``FULL_SHARD`` (shard over all ranks) or ``HYBRID_SHARD`` (shard
            within groups of ``hybrid_shard_size`` ranks, replicate across them).
        hybrid_shard_size: ranks per shard group of ``HYBRID_SHARD``; default the devices of one
            node. Must divide the world size.
        cpu_offload: keep sharded parameters, gradients and optimizer states in host memory.
        process_group_backend / timeout: as ``ModelParallelStrategy`` (gloo on CPU, NCCL on GPU).
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        reshard_after_forward: bool = True,
        sharding_strategy: Literal["FULL_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        hybrid_shard_size: int | None = None,
        cpu_offload: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        if sharding_strategy not in SHARDING_STRATEGIES:
            raise ValueError(
                f"SamaFSDPStrategy: sharding_strategy must be one of {SHARDING_STRATEGIES}, got "
                f"{sharding_strategy!r}"
            )
        if hybrid_shard_size is not None and (
            sharding_strategy != "HYBRID_SHARD" or hybrid_shard_size < 1
        ):
            raise ValueError(
                "SamaFSDPStrategy: hybrid_shard_size is the ranks per group of HYBRID_SHARD, a "
                f"positive integer; got {hybrid_shard_size!r} with {sharding_strategy}"
            )
        self.sharding_strategy = sharding_strategy
        self.hybrid_shard_size = hybrid_shard_size
        self.cpu_offload = cpu_offload
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

    def shard_mesh(self) -> Any:
        """The mesh ``fully_shard`` gets: the 1-D data-parallel mesh (``FULL_SHARD``) or a 2-D
        ``(replicate, shard)`` mesh of ``world / size`` groups of ``size`` ranks
        (``HYBRID_SHARD``)."""
        if self.sharding_strategy == "FULL_SHARD":
            return self.data_parallel_mesh
        from torch.distributed.device_mesh import init_device_mesh

        world = self.world_size
        size = self.hybrid_shard_size or self.num_processes
        if world % size:
            raise ValueError(
                f"SamaFSDPStrategy: hybrid_shard_size {size} does not divide the {world} ranks; "
                "give a divisor of devices x num_nodes"
            )
        return init_device_mesh(
            self.root_device.type, (world // size, size), mesh_dim_names=("replicate", "shard")
        )

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
        if self.cpu_offload:
            # fully_shard moves the module to the mesh's device, then offloads the shards to
            # host memory: the module must not be moved after sharding, nor its optimizer
            self.model.to(self.root_device)
        shard_sama_module(
            self.lightning_module, self.shard_mesh(), self.reshard_after_forward, self.cpu_offload
        )
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        if not self.cpu_offload:
            self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING and not self.cpu_offload:
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


def consolidate_checkpoint(folder: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Turn a sharded checkpoint folder of :class:`SamaFSDPStrategy` into one Lightning
    checkpoint file, in a single process (no process group).

    Lightning's ``consolidate_checkpoint`` tool expects FSDP1's layout (``KeyError: 'model'`` on
    these folders), hence this one. The file has ``meta.pt``'s fields plus the full
    ``state_dict``; a ``ShardedEMA`` run's raw shards (``_sama_raw.<key>``) become
    ``current_model_state`` as in a full checkpoint. The optimizer states are left out: the
    file is for ``init_from``, ``load_from_checkpoint``, ``sama edit`` and exports, not for
    resuming (resume from the folder itself).
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder, output = Path(folder), Path(output)
    if not (folder / _METADATA_NAME).is_file():
        raise FileNotFoundError(
            f"{folder}: not a sharded checkpoint folder (no {_METADATA_NAME}); a full "
            "checkpoint file needs no consolidation"
        )
    with tempfile.TemporaryDirectory(dir=output.parent if output.parent.is_dir() else None) as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "full.pt")
        tensors = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)
    # weights only, like every checkpoint file sama reads: a pickled payload is refused
    checkpoint = load_checkpoint_file(folder / _METADATA_NAME, what="sharded checkpoint metadata")
    state = tensors["state_dict"]
    raw = {k[len(RAW_PREFIX) :]: v for k, v in state.items() if k.startswith(RAW_PREFIX)}
    weights = {k: v for k, v in state.items() if not k.startswith(RAW_PREFIX)}
    checkpoint["state_dict"] = weights
    if raw:
        checkpoint["current_model_state"] = {**weights, **raw}
    checkpoint.pop("optimizer_states", None)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda tmp_path: torch.save(checkpoint, tmp_path))
    return output


def _main(argv: list[str] | None = None) -> int:
    """``python -m sama.fsdp FOLDER OUTPUT.ckpt``: :func:`consolidate_checkpoint`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m sama.fsdp",
        description="Consolidate a SamaFSDPStrategy sharded checkpoint folder into one file.",
    )
    parser.add_argument("folder")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    print(consolidate_checkpoint(args.folder, args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
