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
from infinipot_mlx.door import stream_source

model_dir, source, *questions = sys.argv[1:] or ["mlx-community/Qwen2.5-VL-7B-Instruct-4bit", "0"]
session = infinipot_mlx.load(model_dir, InfiniPotConfig(capacity=6144, reserve=512))
video = session.open_video(int(source) if source.isdigit() else source)
readers, reading = [], threading.Event()  # the reader thread stream_source starts (drops, lag)


def started(reader):
    readers.append(reader)
    reading.set()


# the same streaming loop as chat's and the server's (door.py); a file is played in real time
feeder = threading.Thread(target=stream_source, args=(session, video),
                          kwargs=dict(realtime=video.kind == "file", reader_hook=started))
feeder.start()
reading.wait()
reader = readers[0]
for question in questions or ["What is happening now?", "And now?"]:
    time.sleep(2.0)  # the stream goes on meanwhile
    answer = "".join(session.ask(question, max_tokens=32))
    print(f"[{session.counters.frames_seen} frames in, {reader.dropped} dropped, lag {reader.lag():.1f}s] "
          f"Q: {question}\nA: {answer}")
if video.kind != "file":
    reader.stop()  # a camera never ends by itself; a file plays to its end
feeder.join()  # stream_source flushes the frames of an unfinished block
print(f"streamed {session.counters.frames_seen} frames; {session.cache.n_cached} tokens cached")
