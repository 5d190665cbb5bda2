"""Wan2.1-T2V-1.3B as LongLive publishes it: DiT on our ring cache, streaming causal VAE, umT5 text path."""
