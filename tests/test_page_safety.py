"""The page's API is safe by default (server/web.py), against the real server (a subprocess,
as test_server.py drives it) over a library indexed by `library index`:

- byte ranges: the player's Range requests get 206 and exactly the bytes asked for;
- traversal: `..`, URL-encoded slashes, absolute paths and ids that are paths reach no file
  (404), a library video whose file lies (through a symlink) outside
  --allowed-local-media-path is refused (403), and so is a folder to index outside it;
- --api-key guards every /api route (the header, or the cookie the page's key form sets);
- another site can neither post to it (JSON bodies only) nor reach it by DNS rebinding (Host);
- no GET changes anything: the library folder's files and the model thread's job count
  are the same after every GET route was called;
- the server listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hashlib
from http.client import HTTPConnection
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_server import CAP, KEY, ROOT, Server, http
from videos import moving_shapes_video, static_events_video

BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def world(tiny_qwen_dir, tmp_path_factory):
    """(allowed folder, library, outside file): two videos in the allowed folder and a symlink
    in it to a third video outside it, all indexed."""
    allowed, outside = tmp_path_factory.mktemp("allowed"), tmp_path_factory.mktemp("outside")
    lib = tmp_path_factory.mktemp("page_library")
    moving_shapes_video(allowed / "shapes.mp4", n=24, fps=8.0)
    static_events_video(allowed / "events.mp4", n=24, fps=8.0)
    secret = moving_shapes_video(outside / "secret.mp4", n=16, fps=8.0, height=96)
    (allowed / "link.mp4").symlink_to(secret)
    done = subprocess.run([sys.executable, "-m", "infinipot_mlx.library", "index", str(allowed), "--model",
                           str(tiny_qwen_dir), "--library", str(lib), "--kv-budget", str(CAP), "--reserve", "64"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return allowed, lib, secret


@pytest.fixture(scope="module")
def server(tiny_qwen_dir, world, tmp_path_factory):
    allowed, lib, _ = world
    s = Server(tiny_qwen_dir, tmp_path_factory.mktemp("page_server") / "server.log", "--kv-budget", str(CAP),
               "--reserve", "64", "--api-key", KEY, "--library", str(lib),
               "--allowed-local-media-path", str(allowed))
    s.base = s.url.removesuffix("/v1")
    yield s
    log = s.stop()
    assert "Traceback" not in log, log


def videos(server) -> dict[str, dict]:
    r = http("GET", f"{server.base}/api/library", headers=BEARER)
    assert r.status == 200, r.text
    return {v["name"]: v for v in r.json()["videos"]}


def raw_get(server, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    """GET `path` exactly as written (no client normalizes its `..` or escapes)."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path, headers={**BEARER, **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_the_player_gets_byte_ranges(server, world):
    video = videos(server)["shapes.mp4"]
    data = (world[0] / "shapes.mp4").read_bytes()
    status, body, headers = raw_get(server, f"/api/videos/{video['id']}/file", {"Range": "bytes=100-299"})
    assert status == 206 and body == data[100:300]
    assert headers["content-range"] == f"bytes 100-299/{len(data)}" and headers["accept-ranges"] == "bytes"
    status, body, _ = raw_get(server, f"/api/videos/{video['id']}/file")
    assert status == 200 and body == data


@pytest.mark.parametrize("path", [
    "/static/../server/web.py", "/static/%2e%2e/web.py", "/static/..%2fweb.py", "/static/%2e%2e%2fapp.py",
    "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/api/videos/../../../etc/passwd/file", "/api/videos/..%2f..%2f..%2fetc%2fpasswd/file",
    "/api/videos/%2fetc%2fpasswd/file", "/api/videos/etc/passwd/file", "/api/videos/shapes.mp4/file",
    "/api/videos/0000000000000000/frame?t=1",
])
def test_no_path_reaches_a_file_outside_the_library(server, path):
    status, body, _ = raw_get(server, path)
    assert status == 404, (status, body[:200])
    assert b"root:" not in body and b"def " not in body


def test_a_library_video_outside_the_allowed_folders_is_refused(server, world):
    linked = videos(server)["link.mp4"]  # indexed through a symlink; its file is outside
    for route in ("file", "frame?t=0"):
        status, body, _ = raw_get(server, f"/api/videos/{linked['id']}/{route}")
        assert status == 403 and json.loads(body)["error"]["code"] == "path_not_allowed"
    outside = world[2].parent
    for folder, code in ((str(outside), 403), ("relative/folder", 400), (str(world[0] / "shapes.mp4"), 400)):
        r = http("POST", f"{server.base}/api/index", {"folder": folder}, headers=BEARER)
        assert r.status == code, r.text


def test_the_api_key_guards_every_api_route(server):
    assert http("GET", f"{server.base}/").status == 200  # the page itself holds no data
    video = videos(server)["shapes.mp4"]
    for route in ("/api/library", f"/api/videos/{video['id']}/file", f"/api/videos/{video['id']}/frame?t=0",
                  "/api/jobs/1"):
        assert http("GET", server.base + route).status == 401, route
        assert http("GET", server.base + route, headers={"Authorization": "Bearer wrong"}).status == 401
    for route in ("/api/index", "/api/ask", f"/api/videos/{video['id']}/chat", f"/api/videos/{video['id']}/memory-map"):
        assert http("POST", server.base + route, {"question": "q", "folder": "/"}).status == 401, route
    assert http("POST", f"{server.base}/api/login", {"key": "wrong"}).status == 401
    login = http("POST", f"{server.base}/api/login", {"key": KEY})
    cookie = login.headers["set-cookie"]
    assert login.status == 200 and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    r = http("GET", f"{server.base}/api/library", headers={"Cookie": cookie.split(";")[0]})
    assert r.status == 200 and "shapes.mp4" in r.text


def test_another_site_cannot_drive_the_page(server, world):
    """A plain cross-site form (text/plain, no preflight) cannot post a body, and a page that
    reached 127.0.0.1 through DNS rebinding (another Host) is refused."""
    post = http("POST", f"{server.base}/api/index", content=json.dumps({"folder": str(world[0])}).encode(),
                headers={**BEARER, "Content-Type": "text/plain"})
    assert post.status == 415, post.text
    status, body, _ = raw_get(server, "/api/library", {"Host": f"evil.example:{server.port}"})
    assert status == 403 and json.loads(body)["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "localhost"):
        assert raw_get(server, "/api/library", {"Host": host})[0] == 200, host


def test_another_site_cannot_drive_the_openai_api_either(server, world):
    """The same two guards on /v1: a plain-form body type is refused before anything is read
    or queued, and so is a Host of another site (a script that reached 127.0.0.1 by DNS rebinding)."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi?"}]}).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        post = http("POST", f"{server.base}/v1/chat/completions", content=body, headers={**BEARER, "Content-Type": kind})
        assert post.status == 415 and json.loads(post.text)["error"]["code"] == "unsupported_media_type", (kind, post.text)
    status, body, _ = raw_get(server, "/v1/models", {**BEARER, "Host": f"evil.example:{server.port}"})
    assert status == 403 and json.loads(body)["error"]["code"] == "host_not_allowed"
    assert raw_get(server, "/v1/models", {**BEARER, "Host": f"localhost:{server.port}"})[0] == 200


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_get_changes_anything(server, world):
    lib = world[1]
    before, jobs_before = snapshot(lib), server.stats()["queue"]["finished"]
    video = videos(server)["shapes.mp4"]
    for route in ("/", "/static/app.js", "/static/style.css", "/api/library", "/api/jobs/1",
                  f"/api/videos/{video['id']}/file", f"/api/videos/{video['id']}/frame?t=1",
                  "/api/index", "/api/ask", f"/api/videos/{video['id']}/chat"):
        status, _, _ = raw_get(server, route)
        assert status in (200, 404, 405), (route, status)
    assert snapshot(lib) == before
    assert server.stats()["queue"]["finished"] == jobs_before  # nothing ran on the model thread


def test_the_server_listens_on_loopback_by_default():
    from infinipot_mlx.cli.server import build_parser

    assert build_parser().parse_args([]).host == "127.0.0.1"


def test_a_new_or_empty_folder_starts_an_empty_library_and_a_folder_of_other_files_is_refused(tmp_path):
    """So a person can start the page on a new library and fill it from there; a --library that
    points at a folder of videos by mistake is one line, not a catalogue written into it."""
    from infinipot_mlx.cli.server import build_parser, check_args
    from infinipot_mlx.errors import UserError
    from infinipot_mlx.library import Catalogue

    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (tmp_path / "new" / "library", empty):
        check_args(build_parser().parse_args(["--library", str(folder)]))
        catalogue = Catalogue(folder)  # exists now; no create needed
        assert catalogue.entries() == []
        catalogue.close()
    videos_folder = tmp_path / "videos"
    videos_folder.mkdir()
    (videos_folder / "clip.mp4").write_bytes(b"not really")
    with pytest.raises(UserError, match="no video library"):
        check_args(build_parser().parse_args(["--library", str(videos_folder)]))
    assert sorted(p.name for p in videos_folder.iterdir()) == ["clip.mp4"]
