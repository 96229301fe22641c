"""The library page in a real browser: headless Chromium (Debian's `chromium`, or Playwright's
own), driven by Playwright, against the real server (a subprocess) with the tiny checkpoint.

The page indexes a folder of two generated H.264 videos (the progress shows, then both
videos with their durations), asks across the library, and a click on the first ranked
moment plays that video from that moment: the player's currentTime is the reported moment,
on a video the browser really decoded. Chatting with one video streams an answer and puts
its evidence on the timeline as markers; the memory map draws. `server --demo` serves the
page over its generated library with no model download.

Skipped only where no Chromium can be found (Playwright not installed, or no browser): the
reason says which, and how to install it (.ci/run installs both).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from infinipot_mlx.library import Catalogue
from test_server import CAP, ROOT, Server, _free_port, http
from videos import h264_video

CHROMIUM_FLAGS = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--mute-audio"]


def chromium_path() -> str | None:
    """Debian's chromium (or another on PATH), else Playwright's downloaded one, else None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
        return path if os.path.exists(path) else None
    except Exception:  # playwright missing or its browser not downloaded
        return None


def no_browser(reason: str):
    """A page test without a browser fails: it cannot look at the page, and a check not run is
    not a check passed. INFINIPOT_SKIP_BROWSER=1 is the explicit, visible way out on a machine
    that has no Chromium (pytest then reports these tests as skipped, with the reason)."""
    if os.environ.get("INFINIPOT_SKIP_BROWSER") == "1":
        pytest.skip(f"{reason} (INFINIPOT_SKIP_BROWSER=1)")
    pytest.fail(f"{reason}; or set INFINIPOT_SKIP_BROWSER=1 to leave the page's browser tests out")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        no_browser("no browser driver: Playwright is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        no_browser("no Chromium found: apt-get install chromium (Debian) or python -m playwright install chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tiny_qwen_dir, tmp_path_factory):
    lib = tmp_path_factory.mktemp("browser_library")
    Catalogue(lib, create=True).close()  # an empty library: the page adds the videos
    s = Server(tiny_qwen_dir, tmp_path_factory.mktemp("browser_server") / "server.log", "--kv-budget", str(CAP),
               "--reserve", "64", "--library", str(lib))
    s.base = s.url.removesuffix("/v1")
    yield s
    log = s.stop()
    assert "Traceback" not in log, log


@pytest.fixture()
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # what the page showed, for a failure
    context.close()
    assert not errors, errors  # no script error on the page


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two H.264 videos, long enough to be compressed under the cap (their moments are not all 0)."""
    folder = tmp_path_factory.mktemp("page_videos")
    h264_video(folder / "garden.mp4", n=200, fps=10.0)  # 20 s
    h264_video(folder / "street.mp4", n=150, fps=10.0, height=96, width=128)  # 15 s
    return folder


def indexed(server, folder) -> None:
    """Index `folder` through the API (videos already indexed are skipped) and wait for the job."""
    job = http("POST", server.base + "/api/index", {"folder": str(folder)}).json()["job"]
    deadline = time.monotonic() + 240
    while http("GET", f"{server.base}/api/jobs/{job}").json()["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "indexing did not finish"
        time.sleep(0.2)


def player_state(page) -> dict:
    return page.evaluate("""() => { const p = document.getElementById('player');
        return {time: p.currentTime, ready: p.readyState, error: p.error && p.error.code, duration: p.duration,
                seeking: p.seeking}; }""")


def test_index_ask_and_play_the_moment(page, server, folder):
    page.goto(server.base + "/")
    page.fill("#folder", str(folder))
    page.click("#index button")
    page.wait_for_selector(".job[data-state=done]", timeout=240_000)
    assert "done    garden.mp4" in page.inner_text(".job pre") and "done    street.mp4" in page.inner_text(".job pre")
    page.wait_for_function("document.querySelectorAll('#videos li.video').length == 2")
    cards = page.inner_text("#videos")
    assert "garden.mp4" in cards and "00:20 · indexed" in cards and "00:15 · indexed" in cards

    page.fill("#question", "What moved?")
    page.click("#ask button")
    page.wait_for_selector("#hits li.hit", timeout=120_000)
    asked = http("POST", server.base + "/api/ask", {"question": "What moved?", "top": 5}).json()["hits"]
    first = page.locator("#hits li.hit").first
    seconds = float(first.get_attribute("data-seconds"))
    assert seconds == asked[0]["seconds"] and asked[0]["name"] in first.inner_text()  # the reported moment
    assert page.locator("#hits li.hit").count() == len(asked) == 2
    assert seconds >= 2  # past the start: a player left at 0 would not pass for one at the moment

    page.evaluate("""() => { const p = document.getElementById('player');  // where it starts playing
        p.addEventListener('playing', () => { window.startedAt = p.currentTime; }, {once: true}); }""")
    first.click()
    page.wait_for_function("window.startedAt !== undefined", timeout=60_000)
    started, state = page.evaluate("window.startedAt"), player_state(page)
    page.evaluate("document.getElementById('player').pause()")
    assert state["error"] is None and state["ready"] >= 2  # decoded: a real playing video
    assert abs(started - seconds) < 0.15, (started, seconds, state)  # it plays from the moment
    assert page.inner_text("#player-title") == asked[0]["name"]


def test_chat_with_one_video_shows_its_evidence_and_memory_map(page, server, folder):
    indexed(server, folder)
    page.goto(server.base + "/")
    page.wait_for_selector("#videos li.video")
    page.locator("#videos li.video").first.click()
    page.fill("#chat-question", "What moved?")
    page.click("#chat button:has-text('Ask')")
    page.wait_for_selector("#chat-log .a .meta", timeout=120_000)
    answer = page.inner_text("#chat-log .a")
    assert "evidence: " in answer and answer.split("evidence:")[0].strip()  # an answer, then its moments
    markers = page.locator("#timeline .marker")
    assert markers.count() == answer.count("%)") >= 1  # one marker per moment
    markers.first.click()
    moment = markers.first.get_attribute("title").split(" ")[0]  # mm:ss
    page.wait_for_function("!document.getElementById('player').seeking")
    assert int(player_state(page)["time"]) // 60 == int(moment[:2]) and int(player_state(page)["time"]) % 60 \
        in (int(moment[3:]), int(moment[3:]) + 1)
    page.click("#map-button")
    page.wait_for_function("document.getElementById('memory-map').naturalWidth > 0", timeout=120_000)


def test_server_demo_serves_the_page(tmp_path):
    port = _free_port()
    env = dict(os.environ, INFINIPOT_DEMO_DIR=str(tmp_path / "demo"))
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "infinipot_mlx.server", "--demo", "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        server = type("Demo", (), {})()
        server.proc, server.port, server.log = proc, port, tmp_path / "demo.log"
        Server._wait(server, timeout=120)
        page = http("GET", f"http://127.0.0.1:{port}/")
        assert page.status == 200 and "infinipot video library" in page.text
        listing = http("GET", f"http://127.0.0.1:{port}/api/library").json()
        assert listing["jobs"][0]["folder"] == str(tmp_path / "demo" / "videos")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    assert "Traceback" not in (tmp_path / "demo.log").read_text()


def test_server_demo_with_another_model_or_library_is_one_line(capsys):
    from infinipot_mlx.cli.server import main

    for extra in (["--model", "somewhere"], ["--library", "elsewhere"]):
        assert main(["--demo", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--demo serves the bundled organism" in err and "Traceback" not in err
