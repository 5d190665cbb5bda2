"""The speech corpora (``scripts/make_speech_data.py``, ``make_human_speech.py``): rendering, writing, loading.

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

from models.audio.dsp import read_wav, resample, trim_silence, write_wav

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


# flite voices' own mean pitch (Hz): a derived voice's ``f0_ratio`` scales it
FLITE_F0_HZ = {"kal": 105.0, "kal16": 105.0, "slt": 160.0, "awb": 110.0, "rms": 95.0}


def render(voice: dict, text: str) -> np.ndarray:
    """One utterance in a corpus voice: 16 kHz, silence trimmed, peak 0.7.

    ``voice["engine"]`` picks the synthesiser: ``flite`` ({voice, stretch, f0_ratio}), ``festival`` ({voice}),
    else espeak-ng ({espeak_voice, pitch, speed_wpm}; the espeak-ng corpus's voices carry no engine).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "u.wav")
        engine = voice.get("engine", "espeak")
        if engine == "flite":
            cmd = ["flite", "-voice", voice["voice"], "-o", path, "-t", text]
            if voice.get("stretch", 1.0) != 1.0 or voice.get("f0_ratio", 1.0) != 1.0:
                f0 = FLITE_F0_HZ.get(voice["voice"], 110.0) * voice.get("f0_ratio", 1.0)
                cmd += ["--setf", f"duration_stretch={voice.get('stretch', 1.0)}",
                        "--setf", f"int_f0_target_mean={f0:.0f}"]
            subprocess.run(cmd, check=True, capture_output=True)
        elif engine == "festival":
            subprocess.run(["text2wave", "-eval", f"(voice_{voice['voice']})", "-o", path], input=text.encode(),
                           check=True, capture_output=True)
        else:
            cmd = ["espeak-ng", "-v", voice["espeak_voice"], "-p", str(voice["pitch"]),
                   "-s", str(voice["speed_wpm"])]
            subprocess.run([*cmd, "-w", path, text], check=True, capture_output=True)
        x, rate = read_wav(path)
    x = trim_silence(resample(x, rate, SAMPLE_RATE_HZ), SAMPLE_RATE_HZ)
    return 0.7 * x / max(1e-4, float(np.abs(x).max()))


def write_utterance(out_dir: str | Path, utt: dict, audio: np.ndarray) -> dict:
    """Write one utterance's 16 kHz WAV under ``wav/<voice_id>/<id>.wav``; its manifest row."""
    path = Path(out_dir) / "wav" / utt["voice_id"] / f"{utt['id']}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(str(path), audio, SAMPLE_RATE_HZ)
    return {**utt, "wav": str(path.relative_to(out_dir)), "num_samples": len(audio), "sample_rate_hz": SAMPLE_RATE_HZ}


def write_corpus(out: Path, rows: list[dict], voices: dict[str, dict]) -> dict:
    """Write manifest.jsonl, voices.json and phonemes.json; a summary (utterances, hours, phonemes)."""
    with open(out / "manifest.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (out / "voices.json").write_text(json.dumps(voices, indent=1))
    inventory = sorted({t for row in rows for t in row["phonemes"].split()})
    (out / "phonemes.json").write_text(json.dumps(inventory))
    hours = sum(row["num_samples"] for row in rows) / SAMPLE_RATE_HZ / 3600
    return {"utterances": len(rows), "hours": round(hours, 2), "phonemes": len(inventory), "out": str(out)}
