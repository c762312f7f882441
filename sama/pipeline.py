"""EditPipeline: source video + instruction -> edited video; the one sampling path.

Every edit of the project (``sama edit``, ``SamaModule.predict_step``, ``sama test``'s scorer,
the training-time edit monitor) goes through :meth:`EditPipeline.edit_tensor`, which runs the
same :class:`~sama.model.SamaTransformer` that training uses:

1. the source ``(B, 3, T, H, W)`` in [-1, 1] is encoded by the frozen codec, the prompts (the
   instruction after the prompt prefix ``"[Video edit] "``) and the negative prompt
   ``"[Video edit]"`` by the text encoder;
2. :class:`~sama.flow.FlowSampler` denoises the target latents and
   ``anchor_frames * semantic_tokens_per_frame`` semantic tokens jointly from noise with
   classifier-free guidance (text scale; optional source scale);
3. the latents are decoded to ``(B, 3, T, H, W)`` in [-1, 1].

:meth:`EditPipeline.__call__` wraps it for one uint8 clip: the clip is **bucketed** to what the
model accepts (the frame count snapped down to ``1 + k * temporal_factor`` after an optional
``frames`` cap; the size resized to ``size`` or to the nearest multiple of the latent grid unit,
codec spatial factor x patch size), edited, and **restored** to the source's height and width
(bicubic). Frames beyond the last valid ``1 + k * temporal_factor`` are not invented, so the
output can be up to ``temporal_factor - 1`` frames shorter than the input; the fps is the
source's.

Sampler defaults, anchor frames, token counts and the prompt contract come from the export's
inference description (:class:`sama.export.InferenceInfo`), or from a module's
hyper-parameters (:meth:`EditPipeline.from_module`). Loading reads no training code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sama.export import (
    EDIT_PREFIX,
    NEGATIVE_PROMPT,
    InferenceInfo,
    LoadedEditor,
    inference_from_hparams,
    read_checkpoint,
    read_export,
)
from sama.flow import COND_FULL, COND_NO_SOURCE, FlowSampler, SamplingSettings
from sama.io import VideoReadError, from_model_video, read_video, to_model_video, write_video
from sama.model import SamaTransformer

__all__ = [
    "EditPipeline",
    "EditResult",
    "EDIT_PREFIX",
    "PROMPT_PREFIX",
    "NEGATIVE_PROMPT",
    "bucket_shape",
    "check_cuda",
    "check_output_folder",
    "edit_main",
    "verbose_errors",
]

#: the prompt prefix (an alias of :data:`sama.export.EDIT_PREFIX`)
PROMPT_PREFIX = EDIT_PREFIX


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
            ``spatial_factor``, ``latent_channels``).
        text_encoder: frozen text encoder (``encode(texts) -> (states, mask)``).
        inference: anchor frames, semantic tokens per anchor frame, prompt prefix, negative
            prompt and sampler defaults (an export's; default: no semantic tokens, the released
            prompts and sampler).
        device: where to run (default: the model's device).
    """

    def __init__(
        self,
        model: SamaTransformer,
        codec: Any,
        text_encoder: Any,
        inference: InferenceInfo | None = None,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.codec = codec.to(self.device) if hasattr(codec, "to") else codec
        self.text_encoder = (
            text_encoder.to(self.device) if hasattr(text_encoder, "to") else text_encoder
        )
        self.inference = inference or InferenceInfo()

    # ------------------------------------------------------------------ loading
    @property
    def settings(self) -> SamplingSettings:
        """The default sampler settings (the export's / module's)."""
        return self.inference.sampling

    @property
    def anchor_frames(self) -> int:
        return self.inference.anchor_frames

    @property
    def negative_prompt(self) -> str:
        return self.inference.negative_prompt

    @property
    def prompt_prefix(self) -> str:
        return self.inference.prompt_prefix

    @classmethod
    def from_module(cls, module: Any, **kwargs: Any) -> EditPipeline:
        """Build from a ``SamaModule`` (duck-typed: ``model``, ``encoders``, ``hparams``): its
        transformer and frozen encoders, anchor frames (0 when ``semantic_weight == 0``), the
        semantic encoder's ``tokens_per_frame`` and ``sample_steps`` / ``guidance_scale`` /
        ``sample_shift`` as the sampler defaults."""
        codec, text_encoder, semantic = module.encoders
        kwargs.setdefault(
            "inference", inference_from_hparams(module.hparams, semantic.tokens_per_frame)
        )
        return cls(module.model, codec, text_encoder, **kwargs)

    @classmethod
    def from_loaded(cls, loaded: LoadedEditor, **kwargs: Any) -> EditPipeline:
        """Build from what :func:`sama.export.read_export` / ``read_checkpoint`` returned."""
        kwargs.setdefault("inference", loaded.inference)
        return cls(loaded.model, loaded.codec, loaded.text_encoder, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], **kwargs: Any) -> EditPipeline:
        """Load a Lightning checkpoint (``.ckpt``, read with ``weights_only=True``) or a
        directory written by ``SamaModule.export``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.is_dir():
            return cls.from_export(path, **kwargs)
        return cls.from_loaded(read_checkpoint(path), **kwargs)

    @classmethod
    def from_export(cls, directory: str | os.PathLike[str], **kwargs: Any) -> EditPipeline:
        """Load a directory written by ``SamaModule.export`` (checksums verified, encoder classes
        checked before anything is built; see :mod:`sama.export`)."""
        return cls.from_loaded(read_export(directory), **kwargs)

    # ------------------------------------------------------------------ editing
    @property
    def spatial_unit(self) -> int:
        patch = self.model.wan.config.patch_size
        return int(self.codec.spatial_factor) * int(max(patch[1], patch[2]))

    def _latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
        tf, sf = int(self.codec.temporal_factor), int(self.codec.spatial_factor)
        if (frames - 1) % tf or height % sf or width % sf:
            raise ValueError(
                f"EditPipeline: output (T, H, W)=({frames}, {height}, {width}) does not fit the "
                f"codec: T must be 1 + k*{tf}, H and W multiples of {sf}"
            )
        channels = int(self.codec.latent_channels)
        return (batch, channels, (frames - 1) // tf + 1, height // sf, width // sf)

    @torch.no_grad()
    def edit_tensor(
        self,
        source: Tensor | None,
        prompts: Sequence[str],
        settings: SamplingSettings | None = None,
        generator: torch.Generator | None = None,
        *,
        negative_prompt: str | None = None,
        output_shape: tuple[int, int, int] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Edit a batch at model size: the one sampling path.

        Args:
            source: ``(B, 3, T, H, W)`` float in [-1, 1] (T = 1 + k * temporal_factor, H and W
                multiples of the codec's spatial factor), or ``None`` for pure generation.
            prompts: ``B`` texts as the text encoder receives them (the prompt prefix
                included: ``pipeline.prompt_prefix + instruction``; a task's instructions).
            settings: sampler settings (default: :attr:`settings`).
            generator: draws the initial noise (latents first, then semantic tokens); default
                a generator on the pipeline's device seeded with ``settings.seed``.
            negative_prompt: overrides the inference description's.
            output_shape: ``(T, H, W)`` of the result; default the source's (required without
                a source).

        Returns:
            ``(B, 3, T, H, W)`` float in [-1, 1].
        """
        settings = settings or self.settings
        prompts = list(prompts)
        if source is not None:
            if source.ndim != 5 or source.shape[1] != 3:
                raise ValueError(
                    f"EditPipeline.edit_tensor: source must be (B, 3, T, H, W), got "
                    f"{tuple(source.shape)}"
                )
            batch = source.shape[0]
        elif output_shape is None:
            raise ValueError("EditPipeline.edit_tensor: give output_shape when source is None")
        else:
            batch = len(prompts)
        if len(prompts) != batch:
            raise ValueError(
                f"EditPipeline.edit_tensor: {len(prompts)} prompts for a batch of {batch}"
            )
        source_latents = None
        if source is not None:
            source_latents = self.codec.encode(source.to(self.device)).float()
        if output_shape is None or (source is not None and tuple(output_shape) == source.shape[2:]):
            shape = tuple(source_latents.shape)
        else:
            shape = self._latent_shape(batch, *output_shape)
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        states, mask = self.text_encoder.encode(prompts)
        neg_states, neg_mask = self.text_encoder.encode([negative] * batch)
        texts = {
            COND_FULL: (states.to(self.device), mask.to(self.device)),
            COND_NO_SOURCE: (neg_states.to(self.device), neg_mask.to(self.device)),
        }
        semantic_shape = None
        if self.inference.semantic_tokens > 0:
            semantic_shape = (batch, self.inference.semantic_tokens, self.model.semantic_dim)

        def model_fn(x: Tensor, sem: Tensor | None, timestep: Tensor, cond: str) -> tuple:
            # "full": prompt + source; "no_text": negative prompt + source;
            # "no_source": negative prompt, no source (the fully unconditional branch)
            text, text_mask = texts[COND_FULL if cond == COND_FULL else COND_NO_SOURCE]
            out = self.model(
                x,
                timestep,
                text,
                source_latents=None if cond == COND_NO_SOURCE else source_latents,
                semantic_tokens=sem,
                text_mask=text_mask,
            )
            return out.velocity, out.semantic

        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(int(settings.seed))
        sampler = FlowSampler(num_steps=settings.steps, shift=settings.shift)
        latents, _ = sampler.sample(
            model_fn,
            shape,
            semantic_shape,
            text_scale=settings.guidance,
            source_scale=settings.source_guidance,
            generator=generator,
            progress=progress,
            device=self.device,
        )
        return self.codec.decode(latents).float().clamp(-1, 1)

    @torch.no_grad()
    def __call__(
        self,
        video: Tensor,
        instruction: str,
        *,
        fps: float = 24.0,
        settings: SamplingSettings | None = None,
        frames: int | None = None,
        size: tuple[int, int] | None = None,
        progress: bool = True,
        steps: int | None = None,
        guidance: float | None = None,
        source_guidance: float | None = None,
        shift: float | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
    ) -> EditResult:
        """Edit one clip: bucket, :meth:`edit_tensor`, restore the size.

        Args:
            video: uint8 ``(T, H, W, 3)`` frames (as ``sama.io.read_video`` returns).
            instruction: the edit, without the prompt prefix.
            fps: the source's frame rate (copied to the result).
            settings: sampler settings (default: the pipeline's, from the export / module).
            frames / size: optional cap on frames and explicit processing size ``(H, W)``.
            steps / guidance / source_guidance / shift / seed: overrides of ``settings``
                (``None`` keeps its value); the same seed gives the same edit.
            negative_prompt: overrides the inference description's.
        """
        if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(
                f"EditPipeline: expected uint8 (T, H, W, 3), got {video.dtype} {tuple(video.shape)}"
            )
        settings = (settings or self.settings).updated(
            steps=steps, guidance=guidance, source_guidance=source_guidance, shift=shift, seed=seed
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
        edited = self.edit_tensor(
            source,
            [self.prompt_prefix + instruction],
            settings,
            negative_prompt=negative_prompt,
            progress=progress,
        )
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
        """Read ``video_path``, edit it (``kwargs`` as for :meth:`__call__`) and write an H.264
        mp4 at the source's fps."""
        output_path = Path(output_path)
        if output_path.exists() and not overwrite:
            raise FileExistsError(f"{output_path} exists; pass --overwrite to replace it")
        frames, fps = read_video(video_path)
        result = self(frames, instruction, fps=fps, **kwargs)
        write_video(output_path, result.video, result.fps)
        return result


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: use HxW, e.g. 480x832") from None
    return h, w


def verbose_errors() -> bool:
    """Whether a command shows the traceback of an error instead of one line: ``SAMA_VERBOSE``
    set to anything but ``""`` / ``0`` (``sama --verbose`` sets it)."""
    return os.environ.get("SAMA_VERBOSE", "").strip() not in {"", "0"}


def check_cuda(device: str, option: str = "--device") -> None:
    """Refuse a CUDA ``device`` this process cannot use, in one line naming ``option``."""
    if not str(device).lower().startswith(("cuda", "gpu")) or torch.cuda.is_available():
        return
    if torch.version.cuda is None:
        raise ValueError(
            f"{option} {device}: CUDA was asked for but this torch build has no CUDA; "
            f"use {option} cpu (or install a CUDA build of torch)"
        )
    raise ValueError(
        f"{option} {device}: CUDA was asked for but no GPU is visible "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use {option} cpu"
    )


def check_output_folder(path: str | os.PathLike[str], option: str = "--output") -> None:
    """Make sure the folder of the file ``path`` exists (created if need be) and is writable,
    before any long work; ``PermissionError`` / ``NotADirectoryError`` in one line otherwise."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(
            f"{option} {path}: {folder} is not a folder; choose another {option}"
        ) from None
    except PermissionError:
        raise PermissionError(
            f"{option} {path}: cannot create the folder {folder}; choose another {option}"
        ) from None
    probe = folder / f".sama-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"{option} {path}: the folder {folder} is not writable ({err.strerror}); "
            f"choose another {option}"
        ) from None


def edit_main(argv: list[str] | None = None) -> int:
    """``sama edit``: edit one video with a trained checkpoint."""
    parser = argparse.ArgumentParser(prog="sama edit", description=edit_main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="Lightning .ckpt or exported dir")
    parser.add_argument("--video", required=True, help="source video (or image)")
    parser.add_argument("--instruction", required=True, help='e.g. "make the red circle blue"')
    parser.add_argument("--output", required=True, help="output .mp4")
    default = " (default: the checkpoint's; released: %s)"
    parser.add_argument("--steps", type=int, default=None, help="sampling steps" + default % 50)
    parser.add_argument(
        "--guidance", type=float, default=None, help="text guidance scale" + default % 5.0
    )
    parser.add_argument(
        "--source-guidance", type=float, default=None, help="source guidance scale" + default % None
    )
    parser.add_argument("--shift", type=float, default=None, help="timestep shift" + default % 5.0)
    parser.add_argument("--negative-prompt", default=None, help='default "[Video edit]"')
    parser.add_argument("--seed", type=int, default=None, help="noise seed" + default % 0)
    parser.add_argument("--frames", type=int, default=None, help="cap on frames processed")
    parser.add_argument("--size", default=None, help="processing size HxW (default: source's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    output = Path(args.output)
    try:
        if args.frames is not None and args.frames < 1:
            raise ValueError(f"--frames {args.frames}: give a positive frame count (or omit it)")
        if output.exists() and not args.overwrite:
            raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
        if output.suffix.lower() != ".mp4":
            raise ValueError(f"--output {output}: the output must be an .mp4 file")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        check_cuda(device)
        check_output_folder(output)  # before the model loads and the edit runs
        frames, fps = read_video(args.video)
        size = _size(args.size) if args.size else None
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
    except (OSError, ValueError, VideoReadError) as err:
        if verbose_errors():
            raise
        message = str(err).replace(
            "raise it in the Wan config", "pass a smaller --size HxW or --frames"
        )
        print(f"sama edit: error: {message}", file=sys.stderr)
        return 2
    t, h, w, _ = result.video.shape
    print(f"wrote {output} ({t} frames, {w}x{h}, {result.fps:g} fps)")
    return 0
