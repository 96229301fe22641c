"""What ends an answer: generation_config.json's eos_token_id list, the chat template's end
token and the tokenizer's eos, one shared stop set for the MLX and the reference backend.

Qwen/Qwen2.5-VL-7B-Instruct lists eos_token_id [151645, 151643] (`<|im_end|>`,
`<|endoftext|>`); the tiny checkpoints carry the same two tokens under the tiny ids.
A decode is stopped by a token listed only in generation_config.json: the sampler is
wrapped to emit it (an injected event; the models, caches and answer loop run for real).
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.stream.session import StreamSession
from infinipot_mlx.stream.answer import eos_ids
from infinipot_mlx.contract.specs import CheckpointConfigError, load_spec

MODEL_DIRS = {"qwen2_5_vl": "tiny_qwen_dir", "llava_onevision": "tiny_llava_dir"}
FRAME_SIDE = {"qwen2_5_vl": 112, "llava_onevision": 98}
CASES = [(m, b) for m in MODEL_DIRS for b in ("mlx", "torch")]


def token_id(path, token: str) -> int:
    """A special token's id, read from the written tokenizer_config.json."""
    decoder = json.loads((path / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    return next(int(i) for i, entry in decoder.items() if entry["content"] == token)


def without_generation_config(path, tmp_path):
    """A copy of the checkpoint folder with no generation_config.json."""
    copy = tmp_path / "no_generation_config"
    shutil.copytree(path, copy)
    (copy / "generation_config.json").unlink()
    return copy


@pytest.mark.parametrize("model_type", list(MODEL_DIRS))
def test_spec_reads_the_generation_config_eos_list(model_type, request):
    path = request.getfixturevalue(MODEL_DIRS[model_type])
    im_end, endoftext = token_id(path, "<|im_end|>"), token_id(path, "<|endoftext|>")
    written = json.loads((path / "generation_config.json").read_text())["eos_token_id"]
    assert written == [im_end, endoftext]  # the published order, mapped to the tiny ids
    assert load_spec(path).eos_token_ids == (im_end, endoftext)


def test_without_generation_config_the_config_eos_is_used(tiny_qwen_dir, tmp_path):
    copy = without_generation_config(tiny_qwen_dir, tmp_path)
    assert load_spec(copy).eos_token_ids == (token_id(copy, "<|im_end|>"),)
    config = json.loads((copy / "config.json").read_text())
    del config["eos_token_id"]
    (copy / "config.json").write_text(json.dumps(config))
    assert load_spec(copy).eos_token_ids == ()  # nothing listed anywhere: still a spec


def test_an_int_eos_and_a_malformed_one(tiny_qwen_dir, tmp_path):
    copy = without_generation_config(tiny_qwen_dir, tmp_path)
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert load_spec(copy).eos_token_ids == (7,)
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": ["<|im_end|>"]}))
    with pytest.raises(CheckpointConfigError, match="generation_config.json has eos_token_id"):
        load_spec(copy)


def test_both_backends_share_one_stop_set():
    from infinipot_mlx.reference.backend import TorchBackend
    from infinipot_mlx.mlx.backend import MLXBackend

    assert MLXBackend.eos_ids is TorchBackend.eos_ids is eos_ids


class ForcedTokens:
    """A session backend whose sampler emits `tokens` in turn (the logits are still computed)."""

    def __init__(self, inner, tokens: list[int]):
        self.inner, self.tokens, self.seen = inner, list(tokens), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def make_sampler(self, temperature: float, top_p: float):
        sample = self.inner.make_sampler(temperature, top_p)

        def forced(logits) -> int:
            sample(logits)  # the real sampler runs on the real logits
            self.seen += 1
            return self.tokens[self.seen - 1]

        return forced


def loaded(path, backend: str):
    if backend == "mlx":
        from infinipot_mlx.mlx import backend as module

        return module, module.load_model(str(path))
    from infinipot_mlx.reference import backend as module

    return module, module.load_model(str(path), device="cpu")


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request):
    model_type, backend = request.param
    path = request.getfixturevalue(MODEL_DIRS[model_type])
    _, (model, tok, spec, _) = loaded(path, backend)
    return backend, model, tok, spec, path, model_type


def answer_with(case, spec, forced: list[int]):
    """(answer text, session) after one question whose answer tokens are `forced`."""
    backend, model, tok, _, _, model_type = case
    config = InfiniPotConfig(capacity=400, reserve=64, block_slots=2)
    session = StreamSession(model, tok, spec, config, "mlx" if backend == "mlx" else "reference")
    side = FRAME_SIDE[model_type]
    session.add_frames(np.random.default_rng(0).integers(0, 256, (4, side, side, 3), dtype=np.uint8))
    session.backend = ForcedTokens(session.backend, forced)
    return "".join(session.ask("What moved?", max_tokens=len(forced))), session


def test_a_token_listed_only_in_generation_config_stops_the_answer(case):
    _, _, tok, spec, path, _ = case
    endoftext = token_id(path, "<|endoftext|>")
    assert endoftext != tok.eos_token_id and endoftext != tok.convert_tokens_to_ids(spec.pieces.eos)
    assert endoftext in eos_ids(tok, spec)
    words = tok.encode(" the cat", add_special_tokens=False)[:2]
    answer, session = answer_with(case, spec, words + [endoftext, *words])
    # 4 samples: the decode is pipelined, so the token after the EOS is sampled ahead and undone
    assert session.stop_reason == "eos" and session.backend.seen == 4
    assert answer == tok.decode(words, skip_special_tokens=True) and session.counters.tokens_decoded == 2
    assert session.prompt_text().endswith(tok.decode(words) + spec.pieces.answer_close)


def test_without_the_generation_config_entry_the_same_token_does_not_stop_it(case):
    _, _, tok, spec, path, _ = case
    endoftext = token_id(path, "<|endoftext|>")
    bare = dataclasses.replace(spec, eos_token_ids=())
    assert endoftext not in eos_ids(tok, bare)
    words = tok.encode(" the cat", add_special_tokens=False)[:2]
    _, session = answer_with(case, bare, words + [endoftext, *words])
    assert session.stop_reason == "max_tokens" and session.backend.seen == 5


def test_the_chat_template_end_token_still_stops_the_answer(case):
    _, _, tok, spec, _, _ = case
    im_end = tok.convert_tokens_to_ids(spec.pieces.eos)
    bare = dataclasses.replace(spec, eos_token_ids=())
    words = tok.encode(" the cat", add_special_tokens=False)[:2]
    answer, session = answer_with(case, bare, words[:1] + [im_end] + words)
    assert session.stop_reason == "eos" and session.backend.seen == 3  # one sampled ahead, undone
    assert answer == tok.decode(words[:1], skip_special_tokens=True) and session.counters.tokens_decoded == 1


@pytest.mark.parametrize("stop_at", [None, 3], ids=["max_tokens", "eos_mid_answer"])
def test_feeding_ahead_leaves_what_a_step_by_step_decode_leaves(case, stop_at):
    """The pipelined decode (a token fed while it is computed, undone when it ends the answer)
    leaves the same answer, cache rows (bit for bit), positions and transcript as the same
    decode done one step at a time (the session told that room is never free as it is, so it
    waits for each token, checks it, then feeds it)."""
    backend, model, tok, spec, path, model_type = case
    im_end = tok.convert_tokens_to_ids(spec.pieces.eos)
    words = tok.encode(" the cat sat on a mat and then", add_special_tokens=False)[:6]
    forced = words if stop_at is None else words[:stop_at] + [im_end] + words[stop_at:]
    results = []
    for step_by_step in (False, True):
        config = InfiniPotConfig(capacity=400, reserve=64, block_slots=2)
        session = StreamSession(model, tok, spec, config, "mlx" if backend == "mlx" else "reference")
        side = FRAME_SIDE[model_type]
        session.add_frames(np.random.default_rng(0).integers(0, 256, (4, side, side, 3), dtype=np.uint8))
        session.backend = ForcedTokens(session.backend, forced)
        if step_by_step:
            session._room_is_free = lambda n_tokens: False  # never feed ahead
        answer = "".join(session.ask("What moved?", max_tokens=len(words)))
        rows = [{k: (session.backend.to_numpy(v) if k in ("keys", "values") else v)
                 for k, v in layer.rows().items()} for layer in session.cache.layers]
        state = (answer, session.stop_reason, session.prompt_text(), session.cache.next_position,
                 session.counters.tokens_decoded)
        results.append((state, rows))
    (ahead, ahead_rows), (stepped, stepped_rows) = results
    assert ahead == stepped and ahead[1] == ("eos" if stop_at else "max_tokens")
    for layer_a, layer_b in zip(ahead_rows, stepped_rows):
        for name in layer_a:
            np.testing.assert_array_equal(layer_a[name], layer_b[name])
