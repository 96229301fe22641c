"""The server's queue and byte budget, on a server with no waiting room (--queue-limit 0):
a full queue answers 503 while a request the test holds at a gate runs, and memories leave
least recently used first under --max-memories-bytes. Helpers and media: test_server.py."""

from __future__ import annotations

import sqlite3
import threading
import time

import openai
import pytest

from test_server import CAP, Reply, Server, ask, file_url, http, media, video_message  # noqa: F401 (media: fixture)


# ----- the queue and the byte budget --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tight_server(tiny_qwen_dir, media, tmp_path_factory):
    """No waiting room (--queue-limit 0), 400 KB for memories, no API key, an empty library."""
    from infinipot_mlx.library.catalogue import Catalogue

    Catalogue(library := tmp_path_factory.mktemp("tight_library"), create=True).db.close()
    s = Server(tiny_qwen_dir, tmp_path_factory.mktemp("tight") / "server.log", "--kv-budget", str(CAP),
               "--reserve", "64", "--queue-limit", "0", "--max-memories-bytes", "400KB", "--library", str(library))
    s.library = library
    yield s
    assert "Traceback" not in (log := s.stop()), log


def test_a_full_queue_answers_503_and_the_server_goes_on(tight_server, media):
    """The gate: the test holds the library's SQLite catalogue locked, as another program could,
    so the model thread, looking the video up in --library, waits (SQLite's 30 s busy timeout)
    until the test lets go; meanwhile the one admitted request runs and the next gets 503."""
    from infinipot_mlx.library.catalogue import CATALOGUE

    url = f"{tight_server.url}/chat/completions"
    gate = sqlite3.connect(tight_server.library / CATALOGUE, isolation_level=None)
    gate.execute("PRAGMA locking_mode=EXCLUSIVE")
    gate.execute("BEGIN EXCLUSIVE")
    held: list[Reply] = []
    body = {"model": "tiny", "max_tokens": 4, "messages": video_message(file_url(media["other"]))}
    thread = threading.Thread(target=lambda: held.append(http("POST", url, body, timeout=300)))
    try:
        thread.start()
        deadline = time.monotonic() + 20  # well inside the server's 30 s wait on the lock
        while tight_server.stats(None)["queue"]["running"] == 0:  # admitted, at the gate
            assert time.monotonic() < deadline and thread.is_alive()
        busy = http("POST", url, {"model": "tiny", "messages": video_message(file_url(media["moving"]))})
        assert tight_server.stats(None)["queue"]["running"] == 1 and not held  # still at the gate
    finally:
        gate.close()  # open the gate
        thread.join(timeout=300)
    assert busy.status == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "server_busy" and busy.json()["error"]["type"] == "server_error"
    assert held and held[0].status == 200, held[0].text if held else "no answer"
    assert "library memory not used" not in tight_server.log.read_text()  # the lock waited, never failed
    client = openai.OpenAI(base_url=tight_server.url, api_key="unused", max_retries=0)
    assert ask(client, file_url(media["moving"])).choices[0].message.content is not None
    assert tight_server.stats(None)["queue"]["rejected"] == 1


def test_memories_leave_least_recently_used_first_under_the_byte_budget(tight_server, media):
    client = openai.OpenAI(base_url=tight_server.url, api_key="unused", max_retries=0)
    for key in ("moving", "static", "moving"):  # 101 and 189 tokens of 1 KB, each in a buffer of 256
        # rows (the cache grows 256 rows at a time): 262 KB each is held, both do not fit in 400 KB
        before = tight_server.stats(None)
        ask(client, file_url(media[key]), max_tokens=2)
        after = tight_server.stats(None)
        assert after["pool"]["held_bytes"] <= after["pool"]["max_bytes"] == 400_000
        assert all(m["bytes"] == 256 * 1024 for m in after["pool"]["held"])  # allocated, not 101 or 189 rows
    assert after["memory_misses"] == before["memory_misses"] + 1  # "moving" was evicted, so encoded again
    assert after["pool"]["evictions"] >= 2
