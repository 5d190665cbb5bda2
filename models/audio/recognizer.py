"""Word error rate of synthesized speech with pocketsphinx, restricted to a known vocabulary (JSGF).

pocketsphinx's general language model gets ~90% WER on espeak-ng speech, references included, so the
speech benches and tests decode with a JSGF word-loop grammar over the evaluation sentences' vocabulary:
it measures whether the words are *acoustically* recognizable, not open-vocabulary intelligibility.
Compare a model against the espeak-ng reference under the same recognizer (the ratio is the number
that means something). Optional dependency: ``pip install pocketsphinx`` (it ships its English model).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable

import numpy as np


def words_of(text: str) -> list[str]:
    """Lower-case words of a sentence, punctuation dropped."""
    return re.findall(r"[a-z']+", text.lower())


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


class JsgfRecognizer:
    """pocketsphinx with a word-loop grammar over ``vocabulary`` (words missing from its dictionary are dropped)."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        from pocketsphinx import Config, Decoder, get_model_path

        model = get_model_path()
        dict_path = os.path.join(model, "en-us", "cmudict-en-us.dict")
        known = set()
        with open(dict_path) as f:
            for line in f:
                known.add(line.split(" ", 1)[0].split("(")[0])
        self.vocabulary = sorted(w for w in set(vocabulary) if w in known)
        self.missing = sorted(set(vocabulary) - set(self.vocabulary))
        self._dir = tempfile.TemporaryDirectory()
        grammar = os.path.join(self._dir.name, "eval.gram")
        with open(grammar, "w") as f:
            f.write("#JSGF V1.0;\ngrammar eval;\npublic <utt> = <word>+;\n")
            f.write("<word> = " + " | ".join(self.vocabulary) + ";\n")
        config = Config(
            hmm=os.path.join(model, "en-us", "en-us"), dict=dict_path, jsgf=grammar, samprate=16000, loglevel="FATAL"
        )
        config["lm"] = None
        self.decoder = Decoder(config)

    def transcribe(self, audio: np.ndarray) -> list[str]:
        """Words recognized in 16 kHz float audio."""
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return words_of(hyp.hypstr) if hyp else []

    def wer(self, pairs: Iterable[tuple[str, np.ndarray]]) -> float:
        """Corpus WER over (reference text, audio) pairs."""
        errors = total = 0
        for text, audio in pairs:
            ref = words_of(text)
            errors += word_errors(ref, self.transcribe(audio))
            total += len(ref)
        return errors / max(1, total)
