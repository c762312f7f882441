"""Optional VLM judge: score edits with any OpenAI-compatible chat-completions endpoint.

Standard library only (``urllib.request`` + ``concurrent.futures``). A request sends the rubric
as the system message and ``frames`` source / edited frame pairs, sampled evenly over time, as
base64 PNG ``image_url`` parts; the model answers with a JSON object of three 1-10 scores.
Answers are cached on disk, keyed by a hash of (model, rubric version, instruction, frame
pixels), so re-running an evaluation costs nothing. The API key is read from an environment
variable at request time and is never stored on the object or logged.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from sama.files import atomic_write_text
from sama.images import encode_png

log = logging.getLogger(__name__)

RUBRIC_VERSION = "sama-judge-v1"
"""Bump when the rubric or the request format changes: it is part of the cache key."""

RUBRIC = """\
You are a strict evaluator of instruction-guided video edits. You see pairs of frames sampled \
evenly over time: each pair shows a frame of the SOURCE video and the same moment of the EDITED \
video that was produced by following the instruction. Score the edit on three criteria, each an \
integer from 1 (worst) to 10 (best).

1. instruction_following: does the edited video do what the instruction asks, completely and \
in every frame? 10 = fully and precisely done throughout; 5 = partly done, or done in some \
frames only; 1 = not done at all, or something else was done. An unchanged video scores 1.
2. preservation: is everything the instruction does not ask to change kept as in the source \
(background, other objects, identities, layout, camera and object motion, timing)? 10 = \
nothing unrequested changed; 5 = clearly visible unrequested changes; 1 = the content is \
replaced by something unrelated. For global edits such as a style change, judge whether the \
content, layout and motion survive.
3. quality: the edited frames on their own: sharp, natural, plausible lighting and blending of \
the edited region, no artefacts, no distortions, consistent from frame to frame. 10 = looks \
like real footage (or a flawless rendering of the requested style); 1 = broken.

Be strict: give 10 only to a flawless result. Judge only what the frames show.
Answer with one JSON object and nothing else:
{"instruction_following": <1-10>, "preservation": <1-10>, "quality": <1-10>, \
"reason": "<one short sentence>"}"""

SCORE_KEYS = ("instruction_following", "preservation", "quality")
_RETRY_AFTER_CAP_S = 60.0


class JudgeError(RuntimeError):
    """The judge endpoint refused the request or never gave a usable answer."""


@dataclass(frozen=True)
class JudgeScore:
    """Scores in [1, 10]; ``overall`` is the mean of the three criteria; ``raw`` the answer text."""

    instruction_following: float
    preservation: float
    quality: float
    overall: float
    raw: str

    def as_metrics(self) -> dict[str, float]:
        """The scores as ``results.json`` metric entries (``judge_<criterion>``)."""
        return {
            "judge_instruction_following": self.instruction_following,
            "judge_preservation": self.preservation,
            "judge_quality": self.quality,
            "judge_overall": self.overall,
        }


JUDGE_METRIC_NAMES = (
    "judge_instruction_following",
    "judge_preservation",
    "judge_quality",
    "judge_overall",
)


class JudgeItem(NamedTuple):
    """One edit to judge (a plain 3-tuple works as well)."""

    source_frames: np.ndarray | torch.Tensor
    edited_frames: np.ndarray | torch.Tensor
    instruction: str


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def as_uint8_frames(frames: np.ndarray | torch.Tensor, name: str = "frames") -> np.ndarray:
    """Accept uint8 ``(T, H, W, 3)`` / ``(H, W, 3)`` or float ``(3, T, H, W)`` in [-1, 1].

    Returns numpy uint8 ``(T, H, W, 3)``.
    """
    if isinstance(frames, torch.Tensor):
        if frames.is_floating_point():
            if frames.ndim != 4 or frames.shape[0] != 3:
                raise ValueError(
                    f"float {name} must be (3, T, H, W) in [-1, 1]; got {tuple(frames.shape)}"
                )
            frames = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            frames = frames.permute(1, 2, 3, 0)
        frames = frames.cpu().numpy()
    array = np.asarray(frames)
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (T, H, W, 3) or a float tensor (3, T, H, W)")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise ValueError(f"{name} must be uint8 (T, H, W, 3); got shape {array.shape}")
    return array


def sample_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``[0, num_frames - 1]`` (ends included)."""
    if count <= 1:
        return [0]
    return [round(i * (num_frames - 1) / (count - 1)) for i in range(count)]


def _shrink(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = frame.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return np.ascontiguousarray(frame)
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, size=size, mode="area")
    return image[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` (code fences and prose around it are tolerated)."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL | re.IGNORECASE)
    candidates = [fenced.group(1)] if fenced else []
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object found")


def parse_scores(text: str) -> JudgeScore:
    """Parse a judge answer into a ``JudgeScore``; scores are clamped to [1, 10].

    Raises ``ValueError`` when no JSON object with the three numeric criteria is present.
    """
    data = _extract_json(text)
    values = {}
    for key in SCORE_KEYS:
        if key not in data:
            raise ValueError(f"answer lacks {key!r}")
        try:
            value = float(data[key])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{key!r} is not a number: {data[key]!r}") from err
        if value != value:  # NaN
            raise ValueError(f"{key!r} is NaN")
        values[key] = min(10.0, max(1.0, value))
    overall = sum(values.values()) / len(values)
    return JudgeScore(**values, overall=overall, raw=text)


class VLMJudge:
    """Client for an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or a local vLLM server ``http://host:8000/v1``.
        model: the model name sent in the request (part of the cache key).
        api_key_env: environment variable holding the API key; when unset no ``Authorization``
            header is sent (local servers usually need none).
        cache_dir: directory for cached answers (``<sha256>.json``); None disables caching.
        max_concurrency: most requests in flight at once, over all threads using this judge.
        max_retries: retries after the first attempt on HTTP 429 / 5xx, timeouts, connection
            errors and unparseable answers. Other 4xx errors are not retried.
        timeout_s: socket timeout per request.
        frames: frame pairs per request, sampled evenly over time (first and last included).
        retry_base_delay_s: backoff before retry k is ``base * 2**k * (1 + U[0, 1))``, or the
            server's ``Retry-After`` when larger (capped at 60 s).
        max_side: frames larger than this (longest side, pixels) are downscaled before sending.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | Path | None = None,
        max_concurrency: int = 4,
        max_retries: int = 4,
        timeout_s: float = 60.0,
        frames: int = 3,
        retry_base_delay_s: float = 1.0,
        max_side: int | None = 512,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"judge base_url must start with http:// or https://; got {base_url!r}"
            )
        if max_concurrency < 1 or max_retries < 0 or frames < 1:
            raise ValueError("judge needs max_concurrency >= 1, max_retries >= 0 and frames >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.frames = frames
        self.retry_base_delay_s = retry_base_delay_s
        self.max_side = max_side
        self.requests_sent = 0
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VLMJudge(url={self.url!r}, model={self.model!r}, frames={self.frames})"

    def judge(
        self,
        source_frames: np.ndarray | torch.Tensor,
        edited_frames: np.ndarray | torch.Tensor,
        instruction: str,
    ) -> JudgeScore:
        """Score one edit (frames: uint8 ``(T, H, W, 3)`` or float ``(3, T, H, W)`` in [-1, 1])."""
        pairs = self._frame_pairs(source_frames, edited_frames)
        key = self._cache_key(instruction, pairs)
        cached = self._cache_read(key)
        if cached is not None:
            return cached
        score = self._request_with_retries(self._request_body(instruction, pairs))
        self._cache_write(key, instruction, score)
        return score

    def judge_many(self, items: Iterable[JudgeItem | tuple[Any, Any, str]]) -> list[JudgeScore]:
        """Score many edits concurrently (at most ``max_concurrency`` in flight), in input order.

        The first failure cancels the requests not yet started and is raised; finished answers
        are already cached, so a re-run only pays for the rest.
        """
        items = [JudgeItem(*item) for item in items]
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(self.judge, *item) for item in items]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _frame_pairs(
        self, source_frames: np.ndarray | torch.Tensor, edited_frames: np.ndarray | torch.Tensor
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        source = as_uint8_frames(source_frames, "source_frames")
        edited = as_uint8_frames(edited_frames, "edited_frames")
        count = min(self.frames, len(source), len(edited))
        return [
            (_shrink(source[i], self.max_side), _shrink(edited[j], self.max_side))
            for i, j in zip(
                sample_indices(len(source), count), sample_indices(len(edited), count), strict=True
            )
        ]

    def _cache_key(self, instruction: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> str:
        digest = hashlib.sha256()
        header = {"model": self.model, "rubric": RUBRIC_VERSION, "instruction": instruction}
        digest.update(json.dumps(header, sort_keys=True).encode())
        for frame in (f for pair in pairs for f in pair):
            digest.update(str(frame.shape).encode())
            digest.update(frame.tobytes())
        return digest.hexdigest()

    def _cache_read(self, key: str) -> JudgeScore | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return JudgeScore(**json.loads(path.read_text())["score"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            log.warning("ignoring unreadable judge cache entry %s (%s)", path, err)
            return None

    def _cache_write(self, key: str, instruction: str, score: JudgeScore) -> None:
        if self.cache_dir is None:
            return
        entry = {
            "model": self.model,
            "rubric_version": RUBRIC_VERSION,
            "instruction": instruction,
            "score": asdict(score),
        }
        atomic_write_text(self.cache_dir / f"{key}.json", json.dumps(entry, indent=1))

    def _request_body(
        self, instruction: str, pairs: list[tuple[np.ndarray, np.ndarray]]
    ) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {
                "type": "text",
                "text": f"Instruction: {instruction}\n{len(pairs)} frame pairs follow, in time "
                "order.",
            }
        ]
        for k, (source, edited) in enumerate(pairs):
            for label, frame in (("source", source), ("edited", edited)):
                content.append({"type": "text", "text": f"Pair {k + 1}, {label} frame:"})
                data = base64.b64encode(encode_png(frame)).decode("ascii")
                content.append(
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
                )
        return {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": RUBRIC},
                {"role": "user", "content": content},
            ],
        }

    def _request_with_retries(self, body: dict[str, Any]) -> JudgeScore:
        payload = json.dumps(body).encode()
        last_error, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt - 1, retry_after))
            retry_after = None
            try:
                text = self._post(payload)
            except _RetryableError as err:
                last_error, retry_after = str(err), err.retry_after_s
            else:
                try:
                    return parse_scores(text)
                except ValueError as err:
                    last_error = f"unparseable answer ({err}): {text[:500]!r}"
            if attempt < self.max_retries:
                log.warning(
                    "judge attempt %d/%d failed: %s; retrying",
                    attempt + 1,
                    self.max_retries + 1,
                    last_error,
                )
        raise JudgeError(
            f"judge at {self.url} gave no usable answer after {self.max_retries + 1} attempts; "
            f"last error: {last_error}"
        )

    def _backoff(self, retry: int, retry_after_s: float | None) -> float:
        delay = self.retry_base_delay_s * 2**retry * (1.0 + random.random())
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, _RETRY_AFTER_CAP_S))
        return delay

    def _post(self, payload: bytes) -> str:
        """One HTTP attempt: the answer text, or ``_RetryableError`` / ``JudgeError``."""
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        with self._slots:
            with self._count_lock:
                self.requests_sent += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    body = response.read()
            except urllib.error.HTTPError as err:
                detail = err.read()[:500].decode("utf-8", "replace")
                if err.code == 429 or err.code >= 500:
                    raise _RetryableError(
                        f"HTTP {err.code}: {detail}", _retry_after(err.headers)
                    ) from err
                raise JudgeError(
                    f"judge at {self.url} answered HTTP {err.code} (not retried): {detail}. "
                    f"Check the model name, the endpoint and the key in ${self.api_key_env}"
                ) from err
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                http.client.HTTPException,
            ) as err:
                raise _RetryableError(f"{type(err).__name__}: {err}") from err
        try:
            answer = json.loads(body)
            content = answer["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _RetryableError(
                f"response is not a chat completion ({err}): {body[:500]!r}"
            ) from err
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise _RetryableError(f"answer content is not text: {content!r}"[:500])
        return content


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
