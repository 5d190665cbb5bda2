"""What every glass-to-glass run shares: sample rates, the JSON line, latency summaries, the model's own delay."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from streaming.media.markers import marker_times, marker_train, match_markers

RATE = 48_000
MODEL_RATE = 16_000


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def summarize(delays_s: list[float], sent: int, model_delay_ms: float) -> dict[str, Any]:
    if not delays_s:
        return {"markers_sent": sent, "markers_received": 0}
    ms = np.array(delays_s) * 1000
    return {
        "markers_sent": sent,
        "markers_received": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "min_ms": round(float(ms.min()), 1),
        "max_ms": round(float(ms.max()), 1),
        "model_delay_ms": round(model_delay_ms, 1),
        "transport_p50_ms": round(float(np.percentile(ms, 50)) - model_delay_ms, 1),
    }


def pitch_model_delay_ms() -> float:
    """The pitch shifter's own delay at 0 semitones, measured offline on the same markers."""
    from models.base import StepInput
    from models.diagnostic.pitch import PitchShifter

    model = PitchShifter()
    state = model.open_session(model.validate_params({"semitones": 0}))
    signal, _ = marker_train(MODEL_RATE, 5, 0.25)
    chunks = [signal[i : i + 320] for i in range(0, len(signal) - 320, 320)]
    out = [model.step([state], [StepInput(audio=c, num_valid_samples=320)], 1)[0].audio for c in chunks]
    sent = marker_times([(i * 0.02, c) for i, c in enumerate(chunks)], MODEL_RATE)
    back = marker_times([(i * 0.02, c) for i, c in enumerate(out)], MODEL_RATE)
    return float(np.median(match_markers(sent, back))) * 1000


def growth_ms(delays_s: list[float]) -> float:
    """Median latency of the last quarter of markers minus that of the first quarter."""
    if len(delays_s) < 4:
        return 0.0
    q = len(delays_s) // 4
    return round(float(np.median(delays_s[-q:]) - np.median(delays_s[:q])) * 1000, 1)
