"""Phoneme error rate of any 16 kHz speech, by the VC family's streaming content recognizer.

The recognizer is a CTC model trained on espeak-ng audio only (never on TTS or VC output), with
espeak-ng's own phonemes as labels; it ships inside the VC checkpoint. Speech benches use it as an
intelligibility measure that, unlike the vocabulary-limited pocketsphinx WER, works on any sentence:
reference phonemes come from the text through espeak-ng (``models.speech_text.phonemize``) in the
speaker's accent. It is a model trained on synthetic voices, so compare systems against the espeak-ng
reference under the same recognizer rather than reading the rate as an absolute.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from models.speech_text import normalize_text, phonemize
from models.vc.phonemes import ctc_labels, greedy_ctc, phoneme_errors

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "vc_default.safetensors")


class PhonemeRecognizer:
    """Greedy-CTC phoneme recognition with the content encoder of a VC checkpoint."""

    def __init__(self, checkpoint: str | None = None, model=None, symbols: list[str] | None = None) -> None:
        if model is None:
            from models.vc.checkpoint import load_checkpoint

            loaded = load_checkpoint(checkpoint or DEFAULT_CHECKPOINT)
            model, symbols = loaded.model, loaded.symbols
        self.model, self.symbols = model, list(symbols or [])

    @torch.inference_mode()
    def recognize(self, audio: np.ndarray) -> list[str]:
        """Phoneme tokens heard in 16 kHz float audio."""
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        content = self.model.content_offline(x)
        return greedy_ctc(self.model.content.logits(content)[0], self.symbols)

    def reference(self, text: str, language: str = "en-us") -> list[str]:
        """The phonemes espeak-ng gives a text, reduced to the recognizer's classes."""
        return [self.symbols[i] for i in ctc_labels(phonemize(normalize_text(text), language), self.symbols)]

    def per(self, items: Iterable[tuple[str, str, np.ndarray]]) -> float:
        """Corpus phoneme error rate over (text, language, audio) triples."""
        errors = total = 0
        for text, language, audio in items:
            ref = self.reference(text, language)
            errors += phoneme_errors(ref, self.recognize(audio))
            total += len(ref)
        return errors / max(1, total)


def phoneme_error_rate(items: Iterable[tuple[str, str, np.ndarray]], checkpoint: str | None = None) -> float:
    """PER of (text, language, 16 kHz audio) triples under the shipped content recognizer."""
    return PhonemeRecognizer(checkpoint).per(items)


def load_recognizer(path: str | None) -> PhonemeRecognizer | None:
    """The content recognizer from a VC checkpoint (.safetensors) or a VC run's ``content.pt``; None if absent."""
    path = path or DEFAULT_CHECKPOINT
    if not Path(path).exists():
        return None
    if path.endswith(".safetensors"):
        return PhonemeRecognizer(path)
    from models.vc.model import VCConfig, VCModel

    saved = torch.load(path, map_location="cpu")
    model = VCModel(VCConfig.from_dict(saved["cfg"])).eval()
    model.mel.load_state_dict(saved["mel"])
    model.content.load_state_dict(saved["content"])
    return PhonemeRecognizer(model=model, symbols=saved["symbols"])
