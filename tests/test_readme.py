"""The README runs as written: every command in its code blocks that can run offline is run
by a test here, or named in EXEMPT with the reason it cannot be.

The commands are read from README.md itself (not copied): each ```bash block's lines (a
trailing backslash continues one), each "$ " line of a ```text transcript, each ```python
block. test_every_readme_command_is_run_or_exempt fails on a command no test runs and no
exemption names, so a new command needs either. Only the placeholders a user fills in are
replaced (a checkpoint folder: the tiny one of that architecture; video.mp4, clip.mp4 and the
other files a command names: videos generated in a temp folder; the server's port 8080: a
free one); shell commands run in bash with `python` this interpreter.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

import pytest

import videos

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block_after(heading: str, lang: str, nth: int = 0) -> str:
    """The nth ```lang block after the line that starts with `heading`."""
    start = README.index(heading)
    blocks = re.findall(rf"```{lang}\n(.*?)```", README[start:], flags=re.S)
    return blocks[nth]


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1")
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, **kwargs)


def test_python_api_snippet_runs(tmp_path, tiny_qwen_published_dir):
    video = videos.sized_video(tmp_path / "video.mp4", 1280, 720, n=60, fps=10.0)
    code = block_after("## Python API", "python")
    assert "path/to/Qwen2.5-VL-7B-Instruct-4bit" in code and '"video.mp4"' in code
    code = code.replace("path/to/Qwen2.5-VL-7B-Instruct-4bit", str(tiny_qwen_published_dir))
    code = code.replace('"video.mp4"', repr(str(video)))
    out = run([sys.executable, "-c", code], cwd=tmp_path)  # the snippet saves video.mem where it runs
    assert out.returncode == 0, out.stderr[-3000:]
    assert "frames_seen" in out.stdout and "(4, 6144)" in out.stdout and "Moment(slot=" in out.stdout


def test_transcript_runs_as_shown(tmp_path):
    text = block_after("A transcript with the tiny random checkpoint", "text")
    commands = [line[2:] for line in text.splitlines() if line.startswith("$ ")]
    typed = [line[2:] for line in text.splitlines() if line.startswith("> ")]
    assert len(commands) == 2 and typed[-1] == "/quit"
    clip = videos.sized_video(tmp_path / "clip.mp4", 1280, 720, n=600, fps=30.0)  # 20 s, not a minute
    folder = tmp_path / "tiny-qwen"

    def argv(command: str) -> list[str]:
        words = [str(folder) if w == "/tmp/tiny-qwen" else str(clip) if w == "clip.mp4" else w
                 for w in shlex.split(command)]
        return [sys.executable if w == "python" else w for w in words]

    made = run(argv(commands[0]))
    assert made.returncode == 0 and "wrote qwen2_5_vl" in made.stdout, made.stderr
    out = run(argv(commands[1]), input="\n".join(typed) + "\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("Ask about the video.") and out.stdout.count("> ") == len(typed)
    assert re.search(r"frames 40 \| cached \d+ tok .* / capacity 6144 \| peak \d+", out.stdout)


def test_parity_command_runs_on_a_wide_clip(tmp_path, tiny_qwen_dir):
    """The README's parity command on a 640x272 clip (the size that the old fit refused)."""
    command = block_after("## Checking MLX against the PyTorch reference", "bash").strip()
    clip = videos.sized_video(tmp_path / "clip.mp4", 640, 272, n=80, fps=10.0)
    words = [str(tiny_qwen_dir) if w == "path/to/hf-checkpoint" else str(clip) if w == "clip.mp4" else w
             for w in shlex.split(command)]
    out = run([sys.executable if w == "python" else w for w in words])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "PASS" in out.stdout


@pytest.mark.parametrize("heading", ["Install and run the main job", "Run the tests"])
def test_ci_runs_the_readme_setup_commands(heading):
    """.ci/run runs both set-up commands exactly as the README writes them."""
    command = block_after(heading, "bash").strip()
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert command in ci


# ----- every command: run here, or exempt -------------------------------------------------------
EXEMPT = {  # pattern (re.match on the command) -> why no test runs it
    r'pip install -e \. && python -m infinipot_mlx\.chat --demo$':
        ".ci/run runs it in a fresh virtualenv (test_ci_runs_the_readme_setup_commands); "
        "test_demo.py runs the demo as written",
    r'pip install -e "\.\[dev\]" && python -m pytest$': ".ci/run runs it; the suite cannot run itself",
    r"sudo (apt-get|dnf) install": "a system package manager, as root",
    r"python -m infinipot_mlx\.chat video\.mp4( +-q .*| +--realtime)?$":
        "no --model: the default checkpoint (Qwen2.5-VL-7B) comes from the hub",
    r"python -m infinipot_mlx\.chat 0$": "a camera",
    r"python -m infinipot_mlx\.chat rtsp://": "a stream URL",
    r"python -m lmms_eval ": "lmms-eval and its benchmark data (downloads)",
    r"python conversions/convert\.py --hf-path ": "downloads the hub model it converts",
    r"python -m infinipot_mlx\.chat video\.mp4 .*--device cuda": "a hub model on a CUDA device",
    r"python -m infinipot_mlx\.server --demo$": "a server that runs until stopped: "
        "tests/test_page.py::test_server_demo_serves_the_page starts it and loads the page",
    r"mlx\.launch ": "several Macs over ssh; tests/test_library_launch.py runs `mlx.launch -n 2 --backend "
        "ring` on one machine (index, kill -9 and resume, ask)",
}
RUN_BY = {  # pattern -> the test that runs it
    r"python conversions/make_tiny_checkpoint\.py qwen2_5_vl /tmp/tiny-qwen ": "test_transcript_runs_as_shown",
    r"python -m infinipot_mlx\.chat clip\.mp4 --model /tmp/tiny-qwen ": "test_transcript_runs_as_shown",
    r"python -m infinipot_mlx\.parity ": "test_parity_command_runs_on_a_wide_clip",
    r"import numpy as np\s+import infinipot_mlx": "test_python_api_snippet_runs",
    r'W=\$\(python -c ': "test_memory_map_and_library_transcripts_run",
    r"python -m infinipot_mlx\.chat long\.avi --model \$W ": "test_memory_map_and_library_transcripts_run",
    r"python -m infinipot_mlx\.library ": "test_memory_map_and_library_transcripts_run",
    r"python -m infinipot_mlx\.chat video\.mp4 --model path/to/\S+$": "test_other_architectures_run",
    r"python -m infinipot_mlx\.server --model path/to/": "test_server_commands_run",
    r"curl -s http://127\.0\.0\.1:8080/": "test_server_commands_run",
    r"from openai import OpenAI": "test_server_commands_run",
}
TINY = {"Qwen2-VL-7B-Instruct": "tiny_qwen2_vl_dir", "Qwen3-VL-8B-Instruct": "tiny_qwen3_vl_dir",
        "llava-onevision-qwen2-7b-ov": "tiny_llava_dir", "Qwen2.5-VL-7B-Instruct-4bit": "tiny_qwen_dir"}


def readme_commands() -> list[str]:
    """Every command of the README's code blocks (module docstring), in order."""
    found = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M):
        if lang == "python":
            found.append(body.strip())
            continue
        if lang == "text":  # a transcript: "$ " lines (and their continuations)
            body = "\n".join(m.group(1) for m in re.finditer(r"^\$ ((?:.*\\\n)*.*)", body, flags=re.M))
        elif lang != "bash":
            continue
        pending = ""
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            pending += ("\n" if pending else "") + re.sub(r"\s+#[^'\"]*$", "", line).strip()  # comment
            try:
                shlex.split(pending)
            except ValueError:  # an open quote: the command goes on on the next line
                continue
            if pending:
                found.append(pending)
            pending = ""
    return found


def commands_for(test: str) -> list[str]:
    return [c for c in readme_commands() if any(re.match(p, c) and t == test for p, t in RUN_BY.items())]


def test_every_readme_command_is_run_or_exempt():
    commands = readme_commands()
    assert len(commands) >= 20 and any(c.startswith("curl ") for c in commands)  # the parser sees them
    for command in commands:
        owners = [p for p in [*EXEMPT, *RUN_BY] if re.match(p, command)]
        assert len(owners) == 1, f"README command run by no test and not exempt (or both): {command!r}"
    for pattern in [*EXEMPT, *RUN_BY]:  # no stale entry
        assert any(re.match(pattern, c) for c in commands), f"no README command matches {pattern!r}"


@pytest.fixture()
def shell(tmp_path):
    """run(command, **kw): bash -c in tmp_path, `python` this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a script, not a symlink: a virtualenv's python reached through a symlink in another folder
    # finds no pyvenv.cfg there and runs as the base interpreter, with another site-packages
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def run_shell(command: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600,
                              env=env, cwd=tmp_path, **kw)
    run_shell.env = env
    return run_shell


def organism_video(path: Path, n_frames: int, shapes: list[tuple[int, str]], seed: int) -> Path:
    """An organism-world video at 2 fps (84 x 84, MJPG): the shapes [(frame, colour)], 4 frames each."""
    from infinipot_mlx.organism.data import Event, VideoOptions, render

    events = [Event(start, 4, 4, colour, "square", 22, (3, 3)) for start, colour in shapes]
    frames = render(np.random.default_rng(seed), VideoOptions(n_frames=n_frames), events, [])
    return videos.write_video(path, np.ascontiguousarray(frames[..., ::-1]), 2.0, "MJPG")


def transcript_outputs(heading: str) -> list[list[str]]:
    """The output lines shown after each "$ " command of the text block after `heading`."""
    text = block_after(heading, "text")
    outputs = []
    for line in re.sub(r"\\\n.*", "", text).splitlines():
        if line.startswith("$ "):
            outputs.append([])
        elif outputs:
            outputs[-1].append(line)
    return outputs


def test_memory_map_and_library_transcripts_run(shell, tmp_path):
    """The evidence / memory-map transcript on a 60 s video whose only shape, an orange one,
    shows at 0:24, and the library transcript on three 16 s videos (first shapes green, blue,
    yellow), in one shell (the library uses $W): the same lines, one per line shown."""
    organism_video(tmp_path / "long.avi", 120, [(48, "orange")], seed=7)
    (tmp_path / "videos").mkdir()
    for seed, (name, colour) in enumerate([("garden", "green"), ("kitchen", "blue"), ("street", "yellow")]):
        organism_video(tmp_path / "videos" / f"{name}.avi", 32, [(6, colour), (20, "red")], seed)
    commands = commands_for("test_memory_map_and_library_transcripts_run")
    assert len(commands) == 5
    script = "set -e\n" + "".join(f"{c} 2> err{i}.txt\necho '@@@'\n" for i, c in enumerate(commands))
    out = shell(script)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    got = [chunk.strip("\n").splitlines() for chunk in out.stdout.split("@@@\n")[:-1]]
    for i, lines in enumerate(got):  # what the terminal shows: stdout and stderr's messages
        err = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", (tmp_path / f"err{i}.txt").read_text())  # no cursor moves
        lines += [line for line in err.replace("\r", "\n").splitlines()  # nor progress bars
                  if line.strip() and not re.search(r"\d+%\||\[\d\d:\d\d", line)]
    shown = transcript_outputs("A real run with the bundled organism") + \
        transcript_outputs("A real run on three 16-second")
    for g, s in zip(got, shown, strict=True):
        assert sorted(line.split()[0] for line in g) == sorted(line.split()[0] for line in s), (g, s)
    assert "memory map drawn to memory_map.png" in got[1] and (tmp_path / "memory_map.png").stat().st_size
    assert "Q: What colour was the first shape?" in got[1] and "A: orange" in got[1]  # as shown
    assert any(re.fullmatch(r"evidence: (\d\d:\d\d \(\d+%\)(, )?)+", line) for line in got[1])
    assert [line[:33] for line in got[2]] == [line[:33] for line in shown[2]]  # done ... (0:16, 16 slots,
    assert got[2][-1] == shown[2][-1] == "library library: 3 indexed, 0 skipped, 0 failed"
    check_ranking(got[4], shown[4])


def check_ranking(got: list[str], shown: list[str]) -> None:
    """`library ask` prints what the README shows: the same ranks, videos, moments and answers,
    scores within 0.02 (float rounding on another machine), best first; the clip whose first
    shape was blue (kitchen.avi) on top."""
    rows = [line.split() for line in got]
    assert [r[:3] + r[4:] for r in rows] == [line.split()[:3] + line.split()[4:] for line in shown], got
    scores = [float(r[3]) for r in rows]
    assert all(abs(a - float(line.split()[3])) <= 0.02 for a, line in zip(scores, shown)), got
    assert scores == sorted(scores, reverse=True) and rows[0][:2] == ["1.", "kitchen.avi"]


@pytest.mark.parametrize("name", ["Qwen2-VL-7B-Instruct", "Qwen3-VL-8B-Instruct", "llava-onevision-qwen2-7b-ov"])
def test_other_architectures_run(name, shell, tmp_path, request):
    [command] = [c for c in commands_for("test_other_architectures_run") if c.endswith(f"path/to/{name}")]
    videos.moving_shapes_video(tmp_path / "video.mp4", n=24, fps=8.0)
    out = shell(command.replace(f"path/to/{name}", str(request.getfixturevalue(TINY[name]))), input="")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "streaming" in out.stderr and out.stdout.startswith("Ask about the video.")


def test_server_commands_run(shell, tmp_path, tiny_qwen_dir):
    """The server as written (the checkpoint: the tiny one; port 8080: a free one), then the
    README's curl command and its openai snippet against it."""
    server, curl, snippet = commands_for("test_server_commands_run")
    clip = videos.moving_shapes_video(tmp_path / "clip.mp4", n=24, fps=8.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def local(text: str) -> str:
        return text.replace("path/to/Qwen2.5-VL-7B-Instruct-4bit", str(tiny_qwen_dir)).replace(
            "127.0.0.1:8080", f"127.0.0.1:{port}").replace("file:///abs/path/clip.mp4", clip.as_uri())

    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(["bash", "-c", f"exec {local(server)} --port {port}"], cwd=tmp_path,
                            env=shell.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:  # up when /health answers
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        out = shell(local(curl))
        assert out.returncode == 0 and json.loads(out.stdout)["choices"][0]["message"]["content"], out.stdout
        out = shell(f"python - <<'EOF'\n{local(snippet)}\nEOF")
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip(), out.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_dependencies_have_floors_and_ci_tests_them():
    """pyproject's policy: floors only (no upper bound or pin), and .ci/run's lower-bound
    virtualenv installs every declared floor (.ci/floors.py) and runs the whole suite there."""
    import importlib.util

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    floors = {}
    for spec in [*project["dependencies"], *(d for group in project["optional-dependencies"].values() for d in group)]:
        req = Requirement(spec)
        assert [s.operator for s in req.specifier] == [">="], f"{spec}: floors only (pyproject's policy)"
        floors[(req.name, str(req.marker))] = next(iter(req.specifier)).version
    spec = importlib.util.spec_from_file_location("floors", root / ".ci" / "floors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pins = {}
    for line in module.floors(root / "pyproject.toml"):
        req = Requirement(line)
        assert [s.operator for s in req.specifier] == ["=="], line
        pins[(req.name, str(req.marker))] = next(iter(req.specifier)).version
    assert pins == floors
    ci = (root / ".ci" / "run").read_text()
    lower = ci[ci.index('lower="$scratch/lower"'):ci.index('rm -rf "$lower"')]
    assert '.ci/floors.py > "$scratch/floors.txt"' in lower and '-r "$scratch/floors.txt"' in lower
    assert lower.rstrip().endswith('"$lower/bin/python" -m pytest -q')  # the whole suite, no file list