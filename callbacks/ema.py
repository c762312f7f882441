"""ShardedEMA: an exponential moving average of the weights that works on sharded parameters.

Each rank keeps an EMA copy of exactly the parameter tensors it holds: under FSDP2
(``ModelParallelStrategy`` + ``fully_shard``, parameters are ``DTensor``) the local shards
``param.to_local()``; under DDP or on one device the full tensors. The update after each optimizer
step is ``ema = decay * ema + (1 - decay) * param`` with ``torch._foreach_mul_`` /
``torch._foreach_add_`` on the local tensors only: no gather, no communication.

It follows Lightning's ``EMAWeightAveraging`` (same decay formula, same step bookkeeping: the
first update, after optimizer step ``update_starting_at_step`` (or the first one), copies the
weights; later ones average every ``update_every_n_steps`` steps; validation runs on the EMA
weights; at the end of ``fit`` the EMA weights are copied into the model, so an export after
training is the EMA). Unlike it, only the parameters that require grad are averaged (a frozen
weight's EMA equals the weight, and LoRA's frozen base would double the memory otherwise), and
buffers are not (SAMA has no running statistics).

Checkpoints (the same convention as ``EMAWeightAveraging``: ``state_dict`` holds the EMA weights,
so ``init_from``, ``sama test`` and a consolidated export read the EMA):

* unsharded parameters: ``state_dict[key]`` = EMA, ``current_model_state`` = the raw weights;
* FSDP2, full checkpoint (``save_distributed_checkpoint: false``): the same, the EMA shards are
  gathered into full tensors at save time only;
* FSDP2, sharded checkpoint (a folder): ``state_dict[key]`` = the EMA ``DTensor`` shards and
  ``state_dict["_sama_raw." + key]`` = the raw shards, both written per rank by
  ``torch.distributed.checkpoint``; on resume the strategy loads the EMA into the model and this
  callback reads the raw shards back into the parameters (and keeps the EMA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

__all__ = ["ShardedEMA", "RAW_PREFIX"]

#: Key prefix of the raw (non-averaged) weights inside a sharded checkpoint's state_dict.
RAW_PREFIX = "_sama_raw."


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def _local(param: Tensor) -> Tensor:
    """The tensor this rank holds of ``param``: its local shard for a DTensor, else itself."""
    dtensor = _dtensor_type()
    data = param.detach()
    if dtensor is not None and isinstance(data, dtensor):
        return data.to_local()
    return data


def _is_sharded(param: Tensor) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(param, dtensor)


class ShardedEMA(Callback):
    """EMA of the trainable weights, on whatever shard each rank holds (see module docstring).

    Args:
        decay: ``ema = decay * ema + (1 - decay) * param`` at each update (0 <= decay < 1).
        update_every_n_steps: average after every n-th optimizer step (``step_idx % n == 0``,
            zero-based, as ``EMAWeightAveraging``).
        update_starting_at_step: first zero-based optimizer step that updates (``None``: 0).
        swap_for_validation: run validation (and test inside ``fit``) on the EMA weights.
    """

    def __init__(
        self,
        decay: float = 0.9998,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        swap_for_validation: bool = True,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ShardedEMA: decay must be in [0, 1), got {decay}")
        if update_every_n_steps < 1:
            raise ValueError(
                f"ShardedEMA: update_every_n_steps must be >= 1, got {update_every_n_steps}"
            )
        self.decay = float(decay)
        self.update_every_n_steps = int(update_every_n_steps)
        self.update_starting_at_step = update_starting_at_step
        self.swap_for_validation = swap_for_validation
        self._names: list[str] = []
        self._params: list[Tensor] = []
        self._ema: list[Tensor] | None = None
        self._updates = 0
        self._latest_update_step = 0
        self._pending: dict[str, Any] | None = None
        self._swapped = False

    # ------------------------------------------------------------------ the average itself
    @property
    def ema_tensors(self) -> dict[str, Tensor]:
        """``{parameter name: this rank's EMA tensor}`` (local shards under FSDP2)."""
        if self._ema is None:
            return {}
        return dict(zip(self._names, self._ema, strict=True))

    @property
    def num_updates(self) -> int:
        return self._updates

    def _build(self, pl_module: pl.LightningModule) -> None:
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("ShardedEMA: the module has no trainable parameters to average")
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        with torch.no_grad():
            self._ema = [_local(p).clone() for p in self._params]

    def _locals(self) -> list[Tensor]:
        return [_local(p) for p in self._params]

    def should_update(self, step_idx: int) -> bool:
        """Whether to average after zero-based optimizer step ``step_idx``."""
        start = self.update_starting_at_step
        return (start is None or step_idx >= start) and step_idx % self.update_every_n_steps == 0

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step on the local tensors (the first one copies)."""
        assert self._ema is not None
        current = self._locals()
        if self._updates == 0:
            torch._foreach_copy_(self._ema, current)
        else:
            torch._foreach_mul_(self._ema, self.decay)
            torch._foreach_add_(self._ema, current, alpha=1.0 - self.decay)
        self._updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's (local) weights and the EMA in place."""
        assert self._ema is not None
        for ema, current in zip(self._ema, self._locals(), strict=True):
            tmp = current.clone()
            current.copy_(ema)
            ema.copy_(tmp)
        self._swapped = not self._swapped

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Overwrite the model's (local) weights with the EMA."""
        assert self._ema is not None
        torch._foreach_copy_(self._locals(), self._ema)

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError(
                "ShardedEMA: FSDP1 (FSDPStrategy) flattens parameters, which this EMA cannot "
                "checkpoint; use sama.fsdp.SamaFSDPStrategy (FSDP2) instead"
            )
        self._build(pl_module)
        if self._pending is not None:
            self._apply_pending(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx):
            self.update()
            self._latest_update_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ema is not None:
            self.copy_to_model()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ema is not None and self.swap_for_validation and not self._swapped:
            self.swap()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self.swap()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "latest_update_step": self._latest_update_step,
            "updates": self._updates,
            "decay": self.decay,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = int(state_dict["latest_update_step"])
        self._updates = int(state_dict["updates"])

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._ema is None:
            return  # outside fit: the model already holds what should be saved
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            return
        keys = [self._state_key(name) for name in self._names]
        ema_local = dict(zip(self._names, self._ema, strict=True))
        raw_local = dict(zip(self._names, self._locals(), strict=True))
        if self._swapped:  # saved during validation: the model holds the EMA right now
            ema_local, raw_local = raw_local, ema_local
        sharded = any(_is_sharded(p) for p in self._params)
        if sharded:
            from torch.distributed.tensor import DTensor

            def dtensor(local: Tensor, param: Tensor) -> Tensor:
                return DTensor.from_local(
                    local,
                    param.device_mesh,
                    param.placements,
                    shape=param.shape,
                    stride=param.stride(),
                    run_check=False,
                )

        if sharded and _is_dtensor_state(state):
            # a sharded (DCP) checkpoint: EMA shards as the weights, raw shards under a prefix
            for key, name, param in zip(keys, self._names, self._params, strict=True):
                on_cpu = state[key].device.type == "cpu"
                for out_key, local in ((key, ema_local[name]), (RAW_PREFIX + key, raw_local[name])):
                    value = dtensor(local.detach().clone(), param)
                    state[out_key] = value.cpu() if on_cpu else value
            return
        if sharded:
            # a full checkpoint of a sharded model: gather (a collective on every rank)
            ema_full = {
                key: dtensor(ema_local[n], p).full_tensor().cpu()
                for key, n, p in zip(keys, self._names, self._params, strict=True)
            }
            # the raw weights are the strategy's full state already, unless swapped in for
            # validation right now (then gather them too)
            raw_full = {
                key: dtensor(raw_local[n], p).full_tensor().cpu()
                if self._swapped
                else state.get(key)
                for key, n, p in zip(keys, self._names, self._params, strict=True)
            }
        else:
            ema_full = {key: ema_local[n] for key, n in zip(keys, self._names, strict=True)}
            raw_full = {key: raw_local[n] for key, n in zip(keys, self._names, strict=True)}
        if not state:
            return  # a non-zero rank of a full checkpoint: rank 0 writes it
        current = dict(state)
        for key in keys:
            if key in state:
                device = state[key].device
                if raw_full[key] is not state[key]:
                    current[key] = raw_full[key].detach().clone().to(device)
                state[key] = ema_full[key].detach().clone().to(device)
        checkpoint["current_model_state"] = current

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        path = trainer.ckpt_path
        if path is not None and Path(path).is_dir():
            self._pending = {"kind": "sharded", "path": str(path)}
        elif "current_model_state" in checkpoint:
            # the strategy has loaded state_dict (the EMA) into the model already
            self._pending = {"kind": "full", "raw": checkpoint["current_model_state"]}
        else:
            self._pending = None  # no EMA in the checkpoint: the EMA starts from the weights
            return
        if self._ema is not None:  # strategies that restore after setup (FSDP2)
            self._apply_pending(trainer, pl_module)

    def _state_key(self, name: str) -> str:
        return name

    @torch.no_grad()
    def _apply_pending(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore from the stashed checkpoint: the model was loaded with the EMA weights (the
        checkpoint's state_dict); copy them into the EMA, then put the raw weights back."""
        pending, self._pending = self._pending, None
        assert pending is not None and self._ema is not None
        torch._foreach_copy_(self._ema, self._locals())
        if pending["kind"] == "sharded":
            import torch.distributed.checkpoint as dcp

            template = {RAW_PREFIX + n: p for n, p in zip(self._names, self._params, strict=True)}
            dcp.load({"state_dict": template}, checkpoint_id=pending["path"])
            return
        raw = pending["raw"]
        if any(_is_sharded(p) for p in self._params):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            set_model_state_dict(
                pl_module,
                {k: v for k, v in raw.items()},
                options=StateDictOptions(full_state_dict=True, strict=False),
            )
        else:
            pl_module.load_state_dict(raw, strict=False)


def _is_dtensor_state(state: dict[str, Any]) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(v, dtensor) for v in state.values())
