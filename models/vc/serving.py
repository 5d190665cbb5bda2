"""What both `vc` generators share in serving sessions, written once.

The shipped model (models/vc/generator.py) and MeanVC's release (models/vc/meanvc/generator.py) take the
same parameters and events: their checks, a reference upload's decode and checks, the pieces of a live
upload, mic-chunk cleaning, the grouping of a batch into buckets, and the session side of the generator
(:class:`ReferenceVoiceGenerator`: parameters, references through the preparation stage, slots, events)
live here; each generator keeps its model, its per-slot state and its step.

Each piece follows the generator contract's stages (models/base.py): the checks named ``*_param`` and
:func:`check_reference` are cheap (the event loop); :func:`reference_speech` and :func:`reference_part` run
in the preparation stage.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from models.audio.dsp import resample, trim_silence
from models.base import ControlEvent, Generator
from models.cache import RingKVCache, SlotAllocator
from models.errors import ParamError
from models.params import WavUpload, decode_wav, seed_param, unknown_params, wav_upload

PARAMS = frozenset({"voice", "reference_audio", "steps", "seed"})
EVENTS = frozenset({"set_reference", "set_steps"})
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


class ReferenceVoiceGenerator(Generator):
    """The session side both `vc` generators share: parameters, references through the preparation stage, events.

    A subclass holds ``_voices`` (voice id -> its embedding, a tuple of tensors), ``_slots`` (a
    :class:`~models.cache.SlotAllocator`) and ``cache`` (a :class:`~models.cache.RingKVCache`), and implements
    :meth:`_embed_upload` (the heavy part, run in the preparation stage), ``open_session`` (starting from
    :meth:`_take_slot`) and :meth:`_switch_reference` (installing a new voice in a running session).
    """

    name = "vc"
    prepared_events = frozenset({"set_reference"})  # an uploaded reference is embedded off the step thread
    voices_label = "voices"  # how the unknown-voice message names the voices on offer
    _voices: dict[str, tuple[torch.Tensor, ...]]
    _slots: SlotAllocator
    cache: RingKVCache

    @property
    def default_voice(self) -> str:
        """The first voice by id."""
        return min(self._voices)

    def _check_reference(self, payload: Mapping[str, Any]) -> tuple[str, WavUpload | None]:
        return check_reference(payload, self._voices, self.default_voice, self.voices_label)

    @abstractmethod
    def _embed_upload(self, upload: WavUpload) -> tuple[torch.Tensor, ...]:
        """Decode, resample, check and embed a reference whose header was checked (the preparation stage)."""

    @abstractmethod
    def _switch_reference(self, state: Any, voice: str, reference: tuple[torch.Tensor, ...]) -> None:
        """Install a new voice in a running session from its next chunk on (on the worker)."""

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``voice`` (a voice id) or ``reference_audio`` (base64 WAV), ``steps`` (1 or 2), ``seed``.

        Cheap: an upload's header is checked here, its samples are read and embedded in prepare_session.
        """
        unknown_params("vc", params, PARAMS)
        voice, upload = self._check_reference(params)
        out = {"voice": voice, "steps": steps_param(params.get("steps", 1)), "seed": seed_param(params)}
        if upload is not None:
            out["reference_audio"] = upload
        return out

    def prepare_session(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Embed an uploaded reference (decode, resample, speaker encoder, perhaps a fit): up to ~15 s on a CPU."""
        out = dict(params)
        if (upload := out.pop("reference_audio", None)) is not None:
            out["reference"] = self._embed_upload(upload)
        return out

    def _take_slot(self, params: Mapping[str, Any]) -> tuple[int, tuple[torch.Tensor, ...]]:
        """A free slot with its ring cache cleared, and the session's reference (prepared or a voice's)."""
        reference = params.get("reference") or self._voices[params["voice"]]
        slot = self._slots.allocate()
        self.cache.clear([slot], keep_sink=False)
        return slot, reference

    def describe_session(self, state: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """``voice`` (a voice id or "reference"), ``steps``, ``seed``."""
        return {"voice": state.voice, "steps": state.steps, "seed": params["seed"]}

    def close_session(self, state: Any) -> None:
        """Free the slot."""
        self._slots.free(state.slot)

    def prepare_event(self, event: ControlEvent, scratch: dict[str, Any]) -> ControlEvent | None:
        """`set_reference`: collect an upload's pieces, check it and embed it (off the loop and the steps)."""
        payload = event.payload
        if "reference_audio_part" in payload:
            payload = reference_part(scratch, payload)
            if payload is None:
                return None  # more pieces to come
        voice, upload = self._check_reference(payload)
        if upload is None:
            return ControlEvent(event.type, {"voice": voice})
        return ControlEvent(event.type, {"voice": voice}, prepared=self._embed_upload(upload))

    def handle_event(self, state: Any, event: ControlEvent) -> list[dict[str, Any]]:
        """``set_reference {voice | reference_audio | reference_audio_part, final}`` and ``set_steps {steps}``.

        Both take effect from the next chunk on. ``reference_audio_part`` carries one piece of a base64 WAV
        (the pieces of its base64 text, in order); the piece with ``final: true`` completes it. Uploads are
        embedded by :meth:`prepare_event` first; this only installs the result.
        """
        if event.type == "set_steps":
            state.steps = steps_param(event.payload.get("steps"))
            return [{"type": "steps_set", "steps": state.steps}]
        if event.type != "set_reference":
            return super().handle_event(state, event)
        if event.prepared is None and {"reference_audio", "reference_audio_part"} & set(event.payload):
            raise ValueError("an uploaded reference must go through prepare_event (models.base.apply_event)")
        if event.prepared is not None:  # an upload, embedded by prepare_event
            voice, reference = "reference", event.prepared
        else:
            voice = self._check_reference(event.payload)[0]
            reference = self._voices[voice]
        self._switch_reference(state, voice, reference)
        state.voice = voice
        return [{"type": "reference_set", "voice": voice}]
