"""Video family on tiny random-weight configs: the cache invariants (streaming == offline, batch == single,
flat memory), the three prompt-switch strategies, the causal decoder, and bad input."""

import time

import numpy as np
import pytest
import torch

from models.base import ControlEvent, StepInput
from models.errors import ParamError
from models.video.autoencoder import AutoencoderConfig, LatentAutoencoder
from models.video.checkpoint import random_models
from models.video.generator import VideoGenerator
from models.video.model import VideoConfig
from models.video.text import PromptEncoder, sentence_embedding


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on a shared 2-core machine: one thread avoids oversubscription (10x slower otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cond(model, cfg, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, 1, cfg.text_tokens, cfg.text_dim, generator=g)
    return model.condition(text, torch.ones(batch, 1, cfg.text_tokens, dtype=torch.bool))


def test_streaming_block_by_block_equals_one_block_causal_pass():
    cfg = VideoConfig.tiny()
    model, _ = random_models(cfg, seed=1)
    batch, num_blocks = 2, 6  # past sink + window, so the ring wraps and evicts
    cond = _cond(model, cfg, batch)
    cache = model.new_cache(3)
    slots = [cache.allocate(), cache.allocate()]
    in_dim = cfg.latent_channels * cfg.patch**2
    latents, traces = [], []
    for b in range(num_blocks):
        steps = cfg.first_block_steps if b == 0 else cfg.num_steps
        noise = torch.randn(steps, batch, cfg.tokens_per_block, in_dim, generator=torch.Generator().manual_seed(b))
        trace: list = []
        latents.append(model.generate_block(cache, slots, torch.full((batch,), b), cond, noise, steps, trace))
        traces.append(trace)
    clean = model.patchify(torch.cat(latents, 1))  # (B, T, in)
    num_tokens = clean.shape[1]
    block_ids = model.token_repeat(torch.arange(num_blocks).repeat_interleave(cfg.block_frames)[None].expand(batch, -1))
    positions = model.positions(torch.arange(num_blocks * cfg.block_frames)[None].expand(batch, -1))
    mask = model.teacher_forcing_mask(block_ids)
    for step in range(cfg.num_steps):  # every block's step-th denoising pass, all in one offline pass
        noisy = torch.cat([traces[b][step][1] for b in range(num_blocks)], 1)
        t = torch.cat([traces[b][step][0].expand(batch, cfg.tokens_per_block) for b in range(num_blocks)], 1)
        offline = model(torch.cat([clean, noisy], 1), torch.cat([torch.zeros_like(t), t], 1),
                        torch.cat([positions, positions], 1), mask, cond,
                        torch.zeros(batch, 2 * num_tokens, dtype=torch.long))[:, num_tokens:]
        streamed = torch.cat([traces[b][step][2] for b in range(num_blocks)], 1)
        torch.testing.assert_close(streamed, offline, atol=2e-5, rtol=1e-4)


def _tiny_generator(**kw):
    return VideoGenerator(config="tiny", max_sessions=kw.pop("max_sessions", 4), **kw)


def _run(gen, states, num_blocks):
    return [gen.step(states, [StepInput()] * len(states), len(states)) for _ in range(num_blocks)]


def test_batch_equals_single():
    params = [{"seed": 1, "prompt": "a red circle"}, {"seed": 2, "prompt": "a blue square", "switch": "clear"}]
    gen = _tiny_generator()
    together = [gen.open_session(p) for p in params]
    joint = _run(gen, together, 5)
    for i, p in enumerate(params):
        alone_gen = _tiny_generator()
        alone = _run(alone_gen, [alone_gen.open_session(p)], 5)
        for b in range(5):
            diff = abs(joint[b][i].video.astype(int) - alone[b][0].video.astype(int)).max()
            assert diff <= 1, f"session {i} block {b} differs by {diff}"


def test_memory_is_flat_after_the_window_fills():
    gen = _tiny_generator(max_sessions=1)
    state = gen.open_session({})
    cfg = gen.cfg
    full = (cfg.sink_blocks + cfg.window_blocks + 1) * cfg.tokens_per_block
    storage = (gen.cache.k.data_ptr(), gen.cache.k.shape)
    entries = []
    for b in range(500):
        gen.step([state], [StepInput()], 1)
        entries.append(gen.cache.num_entries(state.slot))
        if b == 250:
            gen.handle_event(state, ControlEvent("prompt", {"text": "a switch mid-stream"}))
    assert max(entries) <= full and entries[-1] == entries[10] == full  # sink + window + the newest block
    assert (gen.cache.k.data_ptr(), gen.cache.k.shape) == storage
    assert len(state.history) == cfg.window_blocks and state.num_blocks == 500
    assert state.prev_latent.shape == (cfg.latent_channels, cfg.latent_h, cfg.latent_w)


def _snapshot(gen, slot):
    return gen.cache.k[:, slot].clone(), gen.cache.v[:, slot].clone(), gen.cache.labels[slot].clone()


def _switch(strategy, num_blocks=5):
    gen = _tiny_generator(max_sessions=2)
    state = gen.open_session({"switch": strategy})
    _run(gen, [state], num_blocks)
    before = _snapshot(gen, state.slot)
    cross_before = gen.cross_k[:, state.slot].clone()
    notice = gen.apply_switch(state, "something else entirely", strategy)
    return gen, state, before, _snapshot(gen, state.slot), cross_before, notice


def test_recache_rewrites_only_the_window_and_spares_the_sink():
    gen, state, (k0, v0, lab0), (k1, v1, lab1), cross0, notice = _switch("recache")
    cfg = gen.cfg
    sink = cfg.sink_blocks * cfg.tokens_per_block
    assert notice["recached_blocks"] == cfg.window_blocks
    assert torch.equal(lab0, lab1)  # same entries, same labels
    torch.testing.assert_close(k1[:, :sink], k0[:, :sink], atol=0, rtol=0)  # global sink kept
    changed = (k1 != k0).flatten(2).any(-1).any(0)  # (entries,)
    recached = (lab1 >= state.num_blocks - cfg.window_blocks)
    assert changed.any() and not (changed & ~recached).any()  # only the window's blocks were rewritten
    assert not torch.equal(gen.cross_k[:, state.slot], cross0)


def test_recache_right_after_the_first_block_leaves_the_sink_alone():
    gen, state, (k0, v0, lab0), (k1, v1, lab1), _, notice = _switch("recache", num_blocks=1)
    assert notice["recached_blocks"] == 0
    assert torch.equal(k0, k1) and torch.equal(lab0, lab1)


def test_keep_changes_only_cross_attention():
    gen, state, (k0, v0, lab0), (k1, v1, lab1), cross0, _ = _switch("keep")
    assert torch.equal(k0, k1) and torch.equal(v0, v1) and torch.equal(lab0, lab1)
    assert not torch.equal(gen.cross_k[:, state.slot], cross0)


def test_clear_empties_the_cache_and_restarts_with_more_steps():
    gen, state, _, (_, _, lab1), _, _ = _switch("clear")
    assert (lab1 < 0).all() and state.fresh and not state.history
    gen.step([state], [StepInput()], 1)
    assert gen.cache.num_entries(state.slot) == gen.cfg.tokens_per_block  # a new sink


def test_prompt_flood_is_coalesced_and_never_stalls():
    gen = _tiny_generator(max_sessions=1)
    state = gen.open_session({})
    _run(gen, [state], 2)
    t0 = time.perf_counter()
    _run(gen, [state], 3)
    block_s = (time.perf_counter() - t0) / 3
    notices = []
    for i in range(100):  # 100 switches within one block (100 per second and more)
        notices += gen.handle_event(state, ControlEvent("prompt", {"text": f"prompt number {i}"}))
    assert len(notices) == 1
    t0 = time.perf_counter()
    out = gen.step([state], [StepInput()], 1)[0]
    assert time.perf_counter() - t0 < 10 * block_s + 0.05
    applied = [n for n in out.notices if n["type"] == "prompt_applied"]
    assert len(applied) == 1 and applied[0]["text"] == "prompt number 99" and applied[0]["coalesced"] == 99
    assert state.num_switches == 1


def test_bad_prompts():
    gen = _tiny_generator(max_sessions=1)
    state = gen.open_session({})
    for bad in ("", "   ", None, 42, "x" * 20_000):
        with pytest.raises(ParamError):
            gen.handle_event(state, ControlEvent("prompt", {"text": bad}))
    with pytest.raises(ParamError):
        gen.handle_event(state, ControlEvent("prompt", {"text": "ok", "switch": "sideways"}))
    with pytest.raises(ParamError):
        gen.validate_params({"bogus": 1})
    gen.handle_event(state, ControlEvent("prompt", {"text": "zxqv blorp " * 1000}))  # 11 kB of unknown words
    out = gen.step([state], [StepInput()], 1)[0]
    assert out.video.shape == (gen.spec.frames_per_chunk, gen.cfg.height, gen.cfg.width, 3)


def test_causal_decoder_streams_exactly():
    torch.manual_seed(0)
    ae = LatentAutoencoder(AutoencoderConfig(latent_channels=4, widths=(8, 8, 8))).eval()
    latents = torch.randn(2, 6, 4, 4, 4)
    with torch.no_grad():
        whole = ae.decode(latents)
        prev, parts = None, []
        for i in range(0, 6, 2):
            frames, prev = ae.decode_stream(latents[:, i:i + 2], prev)
            parts.append(frames)
    torch.testing.assert_close(torch.cat(parts, 1), whole)
    assert whole.shape == (2, 12, 3, 32, 32)


def test_paper_config_matches_the_published_shape():
    cfg = VideoConfig.paper()
    shape = (cfg.width, cfg.height, cfg.dim, cfg.num_layers, cfg.num_heads, cfg.head_dim)
    assert shape == (832, 480, 1536, 30, 12, 128)
    assert cfg.tokens_per_frame == 1560 and cfg.tokens_per_block == 4680 and cfg.video_frames_per_block == 12


def test_prompt_encoder_reproduces_sentence_transformers():
    enc = PromptEncoder()
    tokens, mask = enc.encode_batch(["a small red circle moving left on a black background"])
    vec = sentence_embedding(tokens, mask)[0]
    # sentence-transformers' all-MiniLM-L6-v2 on the same text (our forward matched it to 1e-7 when written)
    ref = torch.tensor([-0.0041697, 0.0225857, -0.1158363, 0.0726387, 0.0977907, -0.0243338])
    torch.testing.assert_close(vec[:6], ref, atol=1e-5, rtol=0)
    long_tokens, long_mask = enc.encode("word " * 3000)  # truncated, not an error
    assert long_tokens.shape == (32, 384) and long_mask.all()
    assert enc.encode("a red circle")[0] is enc.encode("a red circle")[0]  # cached per prompt


def test_training_sequences_show_old_frames_under_the_new_prompt(tmp_path):
    import json

    from safetensors.torch import save_file

    from models.video.scenes import render_clip
    from models.video.training import LatentClips, dit_loss

    cfg = VideoConfig.tiny()
    rng = np.random.default_rng(0)
    clips = [render_clip(rng, 64, size=32, mean_switch_s=0.5) for _ in range(3)]
    prompts: dict[str, int] = {}
    meta = {"clips": [{"prompt_ids": [prompts.setdefault(p, len(prompts)) for p in c.prompts]} for c in clips]}
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "prompts": list(prompts)}))
    np.save(tmp_path / "latents.npy", np.random.default_rng(1).standard_normal((3, 32, 4, 4, 4)).astype(np.float16))
    features = {"tokens": torch.randn(len(prompts), cfg.text_tokens, cfg.text_dim),
                "mask": torch.ones(len(prompts), cfg.text_tokens, dtype=torch.bool)}
    save_file(features, str(tmp_path / "prompts.safetensors"))
    data = LatentClips(tmp_path, cfg, seed=0)
    batch = data.sample(16, p_recache=1.0, p_switch=1.0)
    relabelled = batch.clean_prompt != batch.noisy_prompt  # (B, frames): history shown under the new prompt
    assert relabelled.any()
    assert (batch.loss_weight[relabelled] == 0).all()  # ... and those blocks are not trained on
    sink = cfg.sink_blocks * cfg.block_frames
    assert not relabelled[:, :sink].any()  # the sink keeps its own prompt, as at inference
    model, _ = random_models(cfg)
    loss = dit_loss(model.train(), batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad is not None


def test_self_rollout_trains_the_true_next_block_after_the_models_own_history():
    from models.video.autoencoder import to_unit
    from models.video.scenes import render_frame, render_timeline
    from models.video.text import HashTextEncoder
    from models.video.training import SelfRollout, dit_loss

    cfg = VideoConfig.tiny()
    model, ae = random_models(cfg)
    streams = SelfRollout(model, ae, HashTextEncoder(cfg.text_dim, cfg.text_tokens), batch=3, stream_blocks=6,
                          seed=0, mean_switch_s=1e9, mean_motion_switch_s=None)
    for _ in range(4):  # sink + a full window of the model's own blocks
        dit_loss(model.train(), streams.sample(), torch.Generator().manual_seed(0)).backward()
        streams.advance()
    scene = streams.streams[0].scene
    streams.streams[0].last_frame = render_frame(scene, 10.0, 20.0, cfg.width)  # the object is found here
    batch = streams.sample()
    fb = cfg.block_frames
    own = [z for _, z, _ in streams.streams[0].blocks]
    assert len(own) == cfg.sink_blocks + cfg.window_blocks
    torch.testing.assert_close(batch.latents[0, :-fb], torch.cat(own))  # the history is what the model made
    assert batch.frame_pos[0].tolist() == [0, 1, 4, 5, 6, 7, 8, 9]  # sink, window, next block: true positions
    assert batch.loss_weight[0].tolist() == [0.0] * 6 + [1.0] * 2  # only the next block is trained
    truth = render_timeline([scene] * (cfg.video_frames_per_block + 1), np.array([10.0, 20.0]), cfg.width)[1:]
    with torch.no_grad():
        expected = ae.encode(to_unit(torch.from_numpy(truth))[None])[0]
    torch.testing.assert_close(batch.latents[0, -fb:], expected)  # it continues from where the object is
    streams.advance()
    assert streams.block == 5 and len(streams.scores) == 3 * 5


def test_bfloat16_path_runs_on_tiny_config():
    gen = _tiny_generator(max_sessions=2, dtype="bfloat16")
    states = [gen.open_session({}), gen.open_session({"seed": 1})]
    _run(gen, states, 4)
    gen.apply_switch(states[0], "new prompt", "recache")
    out = _run(gen, states, 1)[0]
    assert out[0].video.dtype == np.uint8 and out[0].video.std() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_paper_config_streams_on_gpu():
    gen = VideoGenerator(device="cuda", config="paper", dtype="bfloat16", max_sessions=1)
    state = gen.open_session({})
    _run(gen, [state], gen.cfg.sink_blocks + gen.cfg.window_blocks + 2)
    gen.apply_switch(state, "a new prompt", "recache")
    out = _run(gen, [state], 1)[0][0]
    assert out.video.shape == (12, 480, 832, 3)
