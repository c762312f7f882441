"""The evaluator of ``sama test`` / ``sama predict`` on a benchmark: a Lightning callback.

With an :class:`~datamodules.eval_sets.EvalDataModule` each batch is one
:class:`~datamodules.eval_sets.EvalItem`; the module's ``test_step`` / ``predict_step`` leave
such batches alone and :class:`Evaluator` does the work:

- ``sama test``: edit each item with :class:`~sama.pipeline.EditPipeline` (settings: the model's
  sampler defaults updated by the datamodule's ``sampling``), score it and the identity / oracle
  baselines with :class:`~sama.evaluation.scorer.EditScorer` (resumable per-sample log), log
  ``test/<metric>``, and at the end write ``results.json`` + ``report.html``;
- ``sama predict``: write each edit to ``output_dir/predictions/<id>.mp4`` (for
  ``sama benchmark score``).

``SamaCLI`` adds an ``Evaluator`` by itself when the datamodule is an ``EvalDataModule`` and the
trainer's callbacks hold none. Videos are uint8 ``(T, H, W, 3)`` throughout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from datamodules.eval_sets import EvalDataModule, EvalItem
from sama.evaluation.results import ResultsLog
from sama.evaluation.scorer import EditScorer
from sama.files import sha256_file
from sama.flow import SamplingSettings
from sama.io import write_video
from sama.pipeline import EditPipeline

__all__ = ["Evaluator", "checkpoint_sha256"]


def checkpoint_sha256(checkpoint: str | None) -> str | None:
    """SHA-256 of a checkpoint file, or of an export directory's ``SHA256SUMS``; else None."""
    if not checkpoint:
        return None
    path = Path(checkpoint)
    if path.is_file():
        return sha256_file(path)
    if (path / "SHA256SUMS").is_file():
        return sha256_file(path / "SHA256SUMS")
    return None


class Evaluator(pl.Callback):
    """Edits, scores and reports the items of an ``EvalDataModule`` (see the module docstring).

    Under DDP each rank logs its records to ``output_dir/rank<r>``; rank 0 merges them and
    writes the report. Finished samples are skipped on a re-run with the same settings and
    checkpoint. Does nothing when the datamodule is not an ``EvalDataModule``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scorer: EditScorer | None = None
        self.pipeline: EditPipeline | None = None
        self.settings: SamplingSettings | None = None
        self.paths: tuple[Path, Path] | None = None

    # ------------------------------------------------------------------ shared
    @staticmethod
    def _datamodule(trainer: pl.Trainer) -> EvalDataModule | None:
        datamodule = getattr(trainer, "datamodule", None)
        return datamodule if isinstance(datamodule, EvalDataModule) else None

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> EvalDataModule | None:
        datamodule = self._datamodule(trainer)
        if datamodule is None:
            return None
        self.pipeline = EditPipeline.from_module(pl_module, device=pl_module.device)
        self.settings = datamodule.sampling_settings(self.pipeline.settings)
        return datamodule

    def _edit(self, item: EvalItem) -> Any:
        assert self.pipeline is not None and self.settings is not None
        return self.pipeline(
            item.source, item.instruction, fps=item.fps, settings=self.settings, progress=False
        )

    # ------------------------------------------------------------------ sama test
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.scorer, self.paths = None, None
        datamodule = self._start(trainer, pl_module)
        if datamodule is None:
            return
        assert self.settings is not None
        out_dir = Path(datamodule.output_dir)
        rank_dir = out_dir if trainer.world_size == 1 else out_dir / f"rank{trainer.global_rank}"
        # a Lightning checkpoint, or the export directory the model was built from
        ckpt = getattr(trainer, "ckpt_path", None) or pl_module.hparams.get("pretrained")
        config = {
            **datamodule.benchmark.describe(),
            **self.settings.to_dict(),
            "checkpoint": ckpt,
        }
        self.scorer = self._scorer(datamodule, rank_dir, config, checkpoint_sha256(ckpt))

    @staticmethod
    def _scorer(
        datamodule: EvalDataModule,
        out_dir: Path,
        config: dict[str, Any],
        checkpoint_hash: str | None,
    ) -> EditScorer:
        return EditScorer(
            out_dir,
            has_target=datamodule.benchmark.has_target,
            has_mask=datamodule.benchmark.has_mask,
            clip_path=datamodule.clip_path,
            dino_path=datamodule.dino_path,
            config=config,
            checkpoint_hash=checkpoint_hash,
        )

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Edit and score one item (skipped when already logged); logs ``test/<metric>``."""
        if self.scorer is None or not isinstance(batch, EvalItem):
            return
        # Lightning runs hooks under inference mode; the metrics memoize by tensor version
        with torch.inference_mode(False), torch.no_grad():
            self._test_item(trainer, pl_module, batch)

    def _test_item(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: EvalItem
    ) -> None:
        assert self.scorer is not None
        self.scorer.add_baselines(batch)
        if self.scorer.done(batch.id):
            return
        result = self._edit(batch)
        edits = Path(trainer.datamodule.output_dir) / "edits"
        write_video(edits / f"{batch.id}.mp4", result.video, result.fps)
        record = self.scorer.add(batch, result.video)
        for name, value in record["metrics"].items():
            if value == value:  # NaN marks a sample a metric excludes
                pl_module.log(f"test/{name}", value, batch_size=1, on_epoch=True, sync_dist=True)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Merge the ranks' logs and write ``results.json`` / ``report.html`` (rank 0)."""
        if self.scorer is None:
            return
        datamodule = self._datamodule(trainer)
        assert datamodule is not None
        trainer.strategy.barrier("sama-evaluator-finish")
        scorer, self.scorer = self.scorer, None
        if not trainer.is_global_zero:
            return
        if trainer.world_size > 1:
            out_dir = Path(datamodule.output_dir)
            merged = self._scorer(datamodule, out_dir, scorer.config, scorer.checkpoint_hash)
            for rank in range(trainer.world_size):
                for record in ResultsLog(out_dir / f"rank{rank}").records():
                    key = (str(record["id"]), record.get("system") or "model")
                    if not merged.done(*key):
                        merged.log.append(record)
                        merged._done.add(key)
                for thumb in (out_dir / f"rank{rank}" / "thumbs").glob("*.png"):
                    target = merged.thumbs / thumb.name
                    if not target.exists():
                        target.write_bytes(thumb.read_bytes())
            merged.notices = scorer.notices
            scorer = merged
        self.paths = scorer.finish()
        print(f"results: {self.paths[0]}\nreport:  {self.paths[1]}")

    # ------------------------------------------------------------------ sama predict
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write the item's edit to ``output_dir/predictions/<id>.mp4``."""
        datamodule = self._datamodule(trainer)
        if datamodule is None or self.pipeline is None or not isinstance(batch, EvalItem):
            return
        result = self._edit(batch)
        path = Path(datamodule.output_dir) / "predictions" / f"{batch.id}.mp4"
        write_video(path, result.video, result.fps)
