"""MLX against the PyTorch reference on one video: same frames, same kept tokens, same logits.

    python examples/parity_one_video.py HF_CHECKPOINT VIDEO

HF_CHECKPOINT is a float32 Hugging Face folder that both backends can load (for example a
model saved by transformers, or one made by conversions/make_tiny_checkpoint.py).
`python -m infinipot_mlx.parity` is the full check; this is the idea in a few lines.
"""

import sys

import numpy as np

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.mlx import backend as mlx
from infinipot_mlx.reference import backend as reference

model_dir, video = sys.argv[1:3] if len(sys.argv) > 2 else ("path/to/hf-checkpoint", "video.mp4")
config = InfiniPotConfig(capacity=1024, reserve=128, block_slots=2)
sessions = [mlx.load(model_dir, config, record_kept=True),
            reference.load(model_dir, config, device="cpu", dtype="float32", record_kept=True)]
source = sessions[0].open_video(video, max_frames=32)  # read and resized once, for both
frames, stamps = source.read()
for session in sessions:
    session.fit_frame_size(source.source_size)
    session.add_frames(frames, stamps)
    "".join(session.ask("What happened in the video?", max_tokens=8))
a, b = sessions
same_kept = all(np.array_equal(x, y) for step_a, step_b in zip(a.kept_log, b.kept_log)
                for x, y in zip(step_a, step_b))
gap = float(np.abs(a.question_logits - b.question_logits).max())
print(f"{len(a.kept_log)} compressions, same kept (frame, patch) sets: {same_kept}; "
      f"max logit difference {gap:.1e}")
