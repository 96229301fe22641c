"""The answer's streaming detokenizer (answer.TextStream): the pieces it yields join to the
full decode, whatever the tokens (multi-byte characters split over tokens, special tokens),
and it holds back an unfinished character until it is complete."""

import numpy as np
import pytest
import transformers

from infinipot_mlx.stream.answer import TextStream


@pytest.fixture(scope="module", params=["tiny_qwen_dir", "tiny_llava_dir"])
def tokenizer(request):
    return transformers.AutoTokenizer.from_pretrained(str(request.getfixturevalue(request.param)))


def stream(tokenizer, tokens: list[int]) -> tuple[list[str], str]:
    text = TextStream(tokenizer)
    pieces = [text.add(t) for t in tokens]
    return pieces + [text.flush()], text.text


@pytest.mark.parametrize("seed", range(20))
def test_pieces_join_to_the_full_decode_for_random_tokens(tokenizer, seed):
    tokens = np.random.default_rng(seed).integers(0, len(tokenizer), 40).tolist()  # specials too
    pieces, text = stream(tokenizer, tokens)
    assert "".join(pieces) == text == tokenizer.decode(tokens, skip_special_tokens=True)


def test_multibyte_text_round_trips_and_waits_for_whole_characters(tokenizer):
    sentence = "Le chat noir 🐈‍⬛ traverse la rue — 猫が道を渡る。Ünïcödé!"
    tokens = tokenizer.encode(sentence, add_special_tokens=False)
    pieces, text = stream(tokenizer, tokens)
    assert text == sentence and "".join(pieces) == sentence
    assert not any("\ufffd" in p for p in pieces)  # never half a character
    assert len(tokens) > len([p for p in pieces if p])  # some tokens completed no character alone


def test_a_cut_multibyte_character_comes_out_at_the_end(tokenizer):
    tokens = tokenizer.encode("ok 🐈", add_special_tokens=False)
    pieces, text = stream(tokenizer, tokens[:-1])  # the cat's last byte never arrives
    assert "".join(pieces) == tokenizer.decode(tokens[:-1], skip_special_tokens=True)
