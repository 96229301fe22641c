"""An OpenAI-compatible server with video memories (`python -m infinipot_mlx.server`).

cli/server.py parses the flags; app.py is the FastAPI app (the routes, errors, SSE);
requests.py reads request bodies; media.py makes videos and frames local; engine.py holds
the model and answers on one model thread (worker.py); pool.py keeps the video memories
(LRU under a byte budget) and the named live sessions; protocol.py is the OpenAI wire format.
"""
