"""Avatar motion model, features and renderer: streaming == offline, batch == single, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from avatar_helpers import speech, tiny_avatar

from models.avatar.features import HOP, TRACK_DIM, TrackFeaturizer, TrackState, track_features
from models.avatar.model import AvatarConfig, MotionModel
from models.avatar.motion import MOTION_DIM
from models.avatar.render import FaceRenderer
from models.base import StepInput, apply_event


def tiny_model(seed: int = 0, **overrides) -> MotionModel:
    torch.manual_seed(seed)
    cfg = AvatarConfig.preset("tiny")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = MotionModel(cfg).eval()
    with torch.no_grad():  # non-trivial normalisation so its plumbing is exercised
        model.feat_mean.normal_()
        model.feat_std.uniform_(0.5, 2.0)
        model.motion_std.uniform_(0.5, 2.0)
    return model


def random_tracks(t: int, ahead: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    agent = torch.randn(t + ahead, TRACK_DIM, generator=g)
    user = torch.randn(t, TRACK_DIM, generator=g)
    states = torch.randint(0, 7, (t,), generator=g)
    return agent, user, states


def test_streaming_equals_offline_through_ring_wraparound():
    model = tiny_model()
    t = 3 * model.cfg.window + 5  # the ring wraps several times
    agent, user, states = random_tracks(t, model.cfg.agent_ahead)
    streamed = model.rollout(agent, user, states, torch.Generator().manual_seed(7))  # motion units (T, D)
    # offline: one causal pass over the whole sequence, teacher-forced with the streamed motion
    prev = torch.cat([torch.zeros(1, MOTION_DIM), model.normalize(streamed[:-1])])
    with torch.no_grad():
        h = model(prev[None], model.condition_input(agent[None], user[None], states[None]), torch.arange(t)[None])[0]
        g = torch.Generator().manual_seed(7)
        noise = torch.cat([torch.randn(1, MOTION_DIM, generator=g) for _ in range(t)])
        offline = model.denormalize(model.sample(h, noise))
    torch.testing.assert_close(offline, streamed, atol=1e-4, rtol=1e-4)


def test_generator_motion_equals_model_rollout_on_its_own_tracks():
    """The served path (pipeline, windows, tracker) feeds the model exactly what the offline path would."""
    gen = tiny_avatar()
    gen.model = tiny_model()
    gen.cfg = gen.model.cfg
    state = gen.open_session(gen.validate_params({"seed": 3}))
    agent_audio = speech("agent")
    from avatar_helpers import b64_pcm16

    apply_event(gen, state, _say(b64_pcm16(agent_audio)))
    mic = np.concatenate([np.zeros(HOP * 30, np.float32), speech("user")])
    past = gen.cfg.agent_past
    agent_rows, user_rows, conv, motion = [], [], [], []
    for k in range(60):
        gen.step([state], [StepInput(mic[k * HOP : (k + 1) * HOP], HOP)], 1)
        agent_rows.append(state.agent_window[past].copy())
        user_rows.append(state.user_window[-1].copy())
        conv.append(int(state.tracker.state))
        motion.append(state.motion)
    agent = torch.from_numpy(np.stack(agent_rows + list(state.agent_window[past + 1 :])))
    offline = gen.model.rollout(agent, torch.from_numpy(np.stack(user_rows)), torch.tensor(conv),
                                torch.Generator().manual_seed(3))
    torch.testing.assert_close(offline, torch.from_numpy(np.stack(motion)), atol=1e-4, rtol=1e-4)


def _say(audio_b64: str):
    from models.base import ControlEvent

    return ControlEvent("say", {"audio": audio_b64, "sample_rate_hz": 16000})


def test_batch_equals_single():
    from avatar_helpers import b64_pcm16

    def run(batch_seeds: list[int]) -> dict[int, np.ndarray]:
        gen = tiny_avatar()
        gen.model = tiny_model()
        gen.cfg = gen.model.cfg
        states = {seed: gen.open_session(gen.validate_params({"seed": seed})) for seed in batch_seeds}
        for seed, s in states.items():  # different inputs per session
            apply_event(gen, s, _say(b64_pcm16(speech("agent")[seed * 3000 :])))
        mic = {seed: np.roll(speech("user"), seed * 5000) for seed in batch_seeds}
        out: dict[int, list] = {seed: [] for seed in batch_seeds}
        for k in range(25):
            seeds = list(states)
            inputs = [StepInput(mic[sd][k * HOP : (k + 1) * HOP], HOP) for sd in seeds]
            outputs = gen.step([states[sd] for sd in seeds], inputs, len(seeds))
            for sd, o in zip(seeds, outputs, strict=True):
                out[sd].append((states[sd].motion, o.video, o.audio))
        return out

    together = run([1, 2, 5])
    for seed in (1, 5):
        alone = run([seed])[seed]
        for (m_b, v_b, a_b), (m_s, v_s, a_s) in zip(together[seed], alone, strict=True):
            np.testing.assert_allclose(m_b, m_s, atol=1e-5)
            assert np.abs(v_b.astype(int) - v_s.astype(int)).max() <= 1
            np.testing.assert_array_equal(a_b, a_s)


def test_bounded_memory_over_30_minutes_of_frames():
    """45,000 frames (30 min at 25 fps) through one session's cache, 8 frames per call to stay fast."""
    model = tiny_model(window=8)
    cache = model.new_cache(2)
    slot = cache.allocate()
    before = (cache.k.data_ptr(), cache.k.shape)
    num_frames, chunk = 30 * 60 * 25, 8
    prev = torch.zeros(1, chunk, MOTION_DIM)
    cond = torch.zeros(1, chunk, model.cfg.cond_frames * TRACK_DIM + model.cfg.num_states)
    with torch.no_grad():
        for t in range(0, num_frames, chunk):
            h = model.step_frames(cache, [slot], torch.arange(t, t + chunk)[None], prev, cond)
    assert (cache.k.data_ptr(), cache.k.shape) == before  # nothing reallocated or grown
    assert cache.num_entries(slot) == model.cfg.window
    assert int(cache.labels[slot].max()) == num_frames - 1 + (-num_frames % chunk)  # positions kept counting
    assert torch.isfinite(h).all()
    # the last chunk attends only inside the window: equal to an offline pass over just the window
    with torch.no_grad():
        offline = model(prev.repeat(1, 2, 1), cond.repeat(1, 2, 1), torch.arange(t - chunk, t + chunk)[None])
    torch.testing.assert_close(h, offline[:, chunk:], atol=1e-4, rtol=1e-4)


def test_session_state_stays_bounded_through_long_silence():
    gen = tiny_avatar()
    state = gen.open_session(gen.validate_params({}))
    silence = StepInput(np.zeros(HOP, np.float32), 0)
    sizes = []
    for k in range(500):  # 20 s of nothing: idle, no growth
        gen.step([state], [silence], 1)
        if k in (100, 499):
            sizes.append((len(state.speech.pipeline), state.speech.num_queued, state.agent_window.shape,
                          gen.cache.num_entries(state.slot)))
    assert sizes[0] == sizes[1]
    assert state.tracker.state.name == "IDLE"
    gen.close_session(state)
    assert gen.cache.slots.num_used == 0


def test_streaming_features_equal_offline_features():
    audio = speech("agent")
    featurizer = TrackFeaturizer()
    offline = track_features(featurizer, audio)
    state = TrackState()
    streamed = np.stack([featurizer.step([state], audio[i * HOP : (i + 1) * HOP][None])[0]
                         for i in range(len(audio) // HOP)])
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    vad = offline[:, -1]
    assert vad.max() > 0.9 and vad[:3].max() < 0.5  # silero hears the speech, not the leading silence


@pytest.mark.parametrize("style", ["default", "dark", "light"])
def test_renderer_draws_anti_aliased_frames(style):
    from models.avatar.motion import IDX, REST

    renderer = FaceRenderer(256, 256, style)
    closed, open_ = REST.copy(), REST.copy()
    open_[IDX["jaw"]] = 1.0
    a, b = renderer.render(closed), renderer.render(open_)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).sum() > 0  # the mouth moved
    # anti-aliasing: along the head outline there are blended (in-between) colours, not just two
    row = a[120, :, 0].astype(int)
    assert len(np.unique(row)) > 8
    batch = renderer.render_batch(np.stack([closed, open_]))
    np.testing.assert_array_equal(batch[1], b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_motion_model_on_gpu_matches_cpu():
    model = tiny_model()
    agent, user, states = random_tracks(40, model.cfg.agent_ahead)
    cpu = model.rollout(agent, user, states, torch.Generator().manual_seed(1))
    gpu_model = tiny_model().cuda()
    gpu = gpu_model.rollout(agent.cuda(), user.cuda(), states.cuda(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
