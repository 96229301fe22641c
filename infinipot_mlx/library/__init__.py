"""A personal video library: `python -m infinipot_mlx.library index FOLDER | list | ask "Q"`.

Every video of a folder is streamed once into a saved video memory (memories.py), and a
SQLite catalogue (catalogue.py) records each one: done (its memory file, size, duration,
model, date) or failed (its one-line reason). Questions are then answered from the saved
memories, without reading the videos again, and ranked across the library by search.py
(import it as infinipot_mlx.library.search: it opens sessions through the door, which
imports this package). The command line is cli/library.py; the catalogue imports no array
library.
"""

from .catalogue import (CATALOGUE, MEMORIES, Catalogue, CatalogueError, Entry, memory_name, model_key,
                        settings_json)

__all__ = ["CATALOGUE", "MEMORIES", "Catalogue", "CatalogueError", "Entry", "memory_name", "model_key",
           "settings_json"]
