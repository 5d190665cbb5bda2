"""Pocket TTS (Kyutai) on our runtime: flow LM, Mimi, text handling, the published release."""
