"""Qwen2-style byte-level BPE tokenizers with the published special tokens and chat templates.

Used by checkpoints.py to write tiny (or organism-trained) checkpoints in the hub layout.
The vocabulary is ordered as on the hub: regular BPE tokens first, then the special tokens
in their real order, so the special-token ids are `vocab_size - n_special + i`. Imports only
`tokenizers` (no torch, no transformers).
"""

from __future__ import annotations

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.trainers import BpeTrainer

# Qwen2's pre-tokenizer regex (transformers' tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# (token, special) in the order of Qwen/Qwen2.5-VL-7B-Instruct's added_tokens_decoder (151643..).
QWEN2_5_VL_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]

# llava-hf/llava-onevision-qwen2-7b-ov-hf: Qwen2's three, then <image> (151646), <video> (151647).
LLAVA_ONEVISION_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<image>", True), ("<video>", True),
]

# Qwen/Qwen2-VL-7B-Instruct: the first 14 of Qwen2.5-VL's (<|endoftext|> .. <|video_pad|>,
# 151643..151656); the tool-call and FIM tokens came with Qwen2.5.
QWEN2_VL_ADDED_TOKENS = QWEN2_5_VL_ADDED_TOKENS[:14]

# Qwen/Qwen3-VL-8B-Instruct (Qwen3's tokenizer): Qwen2.5-VL's 22 (151643..151664), then the tool
# response and thinking tags (151665..151668), not special. Written without network access.
QWEN3_VL_ADDED_TOKENS = QWEN2_5_VL_ADDED_TOKENS + [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]

ADDED_TOKENS = {"qwen2_5_vl": QWEN2_5_VL_ADDED_TOKENS, "qwen2_vl": QWEN2_VL_ADDED_TOKENS,
                "llava_onevision": LLAVA_ONEVISION_ADDED_TOKENS, "qwen3_vl": QWEN3_VL_ADDED_TOKENS}

# Qwen/Qwen2.5-VL-7B-Instruct chat_template.json (the Qwen2-VL template, verbatim).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# llava-hf/llava-onevision-qwen2-7b-ov-hf chat template (transformers' conversion script).
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen/Qwen3-VL-8B-Instruct chat_template.json, written from memory without network access.
# Unlike Qwen2.5-VL: no default system message (only a given one is written), content items
# read as content.text, assistant tool calls, and tool results wrapped in <tool_response>.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {%- if messages[0].content is string %}\n"
    "            {{- messages[0].content }}\n"
    "        {%- else %}\n"
    "            {%- for content in messages[0].content %}\n"
    "                {%- if 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '\\n\\n' }}\n"
    "    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' }}\n"
    "        {%- if messages[0].content is string %}\n"
    "            {{- messages[0].content }}\n"
    "        {%- else %}\n"
    "            {%- for content in messages[0].content %}\n"
    "                {%- if 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set image_count = namespace(value=0) %}\n"
    "{%- set video_count = namespace(value=0) %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == \"user\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n"
    "                {%- elif 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content_item in message.content %}\n"
    "                {%- if 'text' in content_item %}\n"
    "                    {{- content_item.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and message.content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n"
    "                {%- elif 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

CHAT_TEMPLATES = {"qwen2_5_vl": QWEN2_5_VL_CHAT_TEMPLATE, "qwen2_vl": QWEN2_5_VL_CHAT_TEMPLATE,
                  "llava_onevision": LLAVA_ONEVISION_CHAT_TEMPLATE, "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE}
MODEL_MAX_LENGTH = {"qwen2_5_vl": 131072, "qwen3_vl": 262144}  # others: 32768

DEFAULT_CORPUS = [
    "You are a helpful assistant.",
    "Describe this video in detail.",
    "What happens in the video? A red ball moves from left to right.",
    "A blue square appears in the middle of the frame and then disappears.",
    "The camera is static; a person walks into the room and sits down.",
    "How many objects are there? There are three objects on the table.",
    "What color is the car? The car is green and it drives along the road.",
    "The cat jumps onto the sofa, then the dog barks at the window.",
    "Answer with a single word: yes or no.",
    "Which of the following options is correct? (A) red (B) green (C) blue (D) yellow",
    "At the beginning of the clip a woman opens the door and waves.",
    "At the end of the video the light turns off and the screen is dark.",
    "Summarize the events in chronological order.",
    "The weather is sunny, the sky is clear and the trees move in the wind.",
    "Streaming video understanding keeps a bounded memory of past frames.",
    "The key value cache is compressed when it reaches its capacity.",
    "Tokens with a large value norm carry semantic information.",
    "Temporal redundancy is measured with the cosine similarity of keys.",
    "The quick brown fox jumps over the lazy dog 0123456789 times.",
    "Where is the white circle? It is in the top left corner.",
    "Who is speaking? A man in a black jacket is speaking to the audience.",
    "Count the people: one, two, three, four, five, six, seven, eight.",
    "Is the door open or closed? The door is closed at first and open later.",
    "What is the person holding? She is holding a cup of coffee.",
    "The children play football in the park after school.",
    "A train arrives at the station and the passengers get off.",
    "The chef cuts vegetables, boils water and cooks pasta in the kitchen.",
    "Please think step by step, then give the final answer.",
    "Hello! How can I help you today? Thanks, bye.",
    "Numbers: 1, 2, 3, 10, 42, 100, 2024, 3.14; symbols: + - * / = % & # @ ( ) [ ] { } < > ! ?",
    "def main():\n    print('hello world')\n    return 0\n",
    "Tables, chairs, lamps, windows, doors, walls, floors and ceilings.",
    "Morning, noon, evening and night; spring, summer, autumn and winter.",
    "The yellow triangle rotates slowly while the purple rectangle slides down.",
    "Short events happen in an otherwise static scene.",
    "Frames are sampled at two frames per second and resized to multiples of 28.",
]


def _bare_tokenizer() -> Tokenizer:
    """A Qwen2 pipeline (NFC, regex split, byte level) around an empty BPE model."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def build_tokenizer(vocab_size: int, model_type: str, corpus: list[str] | None = None) -> Tokenizer:
    """Train a byte-level BPE on `corpus`, then append `model_type`'s special tokens.

    Args:
        vocab_size: total size, special tokens included (the config's vocab_size).
        model_type: "qwen2_5_vl" or "llava_onevision" (selects the special tokens).
        corpus: training sentences; DEFAULT_CORPUS when None.
    Returns:
        a tokenizers.Tokenizer with exactly vocab_size tokens.
    """
    added = _added_tokens(model_type)
    n_regular = vocab_size - len(added)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if n_regular < len(alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} is too small: the byte alphabet needs {len(alphabet)} ids "
            f"plus {len(added)} special tokens; use at least {len(alphabet) + len(added)}."
        )
    tok = _bare_tokenizer()
    trainer = BpeTrainer(vocab_size=n_regular, initial_alphabet=alphabet, special_tokens=[],
                         show_progress=False)
    tok.train_from_iterator(corpus or DEFAULT_CORPUS, trainer=trainer)
    if tok.get_vocab_size() != n_regular:
        raise ValueError(
            f"the corpus yields only {tok.get_vocab_size()} BPE tokens but vocab_size {vocab_size} "
            f"needs {n_regular}; pass a larger corpus or a smaller vocab_size."
        )
    tok.add_tokens([AddedToken(t, special=special, normalized=False) for t, special in added])
    return tok


def _added_tokens(model_type: str) -> list[tuple[str, bool]]:
    if model_type not in ADDED_TOKENS:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(ADDED_TOKENS)}.")
    return ADDED_TOKENS[model_type]


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Map each added (special) token to its id, e.g. {'<|video_pad|>': 509, ...}."""
    return {tok.content: idx for idx, tok in tokenizer.get_added_tokens_decoder().items()}


def tokenizer_config(tokenizer: Tokenizer, model_type: str) -> dict:
    """tokenizer_config.json as published for `model_type` (added_tokens_decoder, chat template)."""
    added = _added_tokens(model_type)
    ids = special_token_ids(tokenizer)
    decoder = {
        str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": special}
        for t, special in added
    }
    extra = [t for t, special in added[1:] if special]
    if model_type == "llava_onevision":
        extra = ["<|im_start|>", "<|im_end|>"]
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATES[model_type],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH.get(model_type, 32768),
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    return config
