"""EditPipeline: source video + instruction -> edited video.

The pipeline runs the same :class:`~sama.model.SamaTransformer` that training uses:

1. the source (uint8 ``(T, H, W, 3)``) is **bucketed** to what the model accepts: the frame
   count is snapped down to the codec's rule (``1 + k * temporal_factor``; 4k+1 for Wan's VAE)
   after an optional ``frames`` cap, and the size is resized to ``size`` or to the nearest
   multiple of the latent grid unit (codec spatial factor x patch size) that keeps the area;
2. the source is encoded by the frozen codec, the instruction (with the prompt prefix of the
   released code, ``"[Video edit] "``) and the negative prompt by the text encoder;
3. :class:`~sama.flow.FlowSampler` denoises the target latents and the semantic tokens jointly
   from noise with classifier-free guidance (text scale; optional source scale);
4. the result is decoded and **restored** to the source's height and width (bicubic resize of
   the decoded frames). The frame count stays the bucketed one: frames beyond the last valid
   ``1 + k * temporal_factor`` are not invented, so the output can be up to
   ``temporal_factor - 1`` frames shorter than the input. The output fps is the source's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from sama.flow import COND_FULL, COND_NO_SOURCE, FlowSampler
from sama.io import from_model_video, read_video, to_model_video, write_video
from sama.model import SamaTransformer

__all__ = [
    "EditPipeline",
    "EditResult",
    "PROMPT_PREFIX",
    "NEGATIVE_PROMPT",
    "bucket_shape",
    "edit_main",
]

PROMPT_PREFIX = "[Video edit] "
NEGATIVE_PROMPT = "[Video edit]"
SEMANTIC_TOKENS_PER_FRAME = 65


@dataclass
class EditResult:
    """An edited clip: ``video`` uint8 ``(T, H, W, 3)`` at ``fps``, and how it was bucketed."""

    video: Tensor
    fps: float
    model_frames: int
    model_size: tuple[int, int]


def bucket_shape(
    frames: int,
    height: int,
    width: int,
    *,
    temporal_factor: int,
    spatial_unit: int,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[int, tuple[int, int]]:
    """The ``(frames, (H, W))`` a clip is processed at.

    Frames: ``min(frames, max_frames)`` snapped down to ``1 + k * temporal_factor``.
    Size: ``size`` when given (each side must be a multiple of ``spatial_unit``), otherwise the
    source size rounded to multiples of ``spatial_unit`` (at least one unit per side).
    """
    if frames < 1:
        raise ValueError("bucket_shape: the clip has no frames")
    n = min(frames, max_frames) if max_frames else frames
    n = 1 + ((n - 1) // temporal_factor) * temporal_factor
    if size is not None:
        h, w = size
        if h % spatial_unit or w % spatial_unit:
            raise ValueError(
                f"--size {h}x{w}: both sides must be multiples of {spatial_unit} "
                "(codec spatial factor x patch size)"
            )
        return n, (h, w)
    h = max(spatial_unit, int(height / spatial_unit + 0.5) * spatial_unit)
    w = max(spatial_unit, int(width / spatial_unit + 0.5) * spatial_unit)
    return n, (h, w)


def _resize_video(video: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize float ``(B, C, T, H, W)`` frames to ``size`` (bicubic, antialiased)."""
    b, c, t, h, w = video.shape
    if (h, w) == tuple(size):
        return video
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=size, mode="bicubic", antialias=True, align_corners=False)
    return frames.reshape(b, t, c, *size).permute(0, 2, 1, 3, 4).clamp(-1, 1)


class EditPipeline:
    """Instruction-guided video editing with a trained SAMA model.

    Args:
        model: the trained transformer (eval mode is set here).
        codec: frozen video codec (``encode``/``decode``, ``temporal_factor``,
            ``spatial_factor``).
        text_encoder: frozen text encoder (``encode(texts) -> (states, mask)``).
        anchor_frames: number of anchor frames the model was trained with (65 semantic tokens
            each); 0 samples no semantic tokens.
        prompt_prefix / negative_prompt: as in the released inference code.
    """

    def __init__(
        self,
        model: SamaTransformer,
        codec: Any,
        text_encoder: Any,
        *,
        anchor_frames: int = 1,
        prompt_prefix: str = PROMPT_PREFIX,
        negative_prompt: str = NEGATIVE_PROMPT,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.codec = codec.to(self.device) if hasattr(codec, "to") else codec
        self.text_encoder = (
            text_encoder.to(self.device) if hasattr(text_encoder, "to") else text_encoder
        )
        self.anchor_frames = int(anchor_frames)
        self.prompt_prefix = prompt_prefix
        self.negative_prompt = negative_prompt

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_module(cls, module: Any, **kwargs: Any) -> EditPipeline:
        """Build from a :class:`sama.module.SamaModule` (its model and frozen encoders)."""
        codec, text_encoder, _ = module.encoders
        anchor = module.hparams.get("anchor_frames", 1)
        if module.hparams.get("semantic_weight", 0.1) == 0:
            anchor = 0
        kwargs.setdefault("anchor_frames", anchor)
        return cls(module.model, codec, text_encoder, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], **kwargs: Any) -> EditPipeline:
        """Load a Lightning checkpoint (``.ckpt``) or a directory written by ``SamaModule.export``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.is_dir():
            return cls.from_export(path, **kwargs)
        from sama.module import SamaModule

        module = SamaModule.load_from_checkpoint(str(path), map_location="cpu")
        return cls.from_module(module, **kwargs)

    @classmethod
    def from_export(cls, directory: str | os.PathLike[str], **kwargs: Any) -> EditPipeline:
        """Load a directory written by ``SamaModule.export`` (model + ``encoders.json``)."""
        directory = Path(directory)
        spec_path = directory / "encoders.json"
        if not spec_path.exists():
            raise FileNotFoundError(
                f"{directory}: no encoders.json; export the model with `SamaModule.export(dir)`"
            )
        from sama.module import load_encoders

        spec = json.loads(spec_path.read_text())
        model = SamaTransformer.from_pretrained(directory)
        codec, text_encoder, _ = load_encoders(directory)
        kwargs.setdefault("anchor_frames", int(spec.get("anchor_frames", 1)))
        return cls(model, codec, text_encoder, **kwargs)

    # ------------------------------------------------------------------ editing
    @property
    def spatial_unit(self) -> int:
        patch = self.model.wan.config.patch_size
        return int(self.codec.spatial_factor) * int(max(patch[1], patch[2]))

    @torch.no_grad()
    def __call__(
        self,
        video: Tensor,
        instruction: str,
        *,
        fps: float = 24.0,
        steps: int = 50,
        guidance: float = 5.0,
        source_guidance: float | None = None,
        shift: float = 5.0,
        negative_prompt: str | None = None,
        seed: int = 0,
        frames: int | None = None,
        size: tuple[int, int] | None = None,
        progress: bool = True,
    ) -> EditResult:
        """Edit one clip.

        Args:
            video: uint8 ``(T, H, W, 3)`` frames (as ``sama.io.read_video`` returns).
            instruction: the edit, without the prompt prefix.
            fps: the source's frame rate (copied to the result).
            steps / guidance / source_guidance / shift: sampler settings (released code: 50,
                5.0, None, 5.0).
            seed: seeds the initial noise; the same seed gives the same edit.
            frames / size: optional cap on frames and explicit processing size ``(H, W)``.
        """
        if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(
                f"EditPipeline: expected uint8 (T, H, W, 3), got {video.dtype} {tuple(video.shape)}"
            )
        t_in, h_in, w_in, _ = video.shape
        n, model_size = bucket_shape(
            t_in,
            h_in,
            w_in,
            temporal_factor=int(self.codec.temporal_factor),
            spatial_unit=self.spatial_unit,
            max_frames=frames,
            size=size,
        )
        source = to_model_video(video[:n]).unsqueeze(0).to(self.device)
        source = _resize_video(source, model_size)
        source_latents = self.codec.encode(source)
        prompt = self.prompt_prefix + instruction
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        (states, mask) = self.text_encoder.encode([prompt, negative])
        states, mask = states.to(self.device), mask.to(self.device)
        semantic_shape = None
        if self.anchor_frames > 0:
            semantic_shape = (
                1,
                self.anchor_frames * SEMANTIC_TOKENS_PER_FRAME,
                self.model.semantic_dim,
            )

        def model_fn(x: Tensor, sem: Tensor | None, timestep: Tensor, cond: str):
            # "full": instruction + source; "no_text": negative prompt + source;
            # "no_source": negative prompt, no source (the fully unconditional branch)
            text_index = 0 if cond == COND_FULL else 1
            src = None if cond == COND_NO_SOURCE else source_latents
            out = self.model(
                x,
                timestep,
                states[text_index : text_index + 1],
                source_latents=src,
                semantic_tokens=sem,
                text_mask=mask[text_index : text_index + 1],
            )
            return out.velocity, out.semantic

        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        sampler = FlowSampler(num_steps=steps, shift=shift)
        latents, _ = sampler.sample(
            model_fn,
            tuple(source_latents.shape),
            semantic_shape,
            text_scale=guidance,
            source_scale=source_guidance,
            generator=generator,
            progress=progress,
            device=self.device,
        )
        edited = self.codec.decode(latents).clamp(-1, 1)
        edited = _resize_video(edited, (h_in, w_in))
        return EditResult(from_model_video(edited[0]), float(fps), n, model_size)

    def edit_file(
        self,
        video_path: str | os.PathLike[str],
        instruction: str,
        output_path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> EditResult:
        """Read ``video_path``, edit it and write an H.264 mp4 at the source's fps."""
        output_path = Path(output_path)
        if output_path.exists() and not overwrite:
            raise FileExistsError(f"{output_path} exists; pass --overwrite to replace it")
        frames, fps = read_video(video_path)
        result = self(frames, instruction, fps=fps, **kwargs)
        write_video(output_path, result.video, result.fps)
        return result

    def edit_manifest(
        self,
        manifest: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        on_result: Callable[[dict, EditResult], None] | None = None,
        **kwargs: Any,
    ) -> list[Path]:
        """Edit every ``{"id", "source", "instruction"}`` line of a JSONL manifest.

        Outputs go to ``output_dir/<id>.mp4``; finished outputs are kept and skipped unless
        ``overwrite`` (so an interrupted batch resumes). Paths resolve against the manifest.
        """
        from datamodules.eval_sets import ManifestEvalSet

        benchmark = ManifestEvalSet(str(manifest))
        entries = benchmark.entries
        output_dir = Path(output_dir)
        written = []
        kwargs.setdefault("progress", False)
        for entry in tqdm(entries, desc="editing"):
            out = output_dir / f"{entry['id']}.mp4"
            if out.exists() and not overwrite:
                written.append(out)
                continue
            source = benchmark.resolve(entry["source"])
            result = self.edit_file(source, entry["instruction"], out, overwrite=True, **kwargs)
            if on_result is not None:
                on_result(entry, result)
            written.append(out)
        return written


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: use HxW, e.g. 480x832") from None
    return h, w


def edit_main(argv: list[str] | None = None) -> int:
    """``sama edit``: edit one video with a trained checkpoint."""
    import argparse
    import sys

    from sama.io import VideoReadError

    parser = argparse.ArgumentParser(prog="sama edit", description=edit_main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="Lightning .ckpt or exported dir")
    parser.add_argument("--video", required=True, help="source video (or image)")
    parser.add_argument("--instruction", required=True, help='e.g. "make the red circle blue"')
    parser.add_argument("--output", required=True, help="output .mp4")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0, help="text guidance scale")
    parser.add_argument("--source-guidance", type=float, default=None)
    parser.add_argument("--shift", type=float, default=5.0)
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=None, help="cap on frames processed")
    parser.add_argument("--size", default=None, help="processing size HxW (default: source's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    output = Path(args.output)
    try:
        if output.exists() and not args.overwrite:
            raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
        if output.suffix.lower() != ".mp4":
            raise ValueError(f"--output {output}: the output must be an .mp4 file")
        frames, fps = read_video(args.video)
        size = _size(args.size) if args.size else None
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = EditPipeline.from_checkpoint(args.checkpoint, device=device)
        result = pipe(
            frames,
            args.instruction,
            fps=fps,
            steps=args.steps,
            guidance=args.guidance,
            source_guidance=args.source_guidance,
            shift=args.shift,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            frames=args.frames,
            size=size,
        )
        write_video(output, result.video, result.fps)
    except (FileNotFoundError, FileExistsError, ValueError, VideoReadError) as err:
        print(f"sama edit: error: {err}", file=sys.stderr)
        return 2
    t, h, w, _ = result.video.shape
    print(f"wrote {output} ({t} frames, {w}x{h}, {result.fps:g} fps)")
    return 0
