"""The avatar's motion space (20 numbers per frame at 25 fps) and the procedural teacher that animates it.

The motion space is a compact parametric face, in the spirit of the expression/pose coefficients ARIG
predicts, but directly interpretable so the renderer needs no learned decoder:

| index | name | range | meaning |
|---|---|---|---|
| 0-2 | yaw, pitch, roll | about ±0.35 | head rotation (radians); pitch > 0 looks down (a nod: down and back) |
| 3-4 | tx, ty | about ±0.08 | head translation, in head heights |
| 5 | jaw | 0..1 | mouth opening |
| 6 | mouth_width | -1..1 | rounded (oo) .. spread (ee) |
| 7 | lip_press | 0..1 | lips pressed together (m, b, p; the "mm-hm" of a backchannel) |
| 8 | upper_lip | 0..1 | upper lip raised (teeth show) |
| 9 | smile | -1..1 | mouth corners down .. up |
| 10-11 | brow_l, brow_r | -1..1 | brows lowered .. raised |
| 12 | brow_furrow | 0..1 | brows drawn together |
| 13-14 | blink_l, blink_r | 0..1 | eyelid closure |
| 15-16 | gaze_x, gaze_y | -1..1 | eye direction (0, 0 looks at the viewer) |
| 17 | squint | 0..1 | lower lids raised (smiling eyes) |
| 18 | cheek | 0..1 | cheek raise / blush |
| 19 | lean | about ±0.06 | scale change from leaning in or back |

The teacher (:func:`teacher_motion`) builds a motion track from a two-party conversation: mouth from the
agent's speech (jaw from the band energy envelope, a frame of anticipation; rounding/spreading from the
spectral balance; lip presses at energy dips inside speech), beat nods on the agent's stressed syllables,
gaze aversion at the start of the agent's turns, listening behaviour (attentive brows when the user starts,
a nod 160 ms after each of the user's phrase ends, with a closed-mouth smile "mm-hm" after phrases longer
than 1.6 s, and a small nod every 2.8 s during long user phrases; a quick stop when interrupted), blinks
and idle sway. Listening cues are timed by the conversation so a causal model can learn them; their
amplitudes, blink timing, gaze shifts and sway are random, which is what the flow head learns to sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.avatar.features import NUM_MELS, ConvState

NAMES = (
    "yaw", "pitch", "roll", "tx", "ty", "jaw", "mouth_width", "lip_press", "upper_lip", "smile",
    "brow_l", "brow_r", "brow_furrow", "blink_l", "blink_r", "gaze_x", "gaze_y", "squint", "cheek", "lean",
)  # fmt: skip
MOTION_DIM = len(NAMES)
IDX = {name: i for i, name in enumerate(NAMES)}
LOW = np.array([-.6, -.5, -.4, -.15, -.15, 0, -1, 0, 0, -1, -1, -1, 0, 0, 0, -1, -1, 0, 0, -.1], np.float32)
HIGH = np.array([.6, .5, .4, .15, .15, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, .1], np.float32)
REST = np.zeros(MOTION_DIM, np.float32)
REST[IDX["smile"]] = 0.15


def clamp(motion: np.ndarray) -> np.ndarray:
    """Clip motion (..., MOTION_DIM) into the renderer's valid ranges."""
    return np.clip(motion, LOW, HIGH)


@dataclass
class SpeechCues:
    """Per-frame cues of the agent's speech used by the teacher (T,) each."""

    envelope: np.ndarray  # 0..1 loudness of speech bands
    brightness: np.ndarray  # -1..1 spectral balance (low: rounded vowels, high: spread vowels / fricatives)
    active: np.ndarray  # bool, agent voice activity


def speech_cues(agent_features: np.ndarray) -> SpeechCues:
    """Cues from the agent track's per-frame features (T, TRACK_DIM) (see features.py)."""
    logmel = agent_features[:, :NUM_MELS]
    power = np.exp(logmel[:, 2:16]).sum(1)  # ~150 Hz .. 4 kHz
    level = np.log(power + 1e-4)
    active = agent_features[:, -1] > 0.4
    ref = np.percentile(level[active], 95) if active.sum() > 10 else level.max()
    envelope = np.clip((level - (ref - 6.0)) / 6.0, 0, 1) ** 1.3
    low = np.exp(logmel[:, 3:8]).sum(1)
    high = np.exp(logmel[:, 10:17]).sum(1)
    brightness = np.tanh(0.8 * np.log((high + 1e-4) / (low + 1e-4)) + 1.0)
    return SpeechCues(envelope.astype(np.float32), brightness.astype(np.float32), active)


def _smooth(x: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(x)
    acc = x[0]
    for i, v in enumerate(x):
        acc = alpha * acc + (1 - alpha) * v
        out[i] = acc
    return out


def _ou(rng: np.random.Generator, n: int, theta: float, sigma: float) -> np.ndarray:
    """An Ornstein-Uhlenbeck process (mean-reverting noise): idle sway."""
    x = np.zeros(n, np.float32)
    for i in range(1, n):
        x[i] = x[i - 1] * (1 - theta) + sigma * rng.standard_normal()
    return x


def _add_pulse(track: np.ndarray, start: int, shape: np.ndarray, amplitude: float) -> None:
    end = min(len(track), start + len(shape))
    if start < end:
        track[start:end] += amplitude * shape[: end - start]


NOD = np.sin(np.linspace(0, np.pi, 9)) - 0.35 * np.sin(np.linspace(0, 2 * np.pi, 9)) * (np.arange(9) > 4)
NOD = np.concatenate([NOD, 0.25 * -np.sin(np.linspace(0, np.pi, 5))]).astype(np.float32)  # dip, rebound
BLINK = np.array([0.35, 0.85, 1.0, 0.75, 0.35, 0.1], np.float32)
BUMP = np.sin(np.linspace(0, np.pi, 20)).astype(np.float32)  # a 0.8 s rise and fall


def teacher_motion(
    agent_features: np.ndarray, states: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Teacher motion (T, MOTION_DIM) for a conversation, and the frames of its nods and backchannels."""
    n = len(states)
    cues = speech_cues(agent_features)
    m = np.tile(REST, (n, 1))
    events: dict[str, list[int]] = {"nod": [], "backchannel": []}

    # mouth: one frame of anticipation (lips move before the sound), only while the agent speaks
    env = np.where(_smooth(cues.active.astype(np.float32), 0.5) > 0.2, cues.envelope, 0.0)
    ahead = np.concatenate([env[1:], env[-1:]])
    jaw = _smooth(0.6 * ahead + 0.4 * env, 0.25)
    m[:, IDX["jaw"]] = np.clip(0.9 * jaw, 0, 1)
    speaking = env > 0.05
    m[:, IDX["mouth_width"]] = np.where(speaking, _smooth(cues.brightness, 0.4) * 0.8, 0.0)
    dip = speaking & (env < 0.25) & (np.concatenate([env[:1], env[:-1]]) > 0.4)
    m[:, IDX["lip_press"]] = _smooth(dip.astype(np.float32), 0.3)
    m[:, IDX["upper_lip"]] = 0.5 * np.clip(cues.brightness, 0, 1) * jaw

    # head: idle sway everywhere, larger while speaking; beat nods on stressed syllables
    sway = 1.0 + 1.0 * _smooth(speaking.astype(np.float32), 0.9)  # pitch sway stays well below a nod
    m[:, IDX["yaw"]] += sway * _ou(rng, n, 0.04, 0.010)
    m[:, IDX["pitch"]] += sway * _ou(rng, n, 0.05, 0.0035)
    m[:, IDX["roll"]] += sway * _ou(rng, n, 0.04, 0.005)
    m[:, IDX["tx"]] += _ou(rng, n, 0.03, 0.003)
    m[:, IDX["ty"]] += _ou(rng, n, 0.03, 0.002)
    m[:, IDX["lean"]] += _ou(rng, n, 0.02, 0.002)
    peaks = np.flatnonzero((env[1:-1] > 0.6) & (env[1:-1] >= env[:-2]) & (env[1:-1] > env[2:])) + 1
    last_beat = -100
    for p in peaks:
        if p - last_beat > 12 and rng.random() < 0.5:
            _add_pulse(m[:, IDX["pitch"]], p - 2, NOD[:9], 0.04)
            _add_pulse(m[:, IDX["brow_l"]], p - 2, BUMP[::2], 0.25)
            _add_pulse(m[:, IDX["brow_r"]], p - 2, BUMP[::2], 0.25)
            last_beat = p

    # gaze: at the viewer while listening, averted at the start of each agent turn, small saccades
    gaze_x, gaze_y = _ou(rng, n, 0.3, 0.04), _ou(rng, n, 0.3, 0.03)
    prev = ConvState.IDLE
    user_run = 0  # frames of the user's current phrase
    for t, s in enumerate(states):
        s = ConvState(int(s))
        if s == ConvState.SPEAKING and prev not in (ConvState.SPEAKING, ConvState.FEEDBACK, ConvState.AGENT_PAUSE):
            length = int(rng.integers(12, 30))
            side = rng.choice([-1.0, 1.0])
            _add_pulse(gaze_x, t, np.sin(np.linspace(0, np.pi, length)), 0.5 * side)
            _add_pulse(gaze_y, t, np.sin(np.linspace(0, np.pi, length)), -0.3)
        if s == ConvState.LISTENING and prev != ConvState.LISTENING:  # attention when the user starts
            _add_pulse(m[:, IDX["brow_l"]], t + 2, BUMP, 0.35)
            _add_pulse(m[:, IDX["brow_r"]], t + 2, BUMP, 0.35)
        # listening: timing follows the conversation (so a causal model can learn it), amplitude is random
        if s == ConvState.LISTENING:
            user_run = user_run + 1 if prev == ConvState.LISTENING else 1
            if user_run % 70 == 0:
                _nod(m, t, rng, events, backchannel=False, scale=0.6)  # a small nod every 2.8 s of user speech
        if s == ConvState.USER_PAUSE and prev == ConvState.LISTENING:  # the user's phrase ended
            _nod(m, t + 4, rng, events, backchannel=user_run >= 40)  # after a long phrase: "mm-hm" too
            user_run = 0
        if s == ConvState.INTERRUPTION and prev != ConvState.INTERRUPTION:
            _add_pulse(m[:, IDX["brow_l"]], t, BUMP, 0.5)
            _add_pulse(m[:, IDX["brow_r"]], t, BUMP, 0.5)
            _add_pulse(gaze_x, t, np.ones(10, np.float32), -0.8 * float(gaze_x[t]))
        prev = s
    m[:, IDX["gaze_x"]] += gaze_x
    m[:, IDX["gaze_y"]] += gaze_y

    # blinks: ~17 a minute, more often at turn changes
    t = int(rng.integers(0, 40))
    while t < n:
        _add_pulse(m[:, IDX["blink_l"]], t, BLINK, 1.0)
        _add_pulse(m[:, IDX["blink_r"]], t, BLINK, 1.0)
        changing = t + 1 < n and states[t] != states[min(n - 1, t + 8)]
        t += int(rng.exponential(40 if changing else 85)) + 8
    return clamp(m), events


def _nod(
    m: np.ndarray, t: int, rng: np.random.Generator, events: dict[str, list[int]], backchannel: bool, scale: float = 1.0
) -> None:
    amplitude = scale * float(rng.uniform(0.10, 0.16))
    _add_pulse(m[:, IDX["pitch"]], t, NOD, amplitude)
    events["nod"].append(t)
    if backchannel:  # a closed-mouth "mm-hm": lips press, corners rise, eyes smile
        _add_pulse(m[:, IDX["lip_press"]], t, BUMP[::2], 0.6)
        _add_pulse(m[:, IDX["smile"]], t, BUMP, 0.45)
        _add_pulse(m[:, IDX["squint"]], t, BUMP, 0.4)
        _add_pulse(m[:, IDX["cheek"]], t, BUMP, 0.4)
        events["backchannel"].append(t)


def count_nods(pitch: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Frames where nods peak in a pitch track: local maxima of the high-passed pitch above ``threshold``.

    High-passing (minus a 1 s moving average) removes slow sway; peaks closer than 0.5 s count once.
    """
    if len(pitch) < 27:
        return np.zeros(0, np.int64)
    kernel = np.ones(25, np.float32) / 25
    high = pitch - np.convolve(np.pad(pitch, 12, mode="edge"), kernel, mode="valid")
    peaks = np.flatnonzero((high[1:-1] > threshold) & (high[1:-1] >= high[:-2]) & (high[1:-1] > high[2:])) + 1
    kept: list[int] = []
    for p in peaks:
        if not kept or p - kept[-1] > 12:
            kept.append(int(p))
    return np.asarray(kept, np.int64)


def jitter(motion: np.ndarray) -> float:
    """Mean absolute frame-to-frame acceleration over the motion dims (T, MOTION_DIM)."""
    return float(np.abs(np.diff(motion, n=2, axis=0)).mean()) if len(motion) > 2 else 0.0


