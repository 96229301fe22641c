"""Stream a video file under a KV cap, then ask about it.

    python examples/stream_and_ask.py MODEL_DIR VIDEO [QUESTION ...]

MODEL_DIR is a Qwen2.5-VL or LLaVA-OneVision checkpoint folder (an mlx-community
conversion, or one made by conversions/convert.py).
"""

import sys

import infinipot_mlx
from infinipot_mlx import InfiniPotConfig

model_dir, video, *questions = sys.argv[1:] or ["mlx-community/Qwen2.5-VL-7B-Instruct-4bit", "video.mp4"]
session = infinipot_mlx.load(model_dir, InfiniPotConfig(capacity=6144, reserve=512), fps=2.0)
session.add_video(video)  # frames sized for the cap, block by block, each frame's own timestamp
print(f"streamed {session.counters.frames_seen} frames; {session.cache.n_cached} tokens cached "
      f"of {session.config.capacity}, {session.counters.compressions} compressions")
for question in questions or ["What happened in the video?", "What happened after that?"]:
    print(f"Q: {question}\nA: ", end="", flush=True)
    for piece in session.ask(question, max_tokens=64):
        print(piece, end="", flush=True)
    print(f"   [{session.stop_reason}]")
