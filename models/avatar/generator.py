"""Model `avatar`: serves the motion model and renderer through the generator contract (models/base.py).

Per 40 ms step and session: take the user's mic chunk (track 1) and the next chunk of queued agent speech
(track 2, pushed with `say`), featurize both (log-mels + silero-vad, batched over sessions and tracks),
update the conversational state, step the motion transformer one frame for the whole batch against the
shared ring KV cache, sample the frame's motion with the flow head, render the frames, and return the
video frame together with the agent audio of the *same* frame in one StepOutput, so the runtime stamps
both on one pts timeline (lips and voice cannot drift apart).

The agent track has a short look-ahead (``agent_ahead`` frames, 80 ms by default): agent speech is
featurized when it enters a small pipeline and played when it leaves it, so the mouth can open just
before the sound, as people's do. That pipeline is the avatar's only added audio latency.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.avatar.features import (
    HOP,
    SAMPLE_RATE_HZ,
    TRACK_DIM,
    ConversationTracker,
    ConvState,
    TrackFeaturizer,
    TrackState,
)
from models.avatar.model import AvatarConfig, MotionModel, load_checkpoint
from models.avatar.motion import MOTION_DIM
from models.avatar.portrait import MAX_PORTRAIT_BYTES, MAX_PORTRAIT_PIXELS, PortraitRenderer, fit_image
from models.avatar.render import STYLES, FaceRenderer
from models.avatar.speech_source import AgentSpeech, TextSpeech, decode_pcm16, load_speech_generator, resample_to_model
from models.base import AudioFormat, ControlEvent, Generator, Pacing, StepInput, StepOutput, StreamSpec, VideoFormat
from models.errors import ParamError
from models.params import decode_image, image_upload, seed_param, unknown_params

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "avatar_default.safetensors"
MAX_QUEUED_S = 120.0  # agent speech waiting to be played, per session
FPS = 25


@dataclass
class AvatarState:
    """One session: cache slot, sampling noise, feature windows, conversation and speech state."""

    slot: int
    rng: torch.Generator
    renderer: FaceRenderer | PortraitRenderer
    barge_in_frames: int  # 0: never stop the agent automatically
    agent_track: TrackState = field(default_factory=TrackState)
    user_track: TrackState = field(default_factory=TrackState)
    agent_window: np.ndarray | None = None  # (agent_past + 1 + agent_ahead, TRACK_DIM) features
    user_window: np.ndarray | None = None  # (user_past + 1, TRACK_DIM)
    prev: torch.Tensor | None = None  # (MOTION_DIM,) normalised motion of the last frame
    frame: int = 0
    tracker: ConversationTracker = field(default_factory=ConversationTracker)
    speech: AgentSpeech = field(default_factory=AgentSpeech)
    interruption_frames: int = 0
    motion: np.ndarray | None = None  # last frame's motion (for tests and benches)
    tts_state: Any = None  # the session of the speech generator, once `say` brought text
    tts_active: bool = False  # the speech generator has text left to speak


class Avatar(Generator):
    """Model `avatar`: user mic + agent speech -> talking, listening head video with the agent's voice."""

    name = "avatar"
    prepared_events = frozenset({"say"})  # pushed speech is decoded and resampled off the step thread

    def __init__(
        self,
        *,
        device: str = "cpu",
        checkpoint: str | None = None,
        config: str = "default",
        width: int = 256,
        height: int = 256,
        max_batch_size: int = 16,
        max_sessions: int = 64,
        tts: str | Generator | None = "auto",
    ) -> None:
        self.device = torch.device(device)
        if checkpoint is None and config == "default" and DEFAULT_CHECKPOINT.exists():
            checkpoint = str(DEFAULT_CHECKPOINT)
        if checkpoint:
            self.model, self.meta = load_checkpoint(checkpoint, self.device)
        else:  # random weights (paper-sized benches, tests of plumbing)
            self.model, self.meta = MotionModel(AvatarConfig.preset(config)).to(self.device).eval(), {}
        self.cfg = self.model.cfg
        self.spec = StreamSpec(
            chunk_ms=1000.0 / FPS,
            pacing=Pacing.CLOCK,
            input_audio=AudioFormat(SAMPLE_RATE_HZ),
            output_audio=AudioFormat(SAMPLE_RATE_HZ),
            output_video=VideoFormat(width, height, FPS),
            event_types=frozenset({"say", "interrupt"}),
            # two frames of lead over playout: a 40 ms step budget would admit one session per core, and
            # the extra 40 ms is small next to the 80 ms agent-audio look-ahead
            latency_allowance_ms=80.0,
        )
        self.max_batch_size = max_batch_size
        self.width, self.height = width, height
        self.cache = self.model.new_cache(max_sessions, self.device)
        self.featurizer = TrackFeaturizer()
        self._renderers = {name: FaceRenderer(width, height, name) for name in STYLES}
        speech_generator = load_speech_generator(tts, device)  # `say` with text needs one
        self.text_speech = TextSpeech(speech_generator, SAMPLE_RATE_HZ) if speech_generator else None

    # -- sessions ------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Summary for /healthz: ``speaks_text`` (`say {text}` works) and ``portrait`` (the param's limits)."""
        return {**super().describe(), "speaks_text": self.text_speech is not None,
                "portrait": {"max_bytes": MAX_PORTRAIT_BYTES}}

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`seed`, `style` (default/dark/light), `barge_in_ms` (0 = off), `portrait` (+ `portrait_mouth`).

        Cheap: a portrait's signature and size are checked here; prepare_session reads its header, caps its
        pixels and decodes it.
        """
        unknown_params("avatar", params, {"seed", "style", "barge_in_ms", "portrait", "portrait_mouth"})
        seed = seed_param(params, default=0)
        style = params.get("style", "default")
        if style not in STYLES:
            raise ParamError(f"'style' must be one of {sorted(STYLES)}")
        barge = params.get("barge_in_ms", 300)
        if not isinstance(barge, int | float) or isinstance(barge, bool) or not 0 <= barge <= 5000:
            raise ParamError("'barge_in_ms' must be a number of milliseconds in 0..5000 (0 disables)")
        out: dict[str, Any] = {"seed": seed, "style": style, "barge_in_ms": barge}
        if "portrait" in params:
            mouth = params.get("portrait_mouth", [0.5, 0.68])
            if (not isinstance(mouth, list | tuple) or len(mouth) != 2
                    or not all(isinstance(v, int | float) and 0.1 <= v <= 0.9 for v in mouth)):  # fmt: skip
                raise ParamError("'portrait_mouth' must be [x, y] in 0.1..0.9 (fractions of the image)")
            out["portrait_mouth"] = [float(v) for v in mouth]
            out["portrait"] = image_upload(params["portrait"], "portrait", MAX_PORTRAIT_BYTES)
        elif "portrait_mouth" in params:
            raise ParamError("'portrait_mouth' needs 'portrait'")
        return out

    def prepare_session(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Decode a portrait (pixels capped from its header first), fit it to the output and build its renderer."""
        out = dict(params)
        if "portrait" in out:
            data = out["portrait"]
            image = fit_image(decode_image(data, "portrait", MAX_PORTRAIT_PIXELS), self.width, self.height)
            out["renderer"] = PortraitRenderer(image, tuple(out["portrait_mouth"]))
            # the client is told a digest, not megabytes of base64
            out["portrait"] = "sha256:" + hashlib.sha256(data.encode()).hexdigest()[:16]
        return out

    def open_session(self, params: Mapping[str, Any]) -> AvatarState:
        """Allocate a cache slot and empty feature windows; params come from :meth:`prepare_session`."""
        if "portrait" in params and "renderer" not in params:
            raise ValueError("a portrait must go through prepare_session (models.base.open_direct)")
        cfg = self.cfg
        state = AvatarState(
            slot=self.cache.allocate(),
            rng=torch.Generator().manual_seed(int(params.get("seed", 0))),
            renderer=params.get("renderer") or self._renderers[params.get("style", "default")],
            barge_in_frames=round(float(params.get("barge_in_ms", 300)) / 1000 * FPS),
        )
        # frames before the session are all-zero rows, exactly as offline padding (model.condition_input)
        state.agent_window = np.zeros((cfg.agent_past + 1 + cfg.agent_ahead, TRACK_DIM), np.float32)
        state.user_window = np.zeros((cfg.user_past + 1, TRACK_DIM), np.float32)
        state.prev = torch.zeros(MOTION_DIM)
        for _ in range(cfg.agent_ahead):  # fill the look-ahead pipeline (silence until `say`)
            self._enter_pipeline([state])
        return state

    def describe_session(self, state: AvatarState, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters, a portrait as its digest."""
        return {k: v for k, v in params.items() if k != "renderer"}

    def close_session(self, state: AvatarState) -> None:
        """Give the cache slot (and any speech generator session) back."""
        self.cache.free(state.slot)
        if self.text_speech is not None:
            self.text_speech.close(state)

    def warmup_events(self) -> list[ControlEvent]:
        """A second of speech-like noise so warm-up measures a talking avatar."""
        rng = np.random.default_rng(0)
        audio = (0.2 * rng.standard_normal(SAMPLE_RATE_HZ) * np.sin(np.linspace(0, 12, SAMPLE_RATE_HZ)) ** 2)
        pcm = (audio * 32767).astype("<i2").tobytes()
        return [ControlEvent("say", {"audio": base64.b64encode(pcm).decode(), "sample_rate_hz": SAMPLE_RATE_HZ})]

    # -- events --------------------------------------------------------------------------------------
    def prepare_event(self, event: ControlEvent, scratch: dict[str, Any]) -> ControlEvent:
        """`say` with ``audio``: check it, decode the PCM16 and resample it to 16 kHz (off the step thread)."""
        p = event.payload
        if "audio" not in p:
            return event  # text, or an error handle_event reports
        rate = p.get("sample_rate_hz", SAMPLE_RATE_HZ)
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
            raise ParamError(f"'sample_rate_hz' must be an integer in 8000..48000, got {rate!r}")
        if not isinstance(p.get("final", True), bool):
            raise ParamError("'final' must be true or false")
        samples = resample_to_model(decode_pcm16(p["audio"]), rate)
        return ControlEvent(event.type, {k: v for k, v in p.items() if k != "audio"}, prepared=samples)

    def handle_event(self, state: AvatarState, event: ControlEvent) -> list[dict[str, Any]]:
        """`say` {audio (base64 PCM16 mono), sample_rate_hz, final} queues agent speech; `interrupt` stops it."""
        if event.type == "interrupt":
            dropped = self._stop_speech(state)
            state.tracker.interrupt()
            return [{"type": "barge_in", "frame": state.frame, "dropped_s": round(dropped, 3), "reason": "interrupt"}]
        if event.type != "say":
            return super().handle_event(state, event)
        p = event.payload
        if "text" in p and "audio" not in p:
            return self._say_text(state, p)
        if event.prepared is None:
            if "audio" in p:
                raise ValueError("pushed speech must go through prepare_event (models.base.apply_event)")
            raise ParamError("'say' needs 'audio' (base64 PCM16 mono) or 'text'")
        samples, final = event.prepared, p.get("final", True)
        if (state.speech.num_queued + len(samples)) / SAMPLE_RATE_HZ > MAX_QUEUED_S:
            raise ParamError(f"more than {MAX_QUEUED_S:.0f} s of agent speech would be queued")
        state.speech.push(samples, final)
        return [{"type": "speech_queued", "frame": state.frame, "seconds": round(len(samples) / SAMPLE_RATE_HZ, 3),
                 "queued_s": round(state.speech.num_queued / SAMPLE_RATE_HZ, 3)}]  # fmt: skip

    def _say_text(self, state: AvatarState, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.text_speech is None:
            raise ParamError("'say' with text needs the tts model, which is not loaded; send 'audio' instead")
        text, final, voice = p["text"], p.get("final", True), p.get("voice")
        if not isinstance(text, str) or not text.strip():
            raise ParamError("'text' must be a non-empty string")
        if not isinstance(final, bool) or (voice is not None and not isinstance(voice, str)):
            raise ParamError("'final' must be true or false and 'voice' a string")
        return self.text_speech.say(state, text, final, voice)

    def _stop_speech(self, state: AvatarState) -> float:
        """Drop the agent's unplayed speech and stop synthesis; returns the seconds dropped."""
        if self.text_speech is not None:
            self.text_speech.interrupt(state)
        return state.speech.clear()

    # -- stepping ------------------------------------------------------------------------------------
    def step(
        self, states: Sequence[AvatarState], inputs: Sequence[StepInput], padded_batch_size: int
    ) -> list[StepOutput]:
        """One 40 ms frame for every session of the batch."""
        notices: list[list[dict[str, Any]]] = [[] for _ in states]
        if self.text_speech is not None:  # keep speech from text a few chunks ahead of the pipeline
            self.text_speech.pump(states, target_samples=3 * HOP)
        user_audio = np.stack([self._mic(i) for i in inputs])  # (B, HOP)
        user_feat = self._enter_pipeline(states, user_audio)  # both tracks featurized in one batch
        agent_audio = [s.speech.pipeline.popleft() for s in states]
        for s, uf in zip(states, user_feat, strict=True):
            s.user_window = np.concatenate([s.user_window[1:], uf[None]])
        conv = [self._update_state(s, n) for s, n in zip(states, notices, strict=True)]
        motion = self.motion_step(states, conv)
        frames = np.stack([s.renderer.render(m) for s, m in zip(states, motion, strict=True)])
        out = []
        for i, s in enumerate(states):
            s.motion = motion[i]
            s.frame += 1
            out.append(StepOutput(audio=agent_audio[i], video=frames[i : i + 1], notices=notices[i]))
        return out

    @torch.no_grad()
    def motion_step(self, states: Sequence[AvatarState], conv: Sequence[int]) -> np.ndarray:
        """Advance the motion transformer one frame for a batch; returns motion (B, MOTION_DIM)."""
        dev = self.device
        agent_win = torch.from_numpy(np.stack([s.agent_window for s in states])).to(dev)
        user_win = torch.from_numpy(np.stack([s.user_window for s in states])).to(dev)
        cond = self.model.window_input(agent_win, user_win, torch.tensor(conv, device=dev))
        prev = torch.stack([s.prev for s in states]).to(dev)
        positions = torch.tensor([s.frame for s in states], device=dev)
        h = self.model.step(self.cache, [s.slot for s in states], positions, prev, cond)
        noise = torch.cat([torch.randn(1, MOTION_DIM, generator=s.rng) for s in states]).to(dev)
        x = self.model.sample(h, noise)
        for s, xi in zip(states, x.cpu(), strict=True):
            s.prev = xi
        return self.model.denormalize(x).cpu().numpy()

    def _enter_pipeline(self, states: Sequence[AvatarState], user_audio: np.ndarray | None = None) -> np.ndarray:
        """Pull the next agent chunk of each session, featurize it, and queue it for playout.

        With ``user_audio`` (B, HOP) the mic chunks are featurized in the same batch; returns their features.
        """
        chunks = np.stack([s.speech.pull() for s in states])
        tracks = [s.agent_track for s in states]
        if user_audio is not None:
            tracks += [s.user_track for s in states]
            chunks = np.concatenate([chunks, user_audio])
        feats = self.featurizer.step(tracks, chunks)
        for s, chunk, f in zip(states, chunks, feats, strict=False):
            s.speech.pipeline.append(chunk)
            s.agent_window = np.concatenate([s.agent_window[1:], f[None]])
        return feats[len(states) :]

    def _update_state(self, s: AvatarState, notices: list[dict[str, Any]]) -> int:
        """Conversational state of the frame being played; auto barge-in; notices on changes."""
        cfg = self.cfg
        before = s.tracker.state
        now = s.tracker.update(float(s.agent_window[cfg.agent_past, -1]), float(s.user_window[-1, -1]))
        s.interruption_frames = s.interruption_frames + 1 if now == ConvState.INTERRUPTION else 0
        if s.barge_in_frames and s.interruption_frames == s.barge_in_frames and (s.speech.num_queued or s.tts_active):
            dropped = self._stop_speech(s)
            notices.append({"type": "barge_in", "frame": s.frame, "dropped_s": round(dropped, 3), "reason": "user"})
        if now != before:
            notices.append({"type": "state", "state": now.name.lower(), "frame": s.frame})
        return int(now)

    @staticmethod
    def _mic(step_input: StepInput) -> np.ndarray:
        if step_input.audio is None:
            return np.zeros(HOP, np.float32)
        audio = np.asarray(step_input.audio, np.float32)[:HOP]
        return np.pad(audio, (0, HOP - len(audio))) if len(audio) < HOP else audio
