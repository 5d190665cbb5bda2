"""Long interactive text-to-video after LongLive: block-causal DiT, sink + window KV cache, KV-recache."""
