"""Tiny seeded VC checkpoints, session drivers, a cache-free offline reference and a loop-lag scenario for the
VC tests (the shipped model's and MeanVC's)."""

from __future__ import annotations

import base64

import numpy as np
import torch

from models.audio.dsp import wav_bytes
from models.audio.pitch_track import track_signal
from models.audio.vae import VAEConfig
from models.base import ControlEvent, Generator, StepInput, apply_event, open_direct
from models.cache import RingKVCache
from models.flow import mean_flow_sample
from models.vc.checkpoint import save_checkpoint
from models.vc.generator import VCGenerator
from models.vc.model import VCConfig, VCModel
from models.vc.pitch_map import map_pitch

SYMBOLS = ["<blank>", "@", "D", "a", "b", "d", "e@", "h", "i", "k", "l", "m", "n", "oU", "s", "t"]


def tiny_config(harmonic: bool = False, **overrides) -> VCConfig:
    """A tiny VC config; ``harmonic``: its vocoder with the harmonic-plus-noise head (10 ms delay)."""
    vae = VAEConfig(latent_dim=8, enc_channels=32, dec_channels=32, dec_up_channels=(32, 32), dec_blocks=2,
                    **(dict(synth_window=320, harmonics=16) if harmonic else {}))
    base = dict(num_phonemes=len(SYMBOLS), content_channels=32, content_dim=16, speaker_channels=32, dim=32,
                depth=2, num_heads=2, ffn_hidden=32, window_latents=6, max_ref_s=4.0, vae=vae)
    return VCConfig(**{**base, **overrides})


def speechlike(seconds: float, seed: int, f0: float = 140.0) -> np.ndarray:
    """A voiced, amplitude-modulated harmonic signal (deterministic)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f) / 16_000
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.05 * rng.standard_normal(len(t))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)) ** 2
    return (0.3 * envelope * x).astype(np.float32)


def wav_b64(audio: np.ndarray, rate: int = 16_000) -> str:
    """A base64 16-bit WAV, as the `reference_audio` parameter carries it."""
    return base64.b64encode(wav_bytes(audio, rate)).decode()


def make_tiny_checkpoint(path: str, seed: int = 0, harmonic: bool = False, **overrides) -> str:
    """A random tiny model with two shipped voices."""
    torch.manual_seed(seed)
    model = VCModel(tiny_config(harmonic, **overrides)).eval()
    # zero-initialised gates would make the DiT an identity: randomise it, strongly enough that the voice matters
    # (seeded again: the same DiT whichever vocoder head was built before it)
    torch.manual_seed(seed + 1)
    for p in model.dit.parameters():
        torch.nn.init.normal_(p, std=0.5 if p.dim() == 1 else 1.0 / p.shape[-1] ** 0.5)
    for p in model.speaker.pool.parameters():  # a voice that moves the output clearly
        torch.nn.init.normal_(p, std=1.0 if p.dim() == 1 else 2.0 / p.shape[-1] ** 0.5)
    refs = {
        "low": {"audio": speechlike(4.0, 1, 100.0), "info": {"description": "test voice low"}},
        "high": {"audio": speechlike(4.0, 2, 220.0), "info": {"description": "test voice high"}},
    }
    save_checkpoint(path, model, SYMBOLS, refs)
    return path


def run_session(gen: Generator, audio: np.ndarray, params: dict, events: dict[int, tuple] | None = None):
    """Stream audio chunk by chunk through one session; ``events`` {chunk index: (type, payload)}."""
    state = open_direct(gen, params)
    n = gen.spec.input_chunk_samples
    out = []
    for k in range(len(audio) // n):
        if events and k in events:
            apply_event(gen, state, ControlEvent(*events[k]))
        out.append(gen.step([state], [StepInput(audio=audio[k * n : (k + 1) * n], num_valid_samples=n)], 1)[0].audio)
    gen.close_session(state)
    return np.concatenate(out)


def run_together(gen: Generator, states: list, inputs: list[np.ndarray], padded_batch_size: int) -> list[np.ndarray]:
    """Step open sessions as one batch, chunk by chunk, until the inputs end; each session's whole output."""
    n = gen.spec.input_chunk_samples
    together: list[list[np.ndarray]] = [[] for _ in inputs]
    for k in range(len(inputs[0]) // n):
        chunks = [StepInput(audio=a[k * n : (k + 1) * n], num_valid_samples=n) for a in inputs]
        for i, o in enumerate(gen.step(states, chunks, padded_batch_size)):
            together[i].append(o.audio)
    return [np.concatenate(t) for t in together]


def long_reference(seconds: float, seed: int, f0: float = 140.0) -> str:
    """A 48 kHz upload of ``seconds`` (decoding, resampling and embedding it takes hundreds of ms on one core)."""
    return wav_b64(np.repeat(speechlike(seconds, seed, f0), 3), rate=48_000)


async def uploads_beside_a_stream(server, params: dict, switch: str, audio: np.ndarray):
    """A `pitch` session streams ``audio`` (16 kHz, paced) while a `vc` session starts with ``params`` and
    switches live to the upload ``switch``: (its `ready`, its `reference_set`, the server loop's LoopLag, the
    pitch session's final stats). The server must serve `pitch` (40 ms chunks) and `vc`."""
    import asyncio

    from streaming.client import Client
    from tests.streaming_helpers import LoopLag, send_paced

    async with Client(server.ws_url) as monitor, Client(server.ws_url) as uploader:
        await monitor.start("pitch", {"semitones": 3}, input_sample_rate_hz=16_000, audio="pcm16")
        sender = asyncio.create_task(send_paced(monitor, audio, 320, 16_000))
        await asyncio.sleep(0.5)  # the monitor streams steadily
        with LoopLag() as lag:
            ready = await uploader.start("vc", params, audio="pcm16")
            await uploader.send({"type": "set_reference", "reference_audio": switch})
            reply = await uploader.expect("reference_set", timeout=30)
        await sender
        await asyncio.sleep(0.3)  # the last chunks come back
        stopped = await monitor.stop()
        await uploader.stop()
    return ready, reply, lag, stopped["stats"]


@torch.no_grad()
def offline_reference(gen: VCGenerator, audio: np.ndarray, voice: str, seed: int, steps: int = 1) -> np.ndarray:
    """The same conversion without any cache or streaming state: whole-sequence passes, chunk after chunk.

    Content over the whole signal at once; each chunk's latents from a two-stream pass over everything
    before it (clean = the latents generated so far, noisy = this chunk's noise); one VAE decode at the end.
    """
    model, cfg = gen.model, gen.cfg
    k, n = gen.chunk_latents, gen.spec.input_chunk_samples
    num_chunks = len(audio) // n
    content = model.content_offline(torch.from_numpy(audio[: num_chunks * n])[None])
    rng = torch.Generator().manual_seed(seed)
    noise = torch.cat([torch.randn(k, cfg.vae.latent_dim, generator=rng) for _ in range(num_chunks)])[None]
    noise = gen.temperature * noise  # the generator's sampling temperature
    speaker, kv_all, tmask, _ = gen.voice_embedding(voice)
    kv = [(kv_all[i, 0][None], kv_all[i, 1][None]) for i in range(cfg.depth)]
    latents = torch.zeros_like(noise)
    for c in range(num_chunks):
        end = (c + 1) * k
        z = noise[:, :end].clone()
        times = torch.linspace(1.0, 0.0, steps + 1)
        for i in range(steps):
            t, r = times[i].expand(1, end), times[i + 1].expand(1, end)
            u = model.dit.forward_offline(latents[:, :end], z, content[:, : end * cfg.content_per_latent], r, t,
                                          speaker[None], kv, tmask[None], k)
            z = z - (t - r)[..., None] * u
        latents[:, c * k : end] = z[:, c * k : end]
    return decode_offline(gen, latents, audio, [gen.voice_embedding(voice)[3]] * num_chunks)


@torch.no_grad()
def decode_offline(gen: VCGenerator, latents: torch.Tensor, audio: np.ndarray, targets: list) -> np.ndarray:
    """One VAE decode of a session's normalised latents (1, N, D) after the decoder's silence context.

    A harmonic vocoder is driven by the tracker's pitch of the whole input ``audio`` moved, chunk by chunk, to
    ``targets`` (each chunk's target log f0) by the generator's :func:`map_pitch`.
    """
    vae = gen.model.vae
    ctx = vae.context_latents
    silence = gen.silence_latent[None, :, None].expand(1, -1, ctx)
    z = torch.cat([silence, vae.denormalize(latents.transpose(1, 2))], dim=2)
    f0 = None
    if vae.cfg.harmonics:
        per = vae.cfg.hop // vae.cfg.frame_hop
        f0_in, voicing = track_signal(torch.from_numpy(audio[: latents.shape[1] * vae.cfg.hop])[None])
        delay = gen.cfg.content_lookahead * per  # the latents lag the mic by the content lookahead: so does f0
        f0_in, voicing = (torch.nn.functional.pad(x, (delay, 0))[:, : x.shape[1]] for x in (f0_in, voicing))
        frames, stats, parts = gen.chunk_latents * per, torch.tensor([[0.0, 0.0, float(targets[0].exp())]]), []
        for c, target in enumerate(targets):
            window = slice(c * frames, (c + 1) * frames)
            part, stats = map_pitch(f0_in[:, window], voicing[:, window], stats, target[None])
            parts.append(part)
        f0 = torch.cat([torch.full((1, ctx * per), 100.0), *parts], dim=1)  # the silence context idles at 100 Hz
    return vae.decode(z, f0)[0, ctx * vae.cfg.hop :].clamp(-1, 1).numpy()


@torch.no_grad()
def reference_stream(gen: VCGenerator, audio: np.ndarray, params: dict, events: dict[int, tuple] | None = None):
    """The reference streaming path on model.py's modules, as the generator ran before models/vc/stream.py.

    Per chunk: the content encoder with its state, the DiT's denoising pass against a ring of window + chunk
    entries (the chunk's entries reserved first), then its clean pass writing the chunk's keys/values, then
    the VAE decoded with ``context_latents`` latents of left context. Events {chunk index: (type, payload)}
    before a chunk: ``set_reference {voice}`` (as ``gen.voice_switch``: reset the context, or recache the
    window under the new voice) and ``set_steps``. ``params``: voice, seed, steps.
    """
    model, cfg, vae = gen.model, gen.cfg, gen.model.vae
    k, n, window = gen.chunk_latents, gen.spec.input_chunk_samples, cfg.window_latents
    cache = RingKVCache(num_layers=cfg.depth, num_slots=1, num_heads=cfg.num_heads,
                        head_dim=cfg.dim // cfg.num_heads, window=window + k)
    rng = torch.Generator().manual_seed(params["seed"])
    steps = params.get("steps", 1)

    def voice(name):
        speaker, kv, tmask, log_f0 = gen.voice_embedding(name)
        return speaker[None], [(kv[i, 0][None], kv[i, 1][None]) for i in range(cfg.depth)], tmask[None], log_f0

    speaker, kv, tmask, log_f0 = voice(params["voice"])
    targets, all_latents = [], []  # a harmonic vocoder's per-chunk target pitch; the latents
    tail, content_state = torch.zeros(1, model.mel.tail), model.content.initial_state(1)
    vae_context = gen.silence_latent[None, None].expand(1, vae.context_latents, -1)  # (1, ctx, D), un-normalised
    recent, out, num_frames = torch.zeros(1, 0, 0), [], 0
    for c in range(len(audio) // n):
        event_type, payload = (events or {}).get(c, (None, None))
        if event_type == "set_steps":
            steps = payload["steps"]
        elif event_type == "set_reference":
            speaker, kv, tmask, log_f0 = voice(payload["voice"])
            num = min(num_frames, window)
            if gen.voice_switch == "reset":
                cache.clear([0], keep_sink=False)
            elif num:
                cache.rewind([0], num)
                dim = cfg.vae.latent_dim
                latents, content = recent[:, -num:].split([dim, recent.shape[-1] - dim], -1)
                positions = torch.arange(num_frames - num, num_frames)[None]
                index = cache.reserve([0], positions)
                model.dit.write_context(latents, content.reshape(1, num * cfg.content_per_latent, -1), speaker, kv,
                                        tmask, positions, cache, [0], index)
        chunk = torch.from_numpy(audio[c * n : (c + 1) * n])[None]
        mel = model.mel(torch.cat([tail, chunk], dim=1))
        tail = chunk[:, -model.mel.tail :]
        content, content_state = model.content(mel, content_state)
        positions = torch.arange(num_frames, num_frames + k)[None]
        index = cache.reserve([0], positions)
        noise = gen.temperature * torch.randn(k, cfg.vae.latent_dim, generator=rng)[None]

        def u_fn(z, r, t, content=content, positions=positions, speaker=speaker, kv=kv, tmask=tmask):
            expand = lambda x: x[:, None].expand(-1, k)  # noqa: E731
            r = t if gen.sampler == "euler" else r
            return model.dit.denoise(z, content, expand(r), expand(t), speaker, kv, tmask, positions, cache, [0])

        latents = mean_flow_sample(u_fn, noise, steps)
        model.dit.write_context(latents, content, speaker, kv, tmask, positions, cache, [0], index)
        recent = torch.cat([recent.reshape(1, -1, latents.shape[-1] + content.shape[-1] * cfg.content_per_latent),
                            torch.cat([latents, content.reshape(1, k, -1)], dim=-1)], dim=1)[:, -window:]
        targets.append(log_f0)
        all_latents.append(latents)
        num_frames += k
        if vae.cfg.harmonics:  # its phase spans the stream: decoded once at the end
            continue
        full = torch.cat([vae_context, vae.denormalize(latents.transpose(1, 2)).transpose(1, 2)], dim=1)
        out.append(vae.decode_chunk(full.transpose(1, 2), k).clamp(-1, 1)[0].numpy())
        vae_context = full[:, -vae.context_latents :]
    if vae.cfg.harmonics:
        return decode_offline(gen, torch.cat(all_latents, dim=1), audio, targets)
    return np.concatenate(out)
