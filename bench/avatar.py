"""Avatar benchmarks, printed as JSON lines (one per measurement).

    python bench/avatar.py                      # everything on CPU (default checkpoint)
    python bench/avatar.py --only render,serve  # a subset: render, capacity, quality, serve
    python bench/avatar.py --device cuda --config paper   # GPU capacity of the paper-sized model (untested here)

- render: renderer frames per second at 256x256 on one core (CPU time and wall time).
- capacity: full served step (features + VAD + motion model + flow head + render) for B sessions; fps per
  session and the most sessions whose step fits one 40 ms frame (held in real time at 25 fps).
- quality: on held-out conversations (unseen voices; ``data/avatar/heldout.npz`` from
  scripts/make_avatar_data.py, else the test fixture speech): lip sync (correlation of generated jaw opening
  with the agent speech envelope, target >= 0.6), nods per minute while the user speaks vs in silence, and
  motion jitter (mean |frame-to-frame acceleration|) of model vs teacher.
- serve: through the real server on 127.0.0.1 over the WebSocket client: time from sending agent speech
  (`say`) to receiving the chunk that carries its first sound (video and audio of a chunk share its pts),
  motion-to-photon latency to the first received frame with the mouth clearly open, the A/V offset
  measured on received pts and pixels over the run, and the time from the user's voice onset (sent while
  the agent talks) to the `interruption` state notice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: run as `python bench/avatar.py`

from models.audio.dsp import read_wav  # noqa: E402
from models.avatar.features import HOP, ConvState, frame_energy  # noqa: E402
from models.avatar.generator import Avatar  # noqa: E402
from models.avatar.motion import IDX, count_nods, jitter  # noqa: E402
from models.avatar.render import FaceRenderer, mouth_openness  # noqa: E402
from models.base import ControlEvent, StepInput, apply_event  # noqa: E402
from streaming.client.ws import pcm16_base64 as b64_pcm16  # noqa: E402


def speech(name: str) -> np.ndarray:
    """The tests' fixture utterance 'agent' or 'user' (tests/data), float32 16 kHz."""
    samples, _ = read_wav(str(ROOT / "tests" / "data" / f"avatar_{name}_speech.wav"))
    return samples


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def bench_render(num_frames: int = 300) -> None:
    renderer = FaceRenderer(256, 256)
    rng = np.random.default_rng(0)
    data = _heldout()
    motions = data["motion"][:num_frames] if data else rng.uniform(-0.3, 0.3, (num_frames, 20)).astype(np.float32)
    renderer.render(motions[0])
    cpu, wall = time.process_time(), time.perf_counter()
    for m in motions:
        renderer.render(m)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    emit(bench="avatar_render", width=256, height=256, frames=len(motions), fps_cpu_time=round(len(motions) / cpu, 1),
         fps_wall=round(len(motions) / wall, 1), load_avg_1m=os.getloadavg()[0])  # fmt: skip


def bench_capacity(device: str, config: str, max_sessions: int, steps: int) -> None:
    gen = Avatar(device=device, config=config, checkpoint=None if config == "default" else "", tts=None)
    agent = speech("agent")
    held = held_cpu = 0
    batch = 1
    while batch <= max_sessions:
        states = [gen.open_session(gen.validate_params({"seed": i})) for i in range(batch)]
        for s in states:
            apply_event(gen, s, ControlEvent("say", {"audio": b64_pcm16(np.tile(agent, 4))}))
        mic = speech("user")
        inputs = [StepInput(mic[:HOP], HOP) for _ in states]
        gen.step(states, inputs, batch)
        times, cpu_times = [], []
        for k in range(steps):
            inputs = [StepInput(mic[(k % 50) * HOP : (k % 50 + 1) * HOP], HOP) for _ in states]
            t, c = time.perf_counter(), time.process_time()
            gen.step(states, inputs, batch)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
        for s in states:
            gen.close_session(s)
        p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
        cpu50 = float(np.percentile(cpu_times, 50))
        realtime = p99 <= 0.040
        held = batch if realtime else held
        held_cpu = batch if cpu50 <= 0.040 else held_cpu
        emit(bench="avatar_capacity", device=device, config=config, sessions=batch, step_ms_p50=round(p50 * 1e3, 2),
             step_ms_p99=round(p99 * 1e3, 2), step_cpu_ms_p50=round(cpu50 * 1e3, 2), fps_per_session=round(1 / p50, 1),
             aggregate_fps=round(batch / p50, 1), real_time=realtime, load_avg_1m=os.getloadavg()[0])  # fmt: skip
        if cpu50 > 0.040:
            break
        batch *= 2
    emit(bench="avatar_sessions_held", device=device, config=config, sessions_in_real_time_25fps_wall_p99=held,
         sessions_in_real_time_25fps_cpu_time=held_cpu, threads=torch.get_num_threads())  # fmt: skip


def _heldout() -> dict | None:
    path = ROOT / "data" / "avatar" / "heldout.npz"
    return dict(np.load(path)) if path.exists() else None


def bench_quality(max_clips: int) -> None:
    data = _heldout()
    if data is None:
        emit(bench="avatar_quality", skipped="no data/avatar/heldout.npz (run scripts/make_avatar_data.py)")
        return
    gen = Avatar(tts=None)
    model = gen.model
    rows = []
    offsets = data["offsets"]
    for k in range(min(max_clips, len(offsets) - 1)):
        lo, hi = offsets[k], offsets[k + 1]
        agent, user, states = (torch.from_numpy(data[key][lo:hi]) for key in ("agent", "user", "state"))
        motion = model.rollout(agent, user, states, torch.Generator().manual_seed(k)).numpy()
        envelope = frame_energy(data["agent_audio"][lo * HOP : hi * HOP])
        teacher = data["motion"][lo:hi]
        rows.append((motion, teacher, envelope, states.numpy()))
    motion, teacher, envelope, states = (np.concatenate([r[i] for r in rows]) for i in range(4))
    speaking = envelope > 0.01
    emit(bench="avatar_lipsync", clips=len(rows), frames=len(motion),
         jaw_vs_envelope_corr=round(float(np.corrcoef(motion[:, IDX["jaw"]], envelope)[0, 1]), 3),
         teacher_jaw_vs_envelope_corr=round(float(np.corrcoef(teacher[:, IDX["jaw"]], envelope)[0, 1]), 3),
         jaw_vs_teacher_corr=round(float(np.corrcoef(motion[:, IDX["jaw"]], teacher[:, IDX["jaw"]])[0, 1]), 3),
         speaking_frames=int(speaking.sum()))  # fmt: skip
    user_turn = np.isin(states, [ConvState.LISTENING, ConvState.USER_PAUSE])
    silent = states == ConvState.IDLE
    agent_turn = np.isin(states, [ConvState.SPEAKING, ConvState.AGENT_PAUSE, ConvState.FEEDBACK])
    for name, m in (("model", motion), ("teacher", teacher)):
        nods = np.zeros(len(m), bool)
        for r_lo, r_hi in _clip_bounds(rows):
            nods[r_lo + count_nods(m[r_lo:r_hi, IDX["pitch"]])] = True
        emit(bench="avatar_listening", source=name,
             nods_per_min_user_speaking=_rate(nods, user_turn), nods_per_min_silent=_rate(nods, silent),
             nods_per_min_agent_speaking=_rate(nods, agent_turn),
             smiles_per_min_user_speaking=_rate(_onsets(m[:, IDX["smile"]] > 0.35), user_turn),
             smiles_per_min_silent=_rate(_onsets(m[:, IDX["smile"]] > 0.35), silent))  # fmt: skip
    emit(bench="avatar_jitter", model=round(jitter(motion), 5), teacher=round(jitter(teacher), 5),
         ratio=round(jitter(motion) / jitter(teacher), 3))  # fmt: skip


def _clip_bounds(rows: list) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for r in rows:
        bounds.append((start, start + len(r[0])))
        start += len(r[0])
    return bounds


def _onsets(flag: np.ndarray) -> np.ndarray:
    return flag & ~np.concatenate([[False], flag[:-1]])


def _rate(events: np.ndarray, where: np.ndarray) -> float:
    minutes = where.sum() / 25 / 60
    return round(float(events[where].sum() / minutes), 2) if minutes > 0 else float("nan")


async def bench_serve(seconds: float, lead_ms: float) -> None:
    from aiohttp import web

    from streaming.client import Client, MediaCollector
    from streaming.engine.core import EngineConfig
    from streaming.engine.scheduler import AdmissionLimits
    from streaming.protocol import VIDEO_CLOCK_HZ, MediaKind
    from streaming.server import ServerConfig, create_app
    from streaming.session import SessionConfig

    # one session: admit it even on a busy machine; produce `lead_ms` ahead of playout
    engine = EngineConfig(warmup_max_batch=4, session=SessionConfig(clock_lead_ms=lead_ms),
                          limits=AdmissionLimits(max_utilization=10.0, max_recent_late_rate=1.0))  # fmt: skip
    config = ServerConfig(host="127.0.0.1", port=0, models=("avatar",), engine=engine)
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    agent = speech("agent")
    voice_latencies, mouth_latencies, collector = [], [], None
    try:
        async with Client(f"ws://127.0.0.1:{port}/ws") as client:
            ready = await client.start("avatar", {"seed": 0}, input_sample_rate_hz=16000, audio="pcm16", video="jpeg")
            collector = MediaCollector(ready)
            end = time.monotonic() + seconds
            next_say = time.monotonic() + 1.0
            sent_at, voice_seen, mouth_seen = None, True, True
            while time.monotonic() < end:
                if time.monotonic() >= next_say and mouth_seen and voice_seen:
                    await client.send({"type": "say", "audio": b64_pcm16(agent)})
                    sent_at, voice_seen, mouth_seen = time.monotonic(), False, False
                    next_say = sent_at + len(agent) / 16000 + 1.5
                item = await client.receive(5)
                if isinstance(item, dict):
                    continue
                collector.add(item)
                now = time.monotonic()
                if item.kind is MediaKind.AUDIO and not voice_seen:  # the chunk carrying the first speech
                    if np.abs(collector.audio[0][-1]).max() > 0.02:
                        voice_latencies.append(now - sent_at)
                        voice_seen = True
                if item.kind is MediaKind.VIDEO and not mouth_seen:  # the first clearly open mouth
                    if mouth_openness(collector.video[1][-1]) > 0.01:
                        mouth_latencies.append(now - sent_at)
                        mouth_seen = True
            interruption_s = await _interrupt_latency(client, agent)
            await client.stop()
    finally:
        await runner.cleanup()
    audio_frames = [f for f in collector.frames if f.kind is MediaKind.AUDIO]
    video_frames = [f for f in collector.frames if f.kind is MediaKind.VIDEO]
    energy = frame_energy(collector.audio_samples(0))[: len(video_frames)]
    mouth = np.array([mouth_openness(f) for f in collector.video[1][: len(energy)]])
    lags = list(range(-3, 4))
    scores = [float(np.corrcoef(np.roll(mouth, -lag)[5:-5], energy[5:-5])[0, 1]) for lag in lags]
    pairs = zip(audio_frames, video_frames, strict=False)  # chunk k's audio and video
    pts_offset_ms = max(abs(a.pts / 16000 - v.pts / VIDEO_CLOCK_HZ) * 1e3 for a, v in pairs)
    def ms(values: list[float], fn) -> float | None:
        return round(1e3 * float(fn(values)), 1) if values else None

    emit(bench="avatar_serve", seconds=seconds, clock_lead_ms=lead_ms, utterances=len(mouth_latencies),
         user_onset_to_interruption_notice_ms=round(1e3 * interruption_s, 1) if interruption_s else None,
         say_to_voice_frame_ms_mean=ms(voice_latencies, np.mean), say_to_voice_frame_ms_max=ms(voice_latencies, np.max),
         motion_to_photon_ms_mean=ms(mouth_latencies, np.mean), motion_to_photon_ms_max=ms(mouth_latencies, np.max),
         av_offset_ms_measured=40 * lags[int(np.argmax(scores))], av_mouth_voice_corr=round(max(scores), 3),
         max_pts_offset_ms=round(pts_offset_ms, 3), frames=len(video_frames))  # fmt: skip


async def _interrupt_latency(client, agent: np.ndarray) -> float | None:
    """Wall time from the user's first voiced mic frame, sent while the agent talks, to `interruption`.

    The mic is sent paced in 20 ms frames: 1 s of silence, then the user's speech.
    """
    await client.send({"type": "say", "audio": b64_pcm16(np.tile(agent, 3))})
    user = speech("user")
    onset = int(np.argmax(np.abs(user) > 0.02)) // 320 * 320
    mic = np.concatenate([np.zeros(16000, np.float32), user[onset:]])  # 1 s of silence, then speech
    start = time.monotonic()
    voiced_at = start + 1.0
    for i in range(0, len(mic), 320):
        await client.send_audio(mic[i : i + 320])
        while True:  # drain what arrived, watching for the notice, until the next frame is due
            due = start + (i + 320) / 16000
            try:
                item = await client.receive(max(0.001, due - time.monotonic()))
            except TimeoutError:
                break
            if isinstance(item, dict) and item.get("state") == "interruption" and time.monotonic() > voiced_at:
                return time.monotonic() - voiced_at
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="render,capacity,quality,serve")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="default")
    ap.add_argument("--max-sessions", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--serve-seconds", type=float, default=30.0)
    ap.add_argument("--lead-ms", type=float, default=80.0, help="serve: how far ahead of playout chunks are made")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = set(args.only.split(","))
    if "render" in parts:
        bench_render()
    if "capacity" in parts:
        bench_capacity(args.device, args.config, args.max_sessions, args.steps)
    if "quality" in parts:
        bench_quality(args.clips)
    if "serve" in parts:
        asyncio.run(bench_serve(args.serve_seconds, args.lead_ms))


if __name__ == "__main__":
    main()
