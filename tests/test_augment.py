"""Augmentation (models/audio/augment.py) and the human-derived corpus script's held-out voices."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.audio import augment as aug

RATE = aug.SAMPLE_RATE_HZ


def _voiced(seconds: float = 1.5) -> np.ndarray:
    # a 120 Hz glottal-like pulse train through two formant resonances, with syllable-rate amplitude
    t = np.arange(int(seconds * RATE)) / RATE
    source = np.sign(np.sin(2 * np.pi * 120 * t)) * 0.2
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    x = source * envelope
    for f in (700, 1200):
        x = x + 0.3 * np.sin(2 * np.pi * f * t) * envelope
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _band_energy(x: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    return float(spectrum[(f >= low) & (f < high)].sum())


def test_noise_lands_at_the_asked_snr():
    x = _voiced()
    rng = np.random.default_rng(0)
    y = aug.add_noise(x, rng, snr_db_range=(15.0, 15.0))
    noise = y - x
    snr = 10 * np.log10(np.mean(x**2) / np.mean(noise**2))
    assert abs(snr - 15.0) < 0.1


def test_telephone_band_removes_lows_and_highs_and_keeps_level():
    x = _voiced() + 0.2 * aug.colored_noise(np.random.default_rng(1), RATE * 3 // 2, 0.0)
    y = aug.telephone_band(x, np.random.default_rng(2))
    assert _band_energy(y, 0, 150) < 0.01 * _band_energy(x, 0, 150)
    assert _band_energy(y, 5000, 8000) < 0.01 * _band_energy(x, 5000, 8000)
    assert np.isclose(np.mean(y**2), np.mean(x**2), rtol=1e-3)


def test_reverb_spreads_energy_in_time():
    x = np.zeros(RATE, np.float32)
    x[100] = 1.0
    y = aug.add_reverb(x, np.random.default_rng(3), rt60_range_s=(0.5, 0.5))
    late = np.sum(y[100 + RATE // 20 :] ** 2) / np.sum(y**2)  # energy after 50 ms
    assert 0.05 < late < 0.9


def test_level_and_peak_bounds():
    rng = np.random.default_rng(4)
    for _ in range(20):
        y = aug.change_level(_voiced(), rng)
        assert np.abs(y).max() <= 0.5 + 1e-6  # only ever quieter than the 0.5 peak input


def test_opus_round_trip_keeps_the_waveform_aligned():
    x = _voiced()
    y = aug.opus_round_trip(x, np.random.default_rng(5), kbps_range=(24, 24))
    assert len(y) == len(x)
    corr = np.corrcoef(x[800:-800], y[800:-800])[0, 1]
    assert corr > 0.8, corr


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed (make test installs it as root)")
def test_tempo_changes_duration_and_pitch_keeps_it():
    x = _voiced(2.0)
    rng = np.random.default_rng(6)
    y = aug.change_tempo(x, rng, max_change=0.1)
    assert 0.88 * len(x) < len(y) < 1.12 * len(x) and len(y) != len(x)
    z = aug.shift_pitch(x, rng)
    assert abs(len(z) - len(x)) < RATE // 100


def test_speed_moves_duration_pitch_and_formants_together():
    from models.audio.pitch_track import median_pitch

    x = _voiced(2.0)
    for seed in range(3):
        y = aug.change_speed(x, np.random.default_rng(seed), low=1.1, high=1.18)
        factor = len(x) / len(y)  # 1.1-1.18x faster: shorter by that factor
        assert 1.09 < factor < 1.19
        assert median_pitch(y) == pytest.approx(factor * median_pitch(x), rel=0.03)
        # the 700 Hz resonance moved up with it: energy near 700 * factor, little left at 700
        assert _band_energy(y, 700 * factor - 30, 700 * factor + 30) > 5 * _band_energy(y, 670, 730)


@pytest.mark.skipif(shutil.which("flite") is None or shutil.which("text2wave") is None or
                    shutil.which("sox") is None, reason="flite/festival/sox not installed (make test installs them)")
def test_corpus_keeps_held_out_voices_out_of_training(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_human_speech.py"
    out = tmp_path / "corpus"
    subprocess.run([sys.executable, str(script), "--out", str(out), "--num-train-sentences", "24",
                    "--num-test-sentences", "2", "--num-refs-per-unseen-voice", "1", "--num-espeak-voices", "1",
                    "--augment-copies", "1", "--workers", "1"], check=True, capture_output=True, timeout=240)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    voices = json.loads((out / "voices.json").read_text())
    held_out = {v for v, d in voices.items() if d["held_out"]}
    assert held_out == {"fl-awb", "fl-rms"}
    assert not [r for r in rows if r["split"] == "train" and r["voice_id"] in held_out]
    assert {r["voice_id"] for r in rows if r["split"] == "test_unseen_voice"} == held_out
    engines = {r["engine"] for r in rows if r["split"] == "train"}
    assert {"flite", "festival"} <= engines
    augmented = [r for r in rows if r["augment"]]
    assert augmented and all(r["split"] == "train" for r in augmented)
    assert all((out / r["wav"]).exists() and r["num_samples"] > RATE // 4 for r in rows)
