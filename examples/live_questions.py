"""Ask while a camera, a stream URL or a file played in real time streams.

    python examples/live_questions.py MODEL_DIR SOURCE [QUESTION ...]

SOURCE is a camera index (0), a URL (rtsp://...) or a file, which is played at its own
speed as a camera would deliver it. One thread feeds frames while this one asks: the session
runs them one at a time, and frames the model cannot keep up with are dropped (counted).
"""

import sys
import threading
import time

import infinipot_mlx
from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.video.reader import FrameReader

model_dir, source, *questions = sys.argv[1:] or ["mlx-community/Qwen2.5-VL-7B-Instruct-4bit", "0"]
session = infinipot_mlx.load(model_dir, InfiniPotConfig(capacity=6144, reserve=512))
video = session.open_video(int(source) if source.isdigit() else source)
reader = FrameReader(video, realtime=video.kind == "file", depth=2 * session.frames_per_block)


def feed():
    for frames, timestamps in reader.chunks(session.frames_per_block):
        session.add_frames(frames, timestamps)


feeder = threading.Thread(target=feed)
feeder.start()
for question in questions or ["What is happening now?", "And now?"]:
    time.sleep(2.0)  # the stream goes on meanwhile
    answer = "".join(session.ask(question, max_tokens=32))
    print(f"[{session.counters.frames_seen} frames in, {reader.dropped} dropped, lag {reader.lag():.1f}s] "
          f"Q: {question}\nA: {answer}")
if video.kind != "file":
    reader.stop()  # a camera never ends by itself; a file plays to its end
feeder.join()
session.flush()  # the frames of an unfinished block
print(f"streamed {session.counters.frames_seen} frames; {session.cache.n_cached} tokens cached")
