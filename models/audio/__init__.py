"""Audio mechanisms shared by the speech families (TTS, voice conversion): DSP helpers and the waveform VAE."""
