"""MeanVC's published networks (DiT, content ASR, Vocos, WavLM speaker model) served by our runtime."""
