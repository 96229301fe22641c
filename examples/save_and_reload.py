"""Watch a video once, keep its memory on disk, and answer later without the video.

    python examples/save_and_reload.py MODEL_DIR VIDEO MEMORY_FILE

The second session loads the memory (checksum, format and model identity verified) and
continues exactly where the first stopped; it also shows the moments its answer rests on.
"""

import sys

import infinipot_mlx
from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.stream.evidence import format_moments

model_dir, video, memory = sys.argv[1:4] if len(sys.argv) > 3 else (
    "mlx-community/Qwen2.5-VL-7B-Instruct-4bit", "video.mp4", "video.mem")

first = infinipot_mlx.load(model_dir, InfiniPotConfig(capacity=6144, reserve=512))
first.add_video(video)
saved = first.save(memory)  # atomic: a process killed here leaves the previous file whole
print(f"saved {first.counters.slots_seen} slots of {video} to {saved} ({saved.stat().st_size / 1e6:.1f} MB)")
del first  # later, in another process: nothing of the video is needed again

later = infinipot_mlx.load(model_dir)
later.load_memory(memory)  # its own InfiniPotConfig and fps come with it
later.record_evidence = True
print("A:", "".join(later.ask("What happened in the video?", max_tokens=32)))
print(format_moments(later.evidence))
