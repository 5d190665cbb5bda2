"""The agent's speech track: its queue and look-ahead pipeline, pushed PCM, and speech from text.

:class:`AgentSpeech` holds one session's queued speech. Speech arrives as pushed PCM (:func:`decode_pcm16`,
:func:`resample_to_model`) or from text through :class:`TextSpeech`, which drives a speech generator (the
`tts` family) through the generator contract. The avatar does not know how speech is synthesized: it
holds any :class:`~models.base.Generator` whose spec outputs audio and that accepts ``text`` events (as
`tts` does), opens one of its sessions per avatar session on the first `say` with text, and each frame
steps those sessions just enough to keep the avatar's speech queue a few chunks ahead of playout. The
synthesized audio then flows through exactly the path of pushed audio (look-ahead pipeline, features,
lips, one pts timeline).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.avatar.features import HOP, SAMPLE_RATE_HZ
from models.base import ControlEvent, Generator, StepInput, open_direct
from models.errors import ParamError
from models.params import base64_param

log = logging.getLogger(__name__)

MAX_STEPS_PER_FRAME = 4  # bounds the synthesis work one avatar frame may trigger per session


@dataclass
class AgentSpeech:
    """Agent speech of one session: queued samples, the look-ahead pipeline, and whether more is coming."""

    queue: deque[np.ndarray] = field(default_factory=deque)
    num_queued: int = 0
    final: bool = True  # False while a streamed utterance (`say` with final=false) is still arriving
    pipeline: deque[np.ndarray] = field(default_factory=deque)  # featurized chunks not yet played
    num_underruns: int = 0

    def push(self, samples: np.ndarray, final: bool) -> None:
        """Queue speech."""
        if len(samples):
            self.queue.append(samples)
            self.num_queued += len(samples)
        self.final = final

    def pull(self) -> np.ndarray:
        """The next chunk (HOP samples) entering the pipeline; silence when nothing (enough) is queued."""
        if self.num_queued < HOP and not (self.final and self.num_queued):
            if not self.final:
                self.num_underruns += 1
            return np.zeros(HOP, np.float32)
        out, need = [], HOP
        while need and self.queue:
            head = self.queue[0]
            take = head[:need]
            out.append(take)
            need -= len(take)
            if len(take) == len(head):
                self.queue.popleft()
            else:
                self.queue[0] = head[len(take) :]
        self.num_queued -= HOP - need
        chunk = np.concatenate(out)
        return np.pad(chunk, (0, need)) if need else chunk

    def clear(self) -> float:
        """Drop everything not yet played (barge-in); returns the seconds dropped."""
        dropped = self.num_queued + sum(int(np.abs(c).max() > 0) * len(c) for c in self.pipeline)
        self.queue.clear()
        self.num_queued = 0
        self.final = True
        for i in range(len(self.pipeline)):
            self.pipeline[i] = np.zeros(HOP, np.float32)
        return dropped / SAMPLE_RATE_HZ


def decode_pcm16(data: Any) -> np.ndarray:
    """Base64 PCM16 little-endian mono -> float32; ParamError with the reason otherwise."""
    raw = base64_param(data, "audio", "PCM16 mono samples")
    if len(raw) % 2:
        raise ParamError("'audio' has an odd number of bytes (PCM16 needs 2 per sample)")
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def resample_to_model(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """Resample mono float32 audio to 16 kHz with FFmpeg's resampler (a whole utterance, flushed)."""
    if rate_hz == SAMPLE_RATE_HZ or not len(samples):
        return samples.astype(np.float32)
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt", layout="mono")
    frame.sample_rate = rate_hz
    frames = list(resampler.resample(frame)) + list(resampler.resample(None))  # the second call flushes
    parts = [f.to_ndarray()[0] for f in frames]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def load_speech_generator(spec: str | Generator | None, device: str) -> Generator | None:
    """``"auto"``: a private `tts` from the registry; a Generator: itself (a server serving `tts` passes that one)."""
    if spec is None or isinstance(spec, Generator):
        return spec
    if spec != "auto":
        raise ValueError(f"tts must be 'auto', None or a Generator, got {spec!r}")
    from models.registry import MODELS, load_model

    if MODELS["tts"].module is None:
        return None
    try:
        return load_model("tts", device)
    except Exception as e:  # the avatar still serves pushed audio
        log.warning("avatar: the tts model did not load (%s); 'say' takes audio only", e)
        return None


class TextSpeech:
    """Per-session speech generator sessions, stepped on demand to feed the avatar's speech queues."""

    def __init__(self, generator: Generator, output_rate_hz: int) -> None:
        spec = generator.spec
        if spec.output_audio is None or "text" not in spec.event_types:
            raise ValueError(f"model '{generator.name}' does not turn text events into audio")
        self.generator = generator
        self.rate_hz = spec.output_audio.sample_rate_hz
        self.output_rate_hz = output_rate_hz

    def say(self, session: Any, text: str, final: bool, voice: str | None) -> list[dict[str, Any]]:
        """Queue text for a session (opening its speech session on first use)."""
        if session.tts_state is None:
            params = {"voice": voice} if voice is not None else {}
            session.tts_state = open_direct(self.generator, params)
        elif voice is not None:
            raise ParamError("'voice' can only be chosen with the session's first 'say' text")
        notices = self.generator.handle_event(session.tts_state, ControlEvent("text", {"text": text, "final": final}))
        session.tts_active = True
        session.speech.final = False  # more audio is on its way
        return notices

    def interrupt(self, session: Any) -> None:
        """Stop synthesizing for a session (barge-in)."""
        if session.tts_state is not None and "interrupt" in self.generator.spec.event_types:
            self.generator.handle_event(session.tts_state, ControlEvent("interrupt"))
        session.tts_active = False

    def pump(self, sessions: Sequence[Any], target_samples: int) -> None:
        """Step the speech sessions whose queue holds less than ``target_samples``, batched."""
        for _ in range(MAX_STEPS_PER_FRAME):
            needy = [s for s in sessions if s.tts_active and s.speech.num_queued < target_samples]
            if not needy:
                return
            outputs = self.generator.step([s.tts_state for s in needy], [StepInput() for _ in needy], len(needy))
            for s, out in zip(needy, outputs, strict=True):
                if out.idle or out.audio is None:
                    s.tts_active = False
                    s.speech.final = True  # the utterance is complete: play its tail
                else:
                    s.speech.push(resample_to_model(np.asarray(out.audio, np.float32), self.rate_hz), final=False)

    def close(self, session: Any) -> None:
        """Release a session's speech session."""
        if session.tts_state is not None:
            self.generator.close_session(session.tts_state)
            session.tts_state = None
