"""The streaming loop, backend-agnostic: the session decides when to compress.

session (StreamSession), feed (frames in, blocks out), room (what gives way under the cap,
and the compression step), answer (the answer loop), evidence (the moments an answer rests
on; the memory map), memory_file (a video memory on disk), locking (one call at a time),
protocols (what the loop asks of an adapter and a backend).
"""
