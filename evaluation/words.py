"""Word error rate of speech with pocketsphinx: open vocabulary (its default English model) or a known one.

Two judges. ``mode="default"``: pocketsphinx's own English acoustic and language model, open vocabulary.
It reads human-like speech (flite's and festival's voices are built from human recordings; on the held-out
flite awb/rms voices it is checked by bench/human_speech.py before it judges anything) but gets ~90 % WER
on espeak-ng speech. For espeak-ng material the speech benches decode with the evaluation sentences'
vocabulary only, either as a JSGF word loop
(``mode="jsgf"``) or as a uniform unigram language model over the same words (``mode="unigram"``, the
default: the same search space, but pocketsphinx's lexicon-tree search runs it ~50x faster than its
grammar search, which took 20-60 s per 2 s utterance on this machine). It measures whether the words are
*acoustically* recognizable, not open-vocabulary intelligibility; compare a model with the espeak-ng
reference under the same recognizer (their ratio is the number that means something). Optional
dependency: ``pip install pocketsphinx`` (it ships its English model).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterable

import numpy as np

from models.vc.phonemes import edit_distance


def words_of(text: str) -> list[str]:
    """Lower-case words of a sentence, punctuation dropped."""
    return re.findall(r"[a-z']+", text.lower())


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words."""
    return edit_distance(ref, hyp)


class VocabularyRecognizer:
    """Pocketsphinx over ``vocabulary`` only (words missing from its dictionary are dropped).

    With ``mode="default"``: its default open-vocabulary language model (``vocabulary`` then unused).
    """

    def __init__(self, vocabulary: Iterable[str] = (), mode: str = "unigram") -> None:
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
        if mode == "default":
            self.decoder = Decoder(samprate=16000, loglevel="FATAL")
            return
        if mode == "jsgf":
            path = os.path.join(self._dir.name, "eval.gram")
            with open(path, "w") as f:
                f.write("#JSGF V1.0;\ngrammar eval;\npublic <utt> = <word>+;\n")
                f.write("<word> = " + " | ".join(self.vocabulary) + ";\n")
        elif mode == "unigram":
            path = os.path.join(self._dir.name, "eval.arpa")
            logp = math.log10(1.0 / (len(self.vocabulary) + 1))
            with open(path, "w") as f:
                f.write(f"\\data\\\nngram 1={len(self.vocabulary) + 2}\n\n\\1-grams:\n")
                f.write(f"-99.0 <s> 0.0\n{logp:.4f} </s> 0.0\n")
                f.writelines(f"{logp:.4f} {w} 0.0\n" for w in self.vocabulary)
                f.write("\\end\\\n")
        else:
            raise ValueError(f"unknown recognizer mode {mode!r} (default, unigram or jsgf)")
        hmm = os.path.join(model, "en-us", "en-us")
        kind = {"jsgf": {"jsgf": path}, "unigram": {"lm": path}}[mode]
        self.decoder = Decoder(Config(hmm=hmm, dict=dict_path, samprate=16000, loglevel="FATAL", **kind))

    def transcribe(self, audio: np.ndarray) -> list[str]:
        """Words recognized in 16 kHz float audio."""
        pad = np.zeros(4800, np.float32)  # 0.3 s of silence each side: the front end estimates its noise floor
        pcm = (np.clip(np.concatenate([pad, audio, pad]), -1, 1) * 32767).astype("<i2").tobytes()
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


def open_recognizer() -> VocabularyRecognizer:
    """Pocketsphinx with its default English language model: the judge for human-like speech."""
    return VocabularyRecognizer(mode="default")
