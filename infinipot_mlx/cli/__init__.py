"""The command lines: chat (and its --demo), parity, bench. Each parses, prints and reports
errors; the work is in the session and the backends. `python -m infinipot_mlx.chat`,
`.parity` and `.bench` are the entry points (thin modules that call these)."""
