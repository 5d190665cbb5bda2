"""What both `vc` generators share in serving sessions, written once.

The shipped model (models/vc/generator.py) and MeanVC's release (models/vc/meanvc/generator.py) take the
same parameters and events: their checks, a reference upload's decode and checks, the pieces of a live
upload, mic-chunk cleaning and the grouping of a batch into buckets live here.

Each piece follows the generator contract's stages (models/base.py): the checks named ``*_param`` and
:func:`check_reference` are cheap (the event loop); :func:`reference_speech` and :func:`reference_part` run
in the preparation stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.audio.dsp import resample, trim_silence
from models.errors import ParamError
from models.params import WavUpload, decode_wav, wav_upload

MAX_REFERENCE_UPLOAD_S = 30.0  # longer uploads are refused from their header
# A reference sent live in pieces (a WebRTC data-channel message holds 64 KiB): base64 characters at most,
# enough for the longest accepted upload as 16-bit WAV at 48 kHz.
MAX_REFERENCE_PARTS_CHARS = int(MAX_REFERENCE_UPLOAD_S * 48_000 * 2 * 4 / 3) + 4096


def steps_param(value: Any) -> int:
    """Mean-flow steps per chunk: 1 or 2."""
    if value not in (1, 2) or isinstance(value, bool):
        raise ParamError(f"'steps' must be 1 or 2, got {value!r}")
    return int(value)


def check_reference(payload: Mapping[str, Any], voices: Mapping[str, Any], default_voice: str,
                    what_voices: str = "voices") -> tuple[str, WavUpload | None]:
    """The voice a start or `set_reference` asks for: (voice id, None) or ("reference", its checked upload).

    Cheap (the upload's header only), for ``validate_params`` and the start of ``prepare_event``.
    """
    if "reference_audio" in payload:
        return "reference", wav_upload(payload["reference_audio"], "reference_audio", max_s=MAX_REFERENCE_UPLOAD_S)
    voice = payload.get("voice") or default_voice
    if voice not in voices:
        raise ParamError(f"unknown voice {voice!r}; {what_voices}: {sorted(voices)} (or send 'reference_audio')")
    return voice, None


def reference_speech(upload: WavUpload, sample_rate_hz: int, min_s: float, max_s: float) -> tuple[np.ndarray, float]:
    """Decode, resample and trim a checked upload (preparation stage): its speech and its peak before trimming.

    Refuses a silent upload and one with less than ``min_s`` of speech (the message names ``min_s``-``max_s``,
    the span a reference should have).
    """
    audio, rate = decode_wav(upload)
    audio = resample(audio, rate, sample_rate_hz)
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak < 1e-3:
        raise ParamError("'reference_audio' is silent")
    speech = trim_silence(audio, sample_rate_hz)
    seconds = len(speech) / sample_rate_hz
    if seconds < min_s:
        raise ParamError(f"'reference_audio' is too short: {seconds:.1f} s of speech, {min_s:g}-{max_s:g} s are needed")
    return speech.astype(np.float32), peak


def reference_part(scratch: dict[str, Any], payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """Collect one piece of a live reference upload in ``scratch``; the whole upload once the final piece is in."""
    part = payload["reference_audio_part"]
    parts: list[str] = scratch.setdefault("reference_parts", [])
    if not isinstance(part, str):
        parts.clear()
        raise ParamError("'reference_audio_part' must be a piece of a base64-encoded WAV file")
    if sum(map(len, parts)) + len(part) > MAX_REFERENCE_PARTS_CHARS:
        parts.clear()
        raise ParamError(f"the reference sent in parts is over {MAX_REFERENCE_UPLOAD_S:g} s of 48 kHz audio")
    parts.append(part)
    if not payload.get("final", False):
        return None
    data = "".join(parts)
    parts.clear()
    return {"reference_audio": data}


def group_bucket(num: int, padded: int) -> int:
    """The engine's bucket for the whole batch, or the next power of two for a smaller group of it."""
    return padded if num == padded else min(padded, 1 << max(0, num - 1).bit_length())


def clean_audio(audio: np.ndarray | None) -> np.ndarray:
    """Mic samples as finite float32 in [-1, 1]: NaN/inf become silence, overs are clipped."""
    x = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(x).all():  # rare: nan_to_num costs ~30 us a chunk, the check ~3 us
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(x, -1.0, 1.0)
