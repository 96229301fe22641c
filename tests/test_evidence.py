"""Evidence (evidence.py): the attention the question's last token pays to each kept slot,
computed explicitly on MLX and taken from transformers' eager attention on the reference,
equal on both; the moments it names; the CLI's --evidence, /evidence and --memory-map."""

import subprocess
import sys

import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.stream.evidence import Moment, format_moments, moments, slot_mass
from infinipot_mlx.contract.positions import text_positions
from infinipot_mlx.stream.session import StreamSession

SIDE = {"qwen2_5_vl": 112, "qwen2_vl": 112, "llava_onevision": 98, "qwen3_vl": 96}
DIRS = {"qwen2_5_vl": "tiny_qwen_dir", "qwen2_vl": "tiny_qwen2_vl_dir", "llava_onevision": "tiny_llava_dir",
        "qwen3_vl": "tiny_qwen3_vl_dir"}


def session_on(path, backend: str, model_type: str) -> StreamSession:
    if backend == "mlx":
        from infinipot_mlx.mlx.backend import load_model
        model, tok, spec, _ = load_model(str(path))
    else:
        from infinipot_mlx.reference.backend import load_model
        model, tok, spec, _ = load_model(str(path), device="cpu")
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=160, reserve=40, block_slots=2), backend)
    side = SIDE[model_type]
    session.add_frames(np.random.default_rng(0).integers(0, 256, (16, side, side, 3), dtype=np.uint8))
    session.flush()
    return session


@pytest.mark.parametrize("model_type", list(DIRS))
def test_attention_is_the_same_on_both_backends_and_leaves_logits_alone(model_type, request):
    """After compressions, the question's forward_attending gives the logits of forward()
    (MLX: exactly) and per-layer masses that match transformers' eager attention."""
    path = request.getfixturevalue(DIRS[model_type])
    results = []
    for backend in ("mlx", "reference"):
        session = session_on(path, backend, model_type)
        assert session.counters.compressions >= 2
        session._close_video()
        ids = session._encode("What moved?")
        positions = text_positions(session.cache.next_position, len(ids), session.spec.position_axes)
        snapshot = session.cache.snapshot()
        plain = session.backend.to_numpy(session.adapter.forward(session.adapter.embed_tokens(ids), positions,
                                                                 session.cache))
        session.cache.restore(snapshot)
        logits, masses = session.adapter.forward_attending(session.adapter.embed_tokens(ids), positions,
                                                           session.cache)
        logits = session.backend.to_numpy(logits)
        if backend == "mlx":
            np.testing.assert_array_equal(logits, plain)
        else:
            np.testing.assert_allclose(logits, plain, atol=1e-5, rtol=0)  # eager vs sdpa kernels
        assert len(masses) == session.spec.num_layers
        for mass, layer in zip(masses, session.cache.layers):
            assert mass.shape == layer.slot_ids.shape  # (H_kv, n_cached)
            groups = round(float(mass.sum(axis=1)[0]))  # one unit of mass per query head of the group
            assert groups >= 1
            np.testing.assert_allclose(mass.sum(axis=1), groups, rtol=1e-5)
        results.append((logits, masses, [layer.slot_ids.copy() for layer in session.cache.layers]))
    (_, mlx_mass, mlx_ids), (_, ref_mass, ref_ids) = results
    for a, b, fa, fb in zip(mlx_mass, ref_mass, mlx_ids, ref_ids):
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_moments_sum_mass_per_slot_over_layers_and_heads():
    slot_ids = [np.array([[-1, 0, 0, 1, 2], [-1, 0, 1, 2, 2]])] * 2  # 2 layers, 2 KV heads, 5 rows
    masses = [np.array([[0.5, 0.1, 0.1, 0.2, 0.1], [0.2, 0.3, 0.1, 0.3, 0.1]])] * 2
    np.testing.assert_allclose(slot_mass(masses, slot_ids, 3), [1.0, 0.6, 1.0])
    found = moments(masses, slot_ids, [0.0, 61.0, 3725.0], [0, 0, 1], [{"name": "a.mp4"}, {"name": "b.mp4"}])
    assert [m.slot for m in found] == [0, 2, 1]
    assert [round(m.share, 3) for m in found] == [0.385, 0.385, 0.231]
    assert [m.clock for m in found] == ["00:00", "1:02:05", "01:01"]
    assert format_moments(found) == "evidence: a.mp4 00:00 (38%), b.mp4 1:02:05 (38%), a.mp4 01:01 (23%)"
    assert format_moments([Moment(3, 75.0, "v", 0.5)]) == "evidence: 01:15 (50%)"


def test_chat_prints_evidence_and_draws_the_memory_map(tiny_qwen_dir, static_events_mp4, tmp_path):
    png = tmp_path / "map.png"
    out = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(static_events_mp4), "--model",
                          str(tiny_qwen_dir), "--kv-budget", "240", "--reserve", "60", "--max-tokens", "3",
                          "--evidence", "--memory-map", str(png), "-q", "What happened?"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("evidence: "))
    stamps = [part.split()[0] for part in line[len("evidence: "):].split(", ")]
    assert 1 <= len(stamps) <= 3 and all(0 <= int(s[:2]) * 60 + int(s[3:5]) < 10 for s in stamps), line
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"memory map drawn to {png}" in out.stderr

    prompt = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(static_events_mp4), "--model",
                             str(tiny_qwen_dir), "--max-tokens", "2"], input="/evidence\nWhat?\n/evidence\n/quit\n",
                            capture_output=True, text=True, timeout=600)
    assert prompt.returncode == 0, prompt.stderr
    assert "evidence: ask a question first" in prompt.stdout
    assert prompt.stdout.count("evidence: 00:") == 1
