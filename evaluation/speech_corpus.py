"""The speech corpus (``scripts/make_speech_data.py``): rendering an utterance in a corpus voice, and loading.

In this package (not in ``scripts/``) so that ``scripts/`` and ``bench/`` both import it by its name,
with no ``sys.path`` edits reaching into each other's folders.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.audio.dsp import read_wav, resample, trim_silence

SAMPLE_RATE_HZ = 16_000


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


def render(voice: dict, text: str) -> np.ndarray:
    """One utterance in a corpus voice ({espeak_voice, pitch, speed_wpm}): 16 kHz, silence trimmed, peak 0.7."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        cmd = ["espeak-ng", "-v", voice["espeak_voice"], "-p", str(voice["pitch"]), "-s", str(voice["speed_wpm"])]
        subprocess.run([*cmd, "-w", tmp.name, text], check=True, capture_output=True)
        x, rate = read_wav(tmp.name)
    x = trim_silence(resample(x, rate, SAMPLE_RATE_HZ), SAMPLE_RATE_HZ)
    return 0.7 * x / max(1e-4, float(np.abs(x).max()))
