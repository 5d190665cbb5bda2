"""Per-frame audio features of both conversation tracks and the conversational state derived from them.

Each 40 ms video frame gets, per track (agent speech, user microphone), 20 log-mel bands of the last 64 ms
of audio (a 1024-sample window ending at the frame's last sample) and the silero-vad speech probability of
the last complete VAD window. A small causal state machine turns both tracks' voice activity into one of
the conversational states of ARIG (speaking, listening, interruption, feedback, pauses, idle), which
conditions motion prediction.

Everything here is streaming-first: :class:`TrackFeaturizer` consumes one frame of samples at a time and the
offline path (:func:`track_features`) runs the very same code over a whole signal, so training data and
serving see identical features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from models.vad import SileroVad, VadStream

SAMPLE_RATE_HZ = 16_000
FPS = 25
HOP = SAMPLE_RATE_HZ // FPS  # 640 samples per frame
WINDOW = 1024  # mel analysis window (64 ms), ends at the frame's last sample
NUM_MELS = 20
TRACK_DIM = NUM_MELS + 2  # mels, log energy, VAD probability
LOG_FLOOR = 1e-5


def mel_filterbank(num_mels: int = NUM_MELS, n_fft: int = WINDOW, rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Triangular mel filters (num_mels, n_fft // 2 + 1) from 60 Hz to 7.6 kHz."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(np.array(60.0)), hz_to_mel(np.array(7600.0)), num_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(n_fft, 1.0 / rate)
    fb = np.zeros((num_mels, len(bins)), np.float32)
    for i in range(num_mels):
        lo, mid, hi = hz[i], hz[i + 1], hz[i + 2]
        fb[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return fb


_FILTERS = mel_filterbank()
_HANN = np.hanning(WINDOW).astype(np.float32)


@dataclass
class TrackState:
    """Streaming state of one audio track of one session."""

    tail: np.ndarray = field(default_factory=lambda: np.zeros(WINDOW - HOP, np.float32))
    vad: VadStream = field(default_factory=VadStream)


class TrackFeaturizer:
    """Per-frame features of a batch of tracks (any mix of sessions and agent/user tracks)."""

    def __init__(self, vad: SileroVad | None = None) -> None:
        self.vad = vad or SileroVad()

    def step(self, tracks: Sequence[TrackState], frames: np.ndarray) -> np.ndarray:
        """Consume one frame (B, HOP) of 16 kHz audio per track; returns features (B, TRACK_DIM)."""
        if frames.shape[1:] != (HOP,):
            raise ValueError(f"expected frames of {HOP} samples, got {frames.shape}")
        frames = frames.astype(np.float32, copy=False)
        windows = np.stack([np.concatenate([t.tail, f]) for t, f in zip(tracks, frames, strict=True)])  # (B, W)
        for t, w in zip(tracks, windows, strict=True):
            t.tail = w[HOP:].copy()
        power = np.abs(np.fft.rfft(windows * _HANN, axis=1)) ** 2  # (B, W/2+1)
        logmel = np.log(power @ _FILTERS.T + LOG_FLOOR)  # (B, NUM_MELS)
        energy = np.log(np.mean(windows[:, -HOP:] ** 2, axis=1) + LOG_FLOOR)  # (B,) of this frame only
        self.vad.push([t.vad for t in tracks], list(frames))
        vad = np.array([t.vad.prob for t in tracks], np.float32)
        return np.concatenate([logmel, energy[:, None], vad[:, None]], axis=1).astype(np.float32)


def frame_energy(samples: np.ndarray, hop: int = HOP) -> np.ndarray:
    """RMS of each whole 40 ms frame of a signal: the speech envelope lip sync is measured against."""
    n = len(samples) // hop
    return np.sqrt((samples[: n * hop].reshape(n, hop) ** 2).mean(1))


def track_features(featurizer: TrackFeaturizer, audio: np.ndarray) -> np.ndarray:
    """Offline features (T, TRACK_DIM) of a whole 16 kHz track, T = len // HOP, via the streaming path."""
    num = len(audio) // HOP
    state = TrackState()
    return np.stack([featurizer.step([state], audio[i * HOP : (i + 1) * HOP][None])[0] for i in range(num)])


class ConvState(IntEnum):
    """Conversational state of the avatar (the agent) at one frame."""

    IDLE = 0  # nobody has spoken for a while
    SPEAKING = 1  # the agent speaks, the user is silent
    LISTENING = 2  # the user speaks, the agent is silent
    INTERRUPTION = 3  # the user started speaking while the agent was speaking (barge-in)
    FEEDBACK = 4  # the agent speaks and the user just gave a short backchannel
    USER_PAUSE = 5  # the user just stopped (a phrase end: the listener's cue to nod)
    AGENT_PAUSE = 6  # the agent just stopped (a pause within or after its turn)


NUM_STATES = len(ConvState)
VAD_ON, VAD_OFF = 0.5, 0.3  # hysteresis on speech probability
PAUSE_FRAMES = 38  # 1.5 s: a pause older than this is idle
FEEDBACK_MAX_FRAMES = 15  # user activity shorter than 0.6 s during agent speech is a backchannel
FEEDBACK_HOLD_FRAMES = 12


@dataclass
class ConversationTracker:
    """Causal conversational state from both tracks' voice activity, one frame at a time."""

    agent_on: bool = False
    user_on: bool = False
    agent_off_frames: int = 10_000
    user_off_frames: int = 10_000
    user_on_frames: int = 0
    user_started_over_agent: bool = False
    feedback_hold: int = 0
    forced_interrupt: int = 0  # frames left of an explicit `interrupt`
    state: ConvState = ConvState.IDLE

    def update(self, agent_prob: float, user_prob: float) -> ConvState:
        """Advance one frame; returns the new state."""
        agent_on = agent_prob > (VAD_OFF if self.agent_on else VAD_ON)
        user_on = user_prob > (VAD_OFF if self.user_on else VAD_ON)
        if user_on and not self.user_on:
            self.user_started_over_agent = agent_on or self.agent_on
            self.user_on_frames = 0
        if self.user_on and not user_on and agent_on and self.user_on_frames < FEEDBACK_MAX_FRAMES:
            self.feedback_hold = FEEDBACK_HOLD_FRAMES
        self.user_on_frames = self.user_on_frames + 1 if user_on else 0
        self.agent_off_frames = 0 if agent_on else self.agent_off_frames + 1
        self.user_off_frames = 0 if user_on else self.user_off_frames + 1
        self.agent_on, self.user_on = agent_on, user_on
        self.feedback_hold = max(0, self.feedback_hold - 1)
        self.forced_interrupt = max(0, self.forced_interrupt - 1)
        self.state = self._classify()
        return self.state

    def interrupt(self, num_frames: int = 13) -> None:
        """An explicit barge-in: report INTERRUPTION for the next frames whatever the audio says."""
        self.forced_interrupt = num_frames
        self.state = ConvState.INTERRUPTION

    def _classify(self) -> ConvState:
        if self.forced_interrupt:
            return ConvState.INTERRUPTION
        if self.agent_on and self.user_on:
            return ConvState.INTERRUPTION if self.user_started_over_agent else ConvState.SPEAKING
        if self.agent_on:
            return ConvState.FEEDBACK if self.feedback_hold else ConvState.SPEAKING
        if self.user_on:
            return ConvState.LISTENING
        if self.user_off_frames < PAUSE_FRAMES and self.user_off_frames <= self.agent_off_frames:
            return ConvState.USER_PAUSE
        if self.agent_off_frames < PAUSE_FRAMES:
            return ConvState.AGENT_PAUSE
        return ConvState.IDLE


def conversation_states(agent_vad: np.ndarray, user_vad: np.ndarray) -> np.ndarray:
    """Offline states (T,) int64 of two per-frame VAD probability tracks, via the streaming tracker."""
    tracker = ConversationTracker()
    return np.array([tracker.update(float(a), float(u)) for a, u in zip(agent_vad, user_vad, strict=True)], np.int64)
