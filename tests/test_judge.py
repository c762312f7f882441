"""VLM judge against a loopback OpenAI-compatible server started in the test."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from sama.evaluation.judge import (
    JudgeError,
    JudgeItem,
    VLMJudge,
    as_uint8_frames,
    parse_scores,
    sample_indices,
)

GOOD = '{"instruction_following": 8, "preservation": 6, "quality": 7, "reason": "fine"}'


def chat(content: str) -> tuple[int, str, float]:
    """A scripted reply: HTTP 200 with a chat completion whose message is ``content``."""
    body = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    return 200, json.dumps(body), 0.0


class FakeEndpoint:
    """Scripted replies ``(status, body, delay_s)``; the last one repeats. Tracks requests."""

    def __init__(self) -> None:
        self.script: list[tuple[int, str, float]] = [chat(GOOD)]
        self.reply_for: Callable[[dict], tuple[int, str, float]] | None = None
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def next_reply(self, body: dict) -> tuple[int, str, float]:
        if self.reply_for is not None:
            return self.reply_for(body)
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeEndpoint, str]]:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeEndpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                fake.paths.append(self.path)
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                status, text, delay = fake.next_reply(body)
            counted = True
            try:
                time.sleep(delay)
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                # Leave the in-flight count before the body goes out: the client cannot hold a
                # whole answer (and start its next request) until then, so the count never
                # includes this thread's teardown after the client has moved on.
                with fake.lock:
                    fake.in_flight -= 1
                    counted = False
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)
            finally:
                if counted:
                    with fake.lock:
                        fake.in_flight -= 1

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def video(seed: int, frames: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, 12, 16, 3), dtype=np.uint8)


def make_judge(url: str, **kwargs: object) -> VLMJudge:
    options = {"model": "judge-model", "retry_base_delay_s": 0.01, "timeout_s": 5.0}
    options.update(kwargs)
    return VLMJudge(url, **options)  # type: ignore[arg-type]


def test_good_answer_and_request_format(
    endpoint: tuple[FakeEndpoint, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, url = endpoint
    monkeypatch.setenv("SAMA_TEST_KEY", "sk-secret-123")
    judge = make_judge(url, api_key_env="SAMA_TEST_KEY", frames=3)
    with caplog.at_level(logging.DEBUG):
        score = judge.judge(video(0), video(1), "make the sky purple")
    assert (score.instruction_following, score.preservation, score.quality) == (8, 6, 7)
    assert score.overall == pytest.approx(7.0)
    assert score.raw == GOOD
    assert fake.paths == ["/v1/chat/completions"]
    assert fake.headers[0]["Authorization"] == "Bearer sk-secret-123"
    request = fake.requests[0]
    assert request["model"] == "judge-model"
    parts = request["messages"][1]["content"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(images) == 6 and all(u.startswith("data:image/png;base64,") for u in images)
    assert "make the sky purple" in parts[0]["text"]
    assert "sk-secret-123" not in caplog.text and "sk-secret-123" not in repr(judge)


@pytest.mark.parametrize(
    "failure",
    [
        (500, '{"error": "boom"}', 0.0),
        (429, '{"error": "slow down"}', 0.0),
        (200, chat(GOOD)[1], 1.0),  # sleeps past the client's timeout
        chat("I think it is good, maybe 8?"),  # no JSON: retried as unparseable
    ],
    ids=["500", "429", "timeout", "garbage"],
)
def test_transient_failures_are_retried(
    endpoint: tuple[FakeEndpoint, str], failure: tuple[int, str, float]
) -> None:
    fake, url = endpoint
    fake.script = [failure, chat(GOOD)]
    score = make_judge(url, timeout_s=0.3).judge(video(0), video(1), "add a hat")
    assert score.overall == pytest.approx(7.0)
    assert len(fake.requests) == 2


def test_client_errors_are_not_retried(endpoint: tuple[FakeEndpoint, str]) -> None:
    fake, url = endpoint
    fake.script = [(400, '{"error": "unknown model judge-model"}', 0.0), chat(GOOD)]
    with pytest.raises(JudgeError, match=r"HTTP 400 \(not retried\).*unknown model"):
        make_judge(url).judge(video(0), video(1), "add a hat")
    assert len(fake.requests) == 1


def test_giving_up_names_the_last_answer(endpoint: tuple[FakeEndpoint, str]) -> None:
    fake, url = endpoint
    fake.script = [chat("no idea, sorry")]
    with pytest.raises(JudgeError, match="after 3 attempts.*no idea, sorry"):
        make_judge(url, max_retries=2).judge(video(0), video(1), "add a hat")
    assert len(fake.requests) == 3


def test_answers_are_cached_on_disk(endpoint: tuple[FakeEndpoint, str], tmp_path: Path) -> None:
    fake, url = endpoint
    first = make_judge(url, cache_dir=tmp_path).judge(video(0), video(1), "add a hat")
    again = make_judge(url, cache_dir=tmp_path).judge(video(0), video(1), "add a hat")
    assert again == first and len(fake.requests) == 1
    make_judge(url, cache_dir=tmp_path).judge(video(0), video(2), "add a hat")
    make_judge(url, cache_dir=tmp_path).judge(video(0), video(1), "add a scarf")
    make_judge(url, cache_dir=tmp_path, model="other").judge(video(0), video(1), "add a hat")
    assert len(fake.requests) == 4
    # written atomically: four entries, no temporary file left beside them
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and all(re.fullmatch(r"[0-9a-f]{64}\.json", n) for n in names)


def test_judge_many_respects_the_concurrency_limit(endpoint: tuple[FakeEndpoint, str]) -> None:
    fake, url = endpoint

    def reply(body: dict) -> tuple[int, str, float]:
        k = int(body["messages"][1]["content"][0]["text"].split()[1])  # "Instruction: <k>"
        answer = {"instruction_following": k, "preservation": 5, "quality": 5}
        return 200, chat(json.dumps(answer))[1], 0.05

    fake.reply_for = reply
    items = [JudgeItem(video(k), video(k + 100), str(k)) for k in range(1, 9)]
    scores = make_judge(url, max_concurrency=2).judge_many(items)
    assert [s.instruction_following for s in scores] == list(range(1, 9))
    assert fake.max_in_flight == 2
    assert len(fake.requests) == 8


def test_parse_scores_handles_fences_and_clamps() -> None:
    fenced = 'Sure:\n```json\n{"instruction_following": 12, "preservation": 0, "quality": "7"}\n```'
    score = parse_scores(fenced)
    assert (score.instruction_following, score.preservation, score.quality) == (10, 1, 7)
    assert score.overall == pytest.approx(6.0)
    assert score.as_metrics()["judge_overall"] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="quality"):
        parse_scores('{"instruction_following": 5, "preservation": 5}')


def test_frames_are_sampled_evenly_and_converted() -> None:
    assert sample_indices(9, 3) == [0, 4, 8]
    assert sample_indices(1, 3) == [0, 0, 0]
    assert sample_indices(5, 1) == [0]
    as_float = torch.full((3, 2, 4, 4), -1.0)
    as_float[0] = 1.0
    frames = as_uint8_frames(as_float)
    assert frames.shape == (2, 4, 4, 3) and frames[0, 0, 0].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="uint8"):
        as_uint8_frames(np.zeros((2, 4, 4, 3), np.float32))


def test_bad_base_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="http"):
        VLMJudge("api.openai.com/v1", "gpt-4o")
