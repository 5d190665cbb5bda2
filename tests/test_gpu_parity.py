"""The shipped speech models on a CUDA device compute what they compute on the CPU (skipped without CUDA).

Noise is drawn from each session's generator on its own device, and CUDA's random stream differs from the
CPU's, so the comparisons hold the noise fixed: VC at temperature 0 (no starting noise), the TTS model with
the same noise tensor on both devices. Batch == single on the GPU (padding rows, captured graphs) is checked
with the GPU's own noise. The test prints the errors it measured (run with ``-s`` to see them).

Runs with plain torch (no aiortc, av or phonemizer), so a GPU machine without the serving stack can run it:
``python3 -m pytest --noconftest -m gpu tests/test_gpu_parity.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vc_helpers import speechlike

from models.base import StepInput
from models.tts.generator import TTSGenerator
from models.vc.generator import VCGenerator

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = [pytest.mark.gpu, needs_cuda]


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-9))


def _vc_run(device: str, graphs: bool, padded: int) -> list[np.ndarray]:
    """Three sessions (two voices, 1 and 2 steps) converting 2 s of audio in 160 ms chunks, batched."""
    gen = VCGenerator(device=device, temperature=0.0, cuda_graphs=graphs, max_sessions=8, max_batch_size=8)
    voices = sorted(gen.voice_info)
    params = [{"voice": voices[0], "steps": 1}, {"voice": voices[-1], "steps": 1}, {"voice": voices[0], "steps": 2}]
    states = [gen.open_session(gen.validate_params({**p, "seed": 0})) for p in params]
    n = gen.spec.input_chunk_samples
    audio = [speechlike(2.0, i) for i in range(len(states))]
    out: list[list[np.ndarray]] = [[] for _ in states]
    for c in range(len(audio[0]) // n):
        inputs = [StepInput(audio=a[c * n:(c + 1) * n], num_valid_samples=n) for a in audio]
        for i, o in enumerate(gen.step(states, inputs, padded)):
            out[i].append(o.audio)
    return [np.concatenate(o) for o in out]


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_vc_on_gpu_matches_cpu(graphs: bool) -> None:
    cpu = _vc_run("cpu", graphs=False, padded=3)
    gpu = _vc_run("cuda", graphs=graphs, padded=4)  # a bucket of 4: one padding row rides along
    for c, g in zip(cpu, gpu, strict=True):
        err = _relative_error(g, c)
        print(f"vc graphs={graphs}: relative error {err:.2e}, max abs {np.abs(g - c).max():.2e}")
        assert np.isfinite(g).all() and err < 1e-2


@torch.inference_mode()
def test_tts_model_on_gpu_matches_cpu() -> None:
    """The AR pass, the flow head (same noise) and the streaming decoder of the shipped model, CPU vs CUDA."""
    torch.manual_seed(0)
    results = {}
    for device in ("cpu", "cuda"):
        gen = TTSGenerator(device=device)
        cfg, model = gen.cfg, gen.model
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, cfg.vocab_size, (2, 20), generator=g).to(device)
        latents = torch.randn(2, 12, cfg.latent_dim, generator=g).to(device)
        speaker = torch.stack([gen.voice_stats[v] for v in sorted(gen.voice_stats)[:2]]).to(device)
        hidden, _ = model(speaker, ids, torch.tensor([20, 15], device=device), latents)
        noise = torch.randn(hidden.shape[0] * 4, cfg.latent_dim, generator=g).to(device)
        stop, sampled = model.sample_next(hidden[:, -4:].reshape(-1, cfg.dim), noise)
        decoder = gen.vocoder.decoder
        audio, _ = decoder(latents, decoder.initial_state(2, torch.device(device)))
        results[device] = [t.float().cpu().numpy() for t in (hidden, stop, sampled, audio)]
    for name, c, g in zip(("hidden", "stop", "sampled", "audio"), results["cpu"], results["cuda"], strict=True):
        err = _relative_error(g, c)
        print(f"tts {name}: relative error {err:.2e}")
        assert err < 1e-3, name


def _tts_speak(gen: TTSGenerator, ids_per_session: list[list[int]], seeds: list[int], padded: int) -> list[np.ndarray]:
    """Queue phoneme ids (no phonemizer needed) and step the sessions together until all are idle."""
    states = [gen.open_session(gen.validate_params({"seed": seed})) for seed in seeds]
    for s, ids in zip(states, ids_per_session, strict=True):
        s.queue.append(ids)
    out: list[list[np.ndarray]] = [[] for _ in states]
    for _ in range(200):
        outputs = gen.step(states, [StepInput()] * len(states), padded)
        if all(o.idle for o in outputs):
            break
        for i, o in enumerate(outputs):
            if not o.idle:
                out[i].append(o.audio)
    for s in states:
        gen.close_session(s)
    return [np.concatenate(o) for o in out]


def test_tts_on_gpu_batch_equals_single() -> None:
    gen = TTSGenerator(device="cuda", max_sessions=8)
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, gen.cfg.vocab_size, size=n).tolist() for n in (12, 20, 16)]
    batched = _tts_speak(gen, ids, [7, 8, 9], padded=4)
    for i, one in enumerate(ids):
        alone = _tts_speak(gen, [one], [7 + i], padded=1)[0]
        err = _relative_error(batched[i][: len(alone)], alone)
        print(f"tts batch vs single, session {i}: {len(alone)} samples, relative error {err:.2e}")
        assert len(alone) > 16_000 * 0.2 and np.abs(alone).max() > 1e-3
        assert err < 1e-3


def _pocket_run(device: str, graphs: bool, padded: int) -> list[np.ndarray]:
    """Two Pocket TTS sessions (random english_2m-like weights, zero temperature) speaking token chunks."""
    from models.tts.pocket.checkpoint import PocketTTS
    from models.tts.pocket.config import ENGLISH, PocketConfig
    from models.tts.pocket.generator import Chunk, PocketGenerator

    torch.manual_seed(0)
    small = {**ENGLISH, "flow_lm": {**ENGLISH["flow_lm"], "transformer": {
        "d_model": 256, "hidden_scale": 2, "max_period": 10000, "num_heads": 4, "num_layers": 4},
        "lookup_table": {**ENGLISH["flow_lm"]["lookup_table"], "dim": 256}}}
    model = PocketTTS(PocketConfig.from_dict(small))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape))
    voice = model.voice_from_prefix(0.1 * torch.randn(1, 20, 256))
    gen = PocketGenerator(model, None, {"v": voice}, device=device, max_sessions=4, temperature=0.0,
                          eos_threshold=1e9, graphs=graphs)
    states = [gen.open_session({"voice": "v", "seed": i, "text": ""}) for i in range(2)]
    for i, s in enumerate(states):
        s.queue.append(Chunk(list(range(5 + i, 25 + i)), 1))
    out: list[list[np.ndarray]] = [[] for _ in states]
    for _ in range(12):
        for i, o in enumerate(gen.step(states, [StepInput()] * 2, padded)):
            out[i].append(o.audio)
    return [np.concatenate(o) for o in out]


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_pocket_tts_on_gpu_matches_cpu(graphs: bool) -> None:
    cpu = _pocket_run("cpu", graphs=False, padded=2)
    gpu = _pocket_run("cuda", graphs=graphs, padded=4)  # a bucket of 4: two padding rows ride along
    for c, g in zip(cpu, gpu, strict=True):
        err = _relative_error(g, c)
        print(f"pocket tts graphs={graphs}: relative error {err:.2e}")
        assert np.isfinite(g).all() and err < 1e-2


@torch.inference_mode()
def test_tts_serving_graphs_match_eager_on_gpu() -> None:
    """The shipped TTS served with CUDA graphs (AR step and flow head per shape) equals its eager serving."""
    runs = []
    for graphs in (False, True):
        gen = TTSGenerator(device="cuda", cuda_graphs=graphs, max_sessions=4)
        voice = sorted(gen.voice_stats)[0]
        states = [gen.open_session(gen.validate_params({"voice": voice, "seed": i})) for i in range(3)]
        for i, s in enumerate(states):  # phoneme ids straight into the queue: no phonemizer needed here
            s.queue.append(list(range(3, 40 + 7 * i)))
        out: list[list[np.ndarray]] = [[] for _ in states]
        for _ in range(10):
            for i, o in enumerate(gen.step(states, [StepInput()] * 3, 4)):
                out[i].append(o.audio if not o.idle else np.zeros(0, np.float32))
        runs.append([np.concatenate(o) for o in out])
    for e, g in zip(*runs, strict=True):
        err = _relative_error(g, e)
        print(f"tts serving graphs vs eager: relative error {err:.2e}")
        assert np.isfinite(g).all() and err < 1e-3
