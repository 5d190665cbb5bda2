"""Loading the speech corpus (``scripts/make_speech_data.py``) for the training scripts, benches and judges.

In this package (not in ``scripts/``) so that ``scripts/`` and ``bench/`` both import it by its name,
with no ``sys.path`` edits reaching into each other's folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.audio.dsp import read_wav


@dataclass
class Utterance:
    """One corpus entry with its audio in memory."""

    id: str
    split: str
    voice_id: str
    language: str
    text: str
    phonemes: list[str]
    audio: np.ndarray  # float32 16 kHz


def load_manifest(root: str | Path, splits: tuple[str, ...] | None = None) -> list[dict]:
    """Manifest rows, optionally only of some splits."""
    rows = [json.loads(line) for line in open(Path(root) / "manifest.jsonl")]
    return [r for r in rows if splits is None or r["split"] in splits]


def load_utterances(root: str | Path, splits: tuple[str, ...], limit: int | None = None) -> list[Utterance]:
    """Read the audio of the chosen splits into memory."""
    out = []
    for row in load_manifest(root, splits)[:limit]:
        audio, rate = read_wav(str(Path(root) / row["wav"]))
        if rate != 16_000:
            raise ValueError(f"{row['wav']}: expected 16 kHz, got {rate}")
        out.append(Utterance(
            row["id"], row["split"], row["voice_id"], row["language"], row["text"], row["phonemes"].split(), audio
        ))
    return out


def voices(root: str | Path) -> dict[str, dict]:
    """The corpus's voice table."""
    return json.loads((Path(root) / "voices.json").read_text())


def phoneme_inventory(root: str | Path) -> list[str]:
    """Sorted phoneme symbols of the corpus."""
    return json.loads((Path(root) / "phonemes.json").read_text())
