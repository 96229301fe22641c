"""Writers of hub-layout checkpoints (config, safetensors, tokenizer with the real special
tokens and chat template, processor configs). Tools, not runtime: tests, conversions, the
organism and the benchmarks use them; the session and the backends never import them."""
