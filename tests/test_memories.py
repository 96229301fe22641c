"""Video memories on disk (memories.py): save, load and continue exactly, on both models and
both backends; every way a file can be wrong is one line; a kill -9 mid-save loses nothing."""

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.stream.memory_file import MemoryFileError, content_hash, model_identity, read
from infinipot_mlx.stream.session import StreamSession

CASES = [(m, b) for m in ("qwen2_5_vl", "llava_onevision", "qwen3_vl") for b in ("mlx", "reference")]
DIRS = {"qwen2_5_vl": "tiny_qwen_dir", "llava_onevision": "tiny_llava_dir", "qwen3_vl": "tiny_qwen3_vl_dir"}
SIDE = {"qwen2_5_vl": 112, "llava_onevision": 98, "qwen3_vl": 96}  # Qwen3-VL: 32 px per token
CONFIG = dict(capacity=160, reserve=40, block_slots=2)


def frames(model_type: str, n: int, seed: int) -> np.ndarray:
    side = SIDE[model_type]
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def open_session(path, backend: str) -> StreamSession:
    if backend == "mlx":
        from infinipot_mlx.mlx.backend import load_model
    else:
        from functools import partial

        from infinipot_mlx.reference.backend import load_model
        load_model = partial(load_model, device="cpu")
    model, tok, spec, model_dir = load_model(str(path))
    return StreamSession(model, tok, spec, InfiniPotConfig(**CONFIG), backend, fps=2.0, model_dir=model_dir)


def answer(session, question: str) -> tuple[str, np.ndarray]:
    text = "".join(session.ask(question, max_tokens=5))
    return text, np.array(session.question_logits, dtype=np.float64)


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request):
    model_type, backend = request.param
    return model_type, backend, request.getfixturevalue(DIRS[model_type])


def test_save_load_continues_exactly(case, tmp_path):
    """Stream, ask, save (with frames queued mid-block); then the same questions and frames
    on the original and on a fresh session loaded from the file give the same logits and
    the same greedy answers, and the loaded file holds what was saved."""
    model_type, backend, path = case
    original = open_session(path, backend)
    original.add_frames(frames(model_type, 24, 0))  # several compressions under the cap
    answer(original, "What moved?")
    original.add_frames(frames(model_type, 3, 1))  # 1 block + 1 frame queued (frames_per_slot 2: Qwen)
    memory = original.save(tmp_path / "video.mem")
    assert original.counters.compressions >= 2

    loaded = open_session(path, backend)
    loaded.load_memory(memory)
    assert loaded.prompt_text() == original.prompt_text()
    assert loaded.stats()["tokens_cached"] == original.stats()["tokens_cached"]
    assert loaded.cache.next_position == original.cache.next_position
    for a, b in zip(original.cache.layers, loaded.cache.layers):
        np.testing.assert_array_equal(a.slot_ids, b.slot_ids)
        np.testing.assert_array_equal(a.positions, b.positions)
    for session in (original, loaded):
        session.add_frames(frames(model_type, 5, 2))
    text_a, logits_a = answer(original, "And then?")
    text_b, logits_b = answer(loaded, "And then?")
    np.testing.assert_allclose(logits_b, logits_a, atol=1e-6, rtol=0)
    assert text_a == text_b
    assert loaded.counters.compressions == original.counters.compressions
    assert loaded.slot_seconds == original.slot_seconds


def test_a_memory_knows_its_slots_timestamps(tiny_qwen_dir, moving_shapes_mp4, tmp_path):
    session = open_session(tiny_qwen_dir, "mlx")
    session.add_video(moving_shapes_mp4)  # 3.0 s at 2 fps: 6 frames, 3 slots of 2 frames
    meta, _ = read(session.save(tmp_path / "m.mem"))
    assert meta["state"]["slot_seconds"] == pytest.approx([0.0, 1.0, 2.0])
    assert meta["state"]["videos"][0]["name"] == moving_shapes_mp4.name
    assert meta["state"]["videos"][0]["content"] == content_hash(moving_shapes_mp4)
    assert meta["model"] == model_identity(tiny_qwen_dir)


# ----- every way a file can be wrong ------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tiny_qwen_dir, tmp_path_factory):
    session = open_session(tiny_qwen_dir, "mlx")
    session.add_frames(frames("qwen2_5_vl", 8, 0))
    return session.save(tmp_path_factory.mktemp("mem") / "good.mem")


def damaged(saved, tmp_path, how: str):
    data = bytearray(saved.read_bytes())
    out = tmp_path / f"{how}.mem"
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":
        data[-100] ^= 0x01  # a byte of the last tensor
    elif how == "version":  # the same header, one character changed: "version":"3" -> "9"
        length = struct.unpack("<Q", data[:8])[0]
        header = bytes(data[8:8 + length])
        assert json.loads(header)["__metadata__"]["version"] == "3" and header.count(b'"version":"3"') == 1
        data[8:8 + length] = header.replace(b'"version":"3"', b'"version":"9"')
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("how,words", [("truncated", ["truncated or damaged", "save it again"]),
                                       ("flipped", ["checksum", "save it again"]),
                                       ("version", ["version 9 memory file", "reads versions 1, 2, 3"])])
def test_a_damaged_file_is_refused_in_one_line(saved, tmp_path, tiny_qwen_dir, how, words):
    path = damaged(saved, tmp_path, how)
    with pytest.raises(MemoryFileError) as err:
        open_session(tiny_qwen_dir, "mlx").load_memory(path)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def as_version_1(saved, out):
    """The same memory as a version 1 file (before 0.2): slot labels named `{layer}.frame`
    and the config's block_slots named block_frames, with its checksum made again."""
    from safetensors.numpy import load, save

    from infinipot_mlx.stream.memory_file import FORMAT, _checksum, _header

    data = saved.read_bytes()
    tensors, meta = load(data), json.loads(_header(data)["infinipot"])
    tensors = {(k[: -len("slot")] + "frame" if k.endswith(".slot") else k): v for k, v in tensors.items()}
    meta["config"]["block_frames"] = meta["config"].pop("block_slots")
    meta["sha256"] = _checksum(tensors, meta)
    out.write_bytes(save(tensors, metadata={"format": FORMAT, "version": "1", "infinipot": json.dumps(meta)}))
    return out


def test_a_version_1_memory_still_loads_and_answers_alike(saved, tiny_qwen_dir, tmp_path):
    old = as_version_1(saved, tmp_path / "v1.mem")
    new_session, old_session = open_session(tiny_qwen_dir, "mlx"), open_session(tiny_qwen_dir, "mlx")
    new_session.load_memory(saved)
    old_session.load_memory(old)
    assert old_session.config == new_session.config and old_session.config.block_slots == 2
    for a, b in zip(old_session.cache.layers, new_session.cache.layers):
        np.testing.assert_array_equal(a.slot_ids, b.slot_ids)
    (text_old, logits_old), (text_new, logits_new) = answer(old_session, "What?"), answer(new_session, "What?")
    assert text_old == text_new
    np.testing.assert_array_equal(logits_old, logits_new)


def test_a_memory_of_another_model_names_both(saved, build_tiny, tmp_path):
    other = build_tiny("qwen2_5_vl", tmp_path / "other", "float32", 1)  # same shapes, other weights
    with pytest.raises(MemoryFileError) as err:
        open_session(other, "mlx").load_memory(saved)
    message = str(err.value)
    assert "made with the model" in message and "weights" in message and "--model" in message, message


def test_an_unwritable_path_is_one_line(tiny_qwen_dir, tmp_path):
    session = open_session(tiny_qwen_dir, "mlx")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(MemoryFileError, match="cannot write the memory file .*choose a writable path"):
        session.save(tmp_path / "file" / "x.mem")


def test_kill_9_during_save_leaves_the_previous_file_whole(tiny_qwen_dir, tmp_path):
    """A child saves the same memory over and over; kill -9 at several moments; every time
    the file on disk is a whole, verified memory (the last one written before the kill)."""
    target = tmp_path / "live.mem"
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import infinipot_mlx
        from infinipot_mlx import InfiniPotConfig
        from infinipot_mlx.mlx.backend import load_model
        from infinipot_mlx.stream.session import StreamSession
        model, tok, spec, path = load_model({str(tiny_qwen_dir)!r})
        s = StreamSession(model, tok, spec, InfiniPotConfig(capacity=2000, block_slots=2), model_dir=path)
        s.add_frames(np.random.default_rng(0).integers(0, 256, (40, 56, 56, 3), dtype=np.uint8))
        s.save({str(target)!r})
        print("ready", flush=True)
        while True:
            s.save({str(target)!r})
    """)
    for delay in (0.0, 0.013, 0.031, 0.057):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        meta, tensors = read(target)  # whole and verified
        assert meta["state"]["counters"]["slots_seen"] == 20 and "0.keys" in tensors


# ----- in the CLI ---------------------------------------------------------------------------------
def chat(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=600)


def answers(out: str) -> list[str]:
    return [line[3:] for line in out.splitlines() if line.startswith("A: ")]


def test_chat_save_then_load_answers_as_one_session(tiny_qwen_dir, moving_shapes_mp4, tmp_path):
    """`chat V -q Q1 --save M` then `chat --load M -q Q2` (no video, no --model: the memory
    names its folder) answers Q2 as `chat V -q Q1 -q Q2` does; `--load M V2` streams more."""
    flags = ("--kv-budget", 700, "--max-tokens", 12)
    whole = chat(moving_shapes_mp4, "--model", tiny_qwen_dir, *flags, "-q", "What moved?", "-q", "And then?")
    assert whole.returncode == 0, whole.stderr
    memory = tmp_path / "shapes.mem"
    first = chat(moving_shapes_mp4, "--model", tiny_qwen_dir, *flags, "-q", "What moved?", "--save", memory)
    assert first.returncode == 0 and memory.is_file() and "memory saved to" in first.stderr, first.stderr
    second = chat("--load", memory, "--max-tokens", 12, "-q", "And then?")
    assert second.returncode == 0, second.stderr
    assert answers(second.stdout) == answers(whole.stdout)[1:]
    assert "streaming" not in second.stderr  # no video, no vision tower: nothing streamed
    assert f"memory {memory}: 3 slots of {moving_shapes_mp4.name}" in second.stdout

    more = chat("--load", memory, moving_shapes_mp4, "--save", memory, "-q", "Again?", "--max-tokens", 4)
    assert more.returncode == 0, more.stderr
    meta, _ = read(memory)
    assert [v["name"] for v in meta["state"]["videos"]] == [moving_shapes_mp4.name] * 2
    assert meta["state"]["slot_video"] == [0, 0, 0, 1, 1, 1]


def test_chat_slash_save_in_the_prompt(tiny_qwen_dir, moving_shapes_mp4, tmp_path):
    target = tmp_path / "prompt.mem"
    out = chat(moving_shapes_mp4, "--model", tiny_qwen_dir, "--max-tokens", 3,
               stdin=f"What moved?\n/save\n/save {target}\n/quit\n")
    assert out.returncode == 0, out.stderr
    assert "/save needs a path" in out.stderr and f"memory saved to {target}" in out.stdout
    meta, _ = read(target)
    assert any("What moved?" in piece for piece in meta["state"]["transcript"])


@pytest.mark.parametrize("how", ["truncated", "flipped", "version"])
def test_chat_load_of_a_damaged_file_is_exit_2(saved, tmp_path, how):
    out = chat("--load", damaged(saved, tmp_path, how), "-q", "Hi?")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr


def test_chat_load_with_another_model_or_backend_is_exit_2(saved, build_tiny, tmp_path):
    other = build_tiny("qwen2_5_vl", tmp_path / "other", "float32", 1)
    wrong_model = chat("--load", saved, "--model", other, "-q", "Hi?")
    assert wrong_model.returncode == 2 and "made with the model" in wrong_model.stderr, wrong_model.stderr
    wrong_backend = chat("--load", saved, "--backend", "reference", "-q", "Hi?")
    assert wrong_backend.returncode == 2 and "--backend mlx" in wrong_backend.stderr, wrong_backend.stderr


def test_chat_save_to_an_unwritable_path_is_refused_before_streaming(moving_shapes_mp4, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = chat(moving_shapes_mp4, "--save", tmp_path / "file" / "x.mem", "-q", "Hi?")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "choose a writable path" in out.stderr
    assert "streaming" not in out.stderr  # refused before the model loads or anything streams
