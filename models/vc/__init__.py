"""Streaming voice conversion (after MeanVC): content recognizer, speaker encoder, chunk-wise mean-flow DiT."""
