"""python -m infinipot_mlx.server, started for real on 127.0.0.1 (a subprocess on a free port)
with the tiny checkpoint, and real clients: the official `openai` package and plain HTTP (urllib).

What is checked: non-streaming and streaming completions over generated videos; a follow-up
question does not run the vision tower again (the server's counters); 40 requests from 4
threads, all answered, the cap held (INFINIPOT_CHECK_CAP=1 reaches the server from conftest);
the malformed-request catalogue, each followed by a good request; lmms-eval's request shapes
(`pass_video_url=True` with media_io_kwargs, and its default image frames); memories reused
from a library; a live named session (503 and LRU eviction: test_server_queue.py).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from videos import corrupt_video, moving_shapes_video, non_video_file

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key"
CAP = 300  # --kv-budget: small, so that streaming and answering compress under the cap


@dataclass
class Reply:
    status: int
    headers: dict
    text: str

    def json(self):
        return json.loads(self.text)


def http(method: str, url: str, json_body=None, content: bytes | None = None, headers: dict | None = None,
         timeout: float = 120) -> Reply:
    """One HTTP request with the standard library; any status comes back as a Reply."""
    headers = dict(headers or {})
    if json_body is not None:
        content, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
    request = urllib.request.Request(url, data=content, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read().decode())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess; `url` is its /v1 base."""

    def __init__(self, model: Path, log: Path, *flags: str):
        self.port, self.log, self.out = _free_port(), log, open(log, "wb")
        assert os.environ.get("INFINIPOT_CHECK_CAP") == "1"  # conftest: every session asserts the cap
        cmd = [sys.executable, "-m", "infinipot_mlx.server", "--model", str(model), "--port", str(self.port),
               "--log-level", "warning", *flags]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._wait()

    def _wait(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                if http("GET", f"http://127.0.0.1:{self.port}/health", timeout=1.0).status == 200:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start:\n{self.log.read_text()}")

    def stats(self, key: str | None = KEY) -> dict:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return http("GET", f"{self.url}/stats", headers=headers, timeout=30).json()

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        return self.log.read_text()


def video_message(url: str, question: str = "What moved?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def file_url(path: Path) -> str:
    return Path(path).resolve().as_uri()


@pytest.fixture(scope="module")
def media(video_dir, moving_shapes_mp4, static_events_mp4) -> dict:
    """The videos the servers read: all under video_dir (the allowed local media folder)."""
    return dict(moving=moving_shapes_mp4, static=static_events_mp4,
                long=moving_shapes_video(video_dir / "long_shapes.mp4", n=200, fps=10.0),  # 40 frames: compresses
                other=moving_shapes_video(video_dir / "other_shapes.mp4", n=40, fps=10.0),
                fresh=moving_shapes_video(video_dir / "fresh_shapes.mp4", n=50, fps=10.0),
                not_video=non_video_file(video_dir / "notes.mp4"),
                corrupt=corrupt_video(video_dir / "corrupt.mp4", moving_shapes_mp4))


@pytest.fixture(scope="module")
def library(tiny_qwen_dir, media, tmp_path_factory) -> tuple[Path, Path]:
    """(library folder, the indexed video): one video indexed with the server's settings."""
    folder, lib = tmp_path_factory.mktemp("library_videos"), tmp_path_factory.mktemp("library")
    video = moving_shapes_video(folder / "garden.mp4", n=24, fps=8.0)
    done = subprocess.run([sys.executable, "-m", "infinipot_mlx.library", "index", str(folder), "--model",
                           str(tiny_qwen_dir), "--library", str(lib), "--kv-budget", str(CAP), "--reserve", "64"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return lib, video


@pytest.fixture(scope="module")
def server(tiny_qwen_dir, media, library, video_dir, tmp_path_factory):
    lib, video = library
    s = Server(tiny_qwen_dir, tmp_path_factory.mktemp("server") / "server.log",
               "--kv-budget", str(CAP), "--reserve", "64", "--api-key", KEY, "--max-body-bytes", "2MB",
               "--library", str(lib), "--allowed-local-media-path", str(video_dir),
               "--allowed-local-media-path", str(video.parent))
    yield s
    log = s.stop()
    assert "Traceback" not in log, log  # no request ever broke the server


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def ask(client, url: str, question: str = "What moved?", **kwargs):
    return client.chat.completions.create(model="tiny", messages=video_message(url, question),
                                          max_tokens=kwargs.pop("max_tokens", 8), **kwargs)


# ----- the openai client ------------------------------------------------------------------------------
def test_openai_client_answers_and_streams_the_same_answer(client, media, tiny_qwen_dir):
    assert [m.id for m in client.models.list().data] == [tiny_qwen_dir.name]  # the folder's name
    reply = ask(client, file_url(media["moving"]))
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    assert isinstance(choice.message.content, str) and choice.message.content

    stream = ask(client, file_url(media["moving"]), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == choice.message.content  # the same memory, greedy: the same answer, streamed
    assert finishes == [choice.finish_reason] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_completion_tokens_count_the_tokens_generated_when_a_stop_string_ends_the_answer(client, media):
    """A stop string found in the k-th token: k tokens were generated (the answer to
    max_tokens=k, whose last piece is the stop string), as with finish_reason "length"."""
    url = file_url(media["moving"])
    texts = [ask(client, url, max_tokens=k).choices[0].message.content for k in range(1, 9)]
    k = next(k for k in range(2, 9) if texts[k - 1] != texts[k - 2] and texts[k - 1][len(texts[k - 2]):].strip()
             and texts[k - 1][len(texts[k - 2]):] not in texts[k - 2] and texts[k - 1].startswith(texts[k - 2]))
    last_piece = texts[k - 1][len(texts[k - 2]):]  # the k-th token's text
    stopped = ask(client, url, max_tokens=16, stop=[last_piece])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].message.content == texts[k - 2]
    assert stopped.usage.completion_tokens == k
    full = ask(client, url, max_tokens=k)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == k


def test_the_sse_stream_ends_with_done(server, media):
    body = {"model": "tiny", "stream": True, "max_tokens": 4, "messages": video_message(file_url(media["moving"]))}
    r = http("POST", f"{server.url}/chat/completions", body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.text.splitlines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


# ----- memories ---------------------------------------------------------------------------------------
def test_a_follow_up_question_does_not_run_the_vision_tower_again(client, server, media):
    url = file_url(media["fresh"])
    before = server.stats()
    first = ask(client, url, "What moved first?")
    after_first = server.stats()
    assert after_first["memory_misses"] == before["memory_misses"] + 1
    assert after_first["frames_encoded"] > before["frames_encoded"]
    assert after_first["vision_seconds"] > before["vision_seconds"]

    history = video_message(url, "What moved first?") + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And then?"}]
    follow = client.chat.completions.create(model="tiny", messages=history, max_tokens=8)
    data = base64.b64encode(Path(media["fresh"]).read_bytes()).decode()
    same_bytes = ask(client, f"data:video/mp4;base64,{data}", "What moved first?")  # the same content
    after = server.stats()
    assert follow.choices[0].message.content is not None
    assert after["frames_encoded"] == after_first["frames_encoded"]  # no frame encoded again
    assert after["vision_seconds"] == after_first["vision_seconds"]
    assert after["memory_hits"] == after_first["memory_hits"] + 2
    assert after["memory_misses"] == after_first["memory_misses"]
    # each request starts from the post-video memory: asking again gives the first answer again
    assert same_bytes.choices[0].message.content == first.choices[0].message.content
    assert same_bytes.usage.prompt_tokens == first.usage.prompt_tokens  # the memory did not grow


def test_a_library_memory_is_loaded_not_encoded(client, server, library):
    _, video = library
    before = server.stats()
    reply = ask(client, file_url(video))
    after = server.stats()
    assert reply.model_extra["infinipot"]["memory"] == "library"
    assert after["library_hits"] == before["library_hits"] + 1
    assert after["frames_encoded"] == before["frames_encoded"]


def test_a_live_session_takes_frames_and_keeps_its_conversation(client, server, media):
    headers = {"Authorization": f"Bearer {KEY}"}
    base = f"{server.url}/sessions/cam"
    part = {"content": [{"type": "video_url", "video_url": {"url": file_url(media["moving"])}}]}
    first = http("POST", f"{base}/frames", part, headers=headers).json()["frames_seen"]
    raw = http("POST", f"{base}/frames", content=Path(media["other"]).read_bytes(),
               headers={**headers, "Content-Type": "video/mp4"})
    assert raw.status == 200 and raw.json()["frames_seen"] > first
    frames = raw.json()["frames_seen"]

    asked = [client.chat.completions.create(model="tiny", max_tokens=6, extra_body={"session": "cam"},
                                            messages=[{"role": "user", "content": q}]) for q in ("What?", "Then?")]
    assert all(a.model_extra["infinipot"]["memory"] == "session" for a in asked)
    assert asked[1].usage.prompt_tokens >= asked[0].usage.prompt_tokens + 6  # the first turn stayed in it
    facts = http("GET", base, headers=headers).json()
    assert facts["frames_seen"] == frames and facts["tokens_cached"] <= facts["capacity"] == CAP
    assert http("DELETE", base, headers=headers).json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny", extra_body={"session": "cam"},
                                       messages=[{"role": "user", "content": "Still there?"}])


# ----- lmms-eval --------------------------------------------------------------------------------------
def test_lmms_eval_pass_video_url_request(client, server, media):
    """lmms_eval/models/chat/openai.py with pass_video_url=True: a file:// video_url part and
    text, max_tokens, temperature 0, and extra_body media_io_kwargs with num_frames."""
    payload = {"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": file_url(media["other"])}},
        {"type": "text", "text": "What shape moves to the right? Answer with a word."}]}],
        "model": "tiny", "max_tokens": 16, "temperature": 0,
        "extra_body": {"media_io_kwargs": {"video": {"num_frames": 8}}}}
    before = server.stats()
    reply = client.chat.completions.create(**payload)
    after = server.stats()
    assert reply.choices[0].message.content is not None
    assert after["frames_encoded"] - before["frames_encoded"] == 8  # 8 frames spread over the video


def test_lmms_eval_default_image_frames_request(client, server):
    """Without pass_video_url lmms-eval sends the sampled frames as PNG data: image_url parts."""
    frames = [np.full((90, 120, 3), 40 * i, np.uint8) for i in range(4)]
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                 + base64.b64encode(cv2.imencode(".png", f)[1]).decode()}}
             for f in frames]
    before = server.stats()
    reply = client.chat.completions.create(model="tiny", max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": [*parts, {"type": "text", "text": "What changes?"}]}])
    assert reply.choices[0].message.content is not None
    assert server.stats()["frames_encoded"] - before["frames_encoded"] == 4


# ----- load -------------------------------------------------------------------------------------------
def test_40_requests_from_4_threads_are_all_answered_under_the_cap(server, media):
    urls = [file_url(media[k]) for k in ("moving", "static", "long")]
    before, results, errors = server.stats(), [], []

    def worker(t: int) -> None:
        client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=300)
        for i in range(10):
            try:
                if (t + i) % 2:
                    chunks = list(ask(client, urls[(t + i) % 3], f"Question {t}.{i}?", stream=True))
                    results.append(chunks[-1].choices[0].finish_reason)
                else:
                    results.append(ask(client, urls[(t + i) % 3], f"Question {t}.{i}?").choices[0].finish_reason)
            except Exception as err:
                errors.append(repr(err))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    after = server.stats()
    assert not errors, errors
    assert len(results) == 40 and all(r in ("stop", "length") for r in results)
    assert after["completions"] - before["completions"] == 40
    assert after["queue"]["rejected"] == before["queue"]["rejected"] and after["queue"]["waiting"] == 0
    assert after["capacity"] == CAP and after["peak_cached"] <= CAP
    assert after["compressions"] > before["compressions"]  # the 20-second video does not fit uncompressed
    assert after["pool"]["held_bytes"] <= after["pool"]["max_bytes"]


# ----- bad requests -----------------------------------------------------------------------------------
def _bad_requests(media, tiny_qwen_dir):
    """(name, method kwargs, status, code) for each malformed request."""
    auth = {"Authorization": f"Bearer {KEY}"}

    def chat(messages, **extra):
        return dict(json_body={"model": "tiny", "messages": messages, **extra}, headers=auth)

    return [
        ("bad json", dict(content=b'{"messages": [', headers={**auth, "Content-Type": "application/json"}),
         400, "invalid_json"),
        ("no video", chat([{"role": "user", "content": "What happened?"}]), 400, "no_video"),
        ("not a video", chat(video_message(file_url(media["not_video"]))), 400, "invalid_video"),
        ("corrupt video", chat(video_message(file_url(media["corrupt"]))), 400, "invalid_video"),
        ("missing file", chat(video_message(file_url(Path(media["moving"]).with_name("gone.mp4")))), 400,
         "file_not_found"),
        ("outside the allowed folder", chat(video_message(file_url(tiny_qwen_dir / "config.json"))), 403,
         "path_not_allowed"),
        ("bad data url", chat(video_message("data:video/mp4;base64,@@@")), 400, "invalid_data_url"),
        ("download fails", chat(video_message(f"http://127.0.0.1:{_free_port()}/clip.mp4")), 400, "download_failed"),
        ("unsupported part", chat([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}},
                                                                 {"type": "text", "text": "Hi?"}]}]),
         400, "unsupported_content_type"),
        ("no question", chat([{"role": "user", "content": [{"type": "video_url",
                                                            "video_url": {"url": file_url(media["moving"])}}]}]),
         400, "no_question"),
        ("bad num_frames", chat(video_message(file_url(media["moving"])), media_io_kwargs={"video": {"num_frames": 0}}),
         400, "invalid_num_frames"),
        ("body too large", chat([{"role": "user", "content": "x" * 3_000_000}]), 413, "request_too_large"),
        ("unknown session", chat([{"role": "user", "content": "Hi?"}], session="nobody"), 404, "session_not_found"),
        ("no api key", dict(json_body={"messages": video_message(file_url(media["moving"]))}), 401,
         "invalid_api_key"),
        ("wrong api key", dict(json_body={"messages": video_message(file_url(media["moving"]))},
                               headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key"),
    ]


def test_each_bad_request_gets_an_openai_error_and_the_server_goes_on(server, media, tiny_qwen_dir):
    good = dict(json_body={"model": "tiny", "max_tokens": 4, "messages": video_message(file_url(media["moving"]))},
                headers={"Authorization": f"Bearer {KEY}"})
    for name, kwargs, status, code in _bad_requests(media, tiny_qwen_dir):
        r = http("POST", f"{server.url}/chat/completions", **kwargs)
        assert r.status == status, (name, r.status, r.text)
        error = r.json()["error"]
        assert error["code"] == code and error["message"] and error["type"], (name, error)
        ok = http("POST", f"{server.url}/chat/completions", **good)
        assert ok.status == 200 and ok.json()["choices"][0]["message"]["content"] is not None, name
    assert http("GET", f"{server.url}/models").status == 401


# ----- a quantized cache ------------------------------------------------------------------------------
def test_a_server_with_kv_bits_answers_as_chat_does_and_charges_the_quantized_bytes(tiny_qwen_dir, media,
                                                                                     video_dir, tmp_path, capsys):
    from infinipot_mlx.cli import chat

    flags = ["--kv-budget", str(CAP), "--reserve", "64", "--kv-bits", "8", "--kv-group-size", "32"]
    assert chat.main([str(media["long"]), "--model", str(tiny_qwen_dir), *flags, "--max-tokens", "8",
                      "-q", "What moved?"]) == 0
    said = capsys.readouterr().out.split("\nA: ", 1)[1].strip()
    server = Server(tiny_qwen_dir, tmp_path / "server.log", *flags, "--api-key", KEY,
                    "--allowed-local-media-path", str(video_dir))
    try:
        client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)
        reply = ask(client, file_url(media["long"]))
        held = server.stats()["pool"]["memory_bytes"]
    finally:
        assert "Traceback" not in server.stop()
    assert reply.choices[0].message.content.strip() == said
    # tiny model: 2 layers x 2 KV heads x head dim 32; 8 bits in groups of 32 = 32 + 2 x 4 bytes per
    # row, K and V, over the 256 allocated rows (float32 would be 128 bytes per row)
    assert held == 2 * 2 * 2 * 256 * (32 + 8)
