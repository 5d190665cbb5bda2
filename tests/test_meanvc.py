"""MeanVC's networks in our code against reference implementations, on tiny random configs (no downloads).

- the vocoder against the ``vocos`` package's own classes, loaded from its files without the package's
  ``__init__`` (it imports torchaudio, whose binary does not load with this torch; ``vocos/heads.py`` imports
  torchaudio's mel-scale helpers only for its IMDCT head, which are stubbed to raise if called);
- the speaker front end against transformers' ``WavLMModel``;
- the Kaldi fbank against torchaudio's ``compliance/kaldi.py`` (its Python source, torchaudio stubbed: it
  uses torchaudio only for MFCCs), the Slaney mel filters against transformers' ``mel_filter_bank``;
- the DiT, for which no installable reference exists: a state dict with the published names and shapes
  through our loader, our batched ring-cache step against one offline pass and against the published
  streaming loop (pre-rotation keys concatenated and re-rotated each chunk, trimmed to the look-back).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from models.cache import RingKVCache
from models.errors import WeightsError
from models.vc.meanvc.dit import DiTConfig, MeanVCDiT, rotary
from models.vc.meanvc.features import kaldi_fbank, kaldi_mel_banks, povey_window, slaney_mel_filters
from models.vc.meanvc.speaker import SpeakerModel, WavLMConfig, our_name
from models.vc.meanvc.stream import SCHEDULES, denoise_chunk
from models.vc.meanvc.vocos import Vocos, VocosConfig
from models.weights import load_mapped

SITE = Path(np.__file__).resolve().parents[1]


def _load_file(name: str, path: Path, stubs: dict[str, types.ModuleType], monkeypatch) -> types.ModuleType:
    for mod_name, mod in stubs.items():
        monkeypatch.setitem(sys.modules, mod_name, mod)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def _raise(*_a, **_k):
    raise RuntimeError("torchaudio stub: not used by the code under test")


@pytest.fixture
def vocos_package(monkeypatch):
    """The vocos package's modules.py, models.py, spectral_ops.py and heads.py, without its __init__."""
    package = types.ModuleType("vocos")
    package.__path__ = [str(SITE / "vocos")]
    torchaudio = types.ModuleType("torchaudio")
    functional = types.ModuleType("torchaudio.functional")
    inner = types.ModuleType("torchaudio.functional.functional")
    inner._hz_to_mel = inner._mel_to_hz = _raise
    stubs = {"vocos": package, "torchaudio": torchaudio, "torchaudio.functional": functional,
             "torchaudio.functional.functional": inner}
    out = {}
    for name in ("modules", "spectral_ops", "models", "heads"):
        out[name] = _load_file(f"vocos.{name}", SITE / "vocos" / f"{name}.py", stubs, monkeypatch)
    return out


def _ident(key: str) -> str:
    return key


def test_vocoder_equals_the_vocos_package(vocos_package):
    torch.manual_seed(0)
    backbone = vocos_package["models"].VocosBackbone(input_channels=12, dim=16, intermediate_dim=40, num_layers=3)
    head = vocos_package["heads"].ISTFTHead(dim=16, n_fft=64, hop_length=16, padding="same")
    published = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    published |= {f"head.{k}": v for k, v in head.state_dict().items()}
    for k, v in published.items():  # random, not the package's init (gamma, zeros), so every weight matters
        published[k] = torch.randn_like(v) * 0.3 if "window" not in k else v
    backbone.load_state_dict({k[9:]: v for k, v in published.items() if k.startswith("backbone.")})
    head.load_state_dict({k[5:]: v for k, v in published.items() if k.startswith("head.")})
    ours = Vocos(VocosConfig.from_shapes({k: tuple(v.shape) for k, v in published.items()}, hop=16))
    assert ours.cfg == VocosConfig(num_mels=12, dim=16, intermediate_dim=40, num_layers=3, n_fft=64, hop=16)
    report = load_mapped(ours, published, _ident, source="vocos.pt")
    assert len(report.loaded) == len(published)
    mel = torch.rand(2, 12, 30)
    with torch.no_grad():
        expected = head(backbone(mel))
        got = ours.decode(mel)
    assert got.shape == expected.shape == (2, 30 * 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def _hf_to_published(key: str) -> str | None:
    """transformers' WavLM names -> UniSpeech's (the published checkpoint's, under feature_extract.model.)."""
    k = key
    for a, b in ((".conv.weight", ".0.weight"), (".conv.bias", ".0.bias"), (".layer_norm.", ".2.1.")):
        if k.startswith("feature_extractor.conv_layers."):
            k = k.replace(a, b)
    k = k.replace("feature_projection.layer_norm.", "layer_norm.").replace("feature_projection.projection.",
                                                                             "post_extract_proj.")
    k = k.replace("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.0.weight_g")
    k = k.replace("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.0.weight_v")
    k = k.replace("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias")
    k = k.replace(".attention.gru_rel_pos_const", ".self_attn.grep_a").replace(".attention.gru_rel_pos_linear.",
                                                                                ".self_attn.grep_linear.")
    k = k.replace(".attention.rel_attn_embed.", ".self_attn.relative_attention_bias.")
    k = k.replace(".attention.", ".self_attn.")
    k = k.replace(".feed_forward.intermediate_dense.", ".fc1.").replace(".feed_forward.output_dense.", ".fc2.")
    if k.startswith("encoder.layers.") and ".layer_norm." in k:
        k = k.replace(".layer_norm.", ".self_attn_layer_norm.")
    return "feature_extract.model." + k.replace("masked_spec_embed", "mask_emb")


def test_speaker_front_end_equals_transformers_wavlm():
    from transformers import WavLMConfig as HFConfig
    from transformers import WavLMModel

    torch.manual_seed(0)
    hf_cfg = HFConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                      conv_dim=(16,) * 7, conv_bias=False, feat_extract_norm="layer", do_stable_layer_norm=True,
                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=40,
                      max_bucket_distance=60,
                      hidden_act="gelu", feat_extract_activation="gelu")
    hf = WavLMModel(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cfg = WavLMConfig(dim=32, layers=3, heads=4, ffn_dim=48, conv_dim=16, pos_kernel=16, pos_groups=4,
                      num_buckets=40, max_distance=60, normalize_audio=False)
    model = SpeakerModel(cfg, channels=16, emb_dim=8).eval()
    published = {_hf_to_published(k): v for k, v in hf.state_dict().items()}
    published |= {k: torch.randn_like(v) * 0.2 if v.is_floating_point() else v for k, v in model.state_dict().items()
                  if not k.startswith("feature_extract.")}
    published = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in published.items()}
    report = load_mapped(model, published, our_name, source="wavlm_large_finetune.pth")
    assert report.ignored == ["feature_extract.model.mask_emb"]
    audio = torch.randn(2, 4000)
    with torch.no_grad():
        expected = hf(audio, output_hidden_states=True)
        hidden, final = model.feature_extract.model(audio)
        embedding = model(audio)
    torch.testing.assert_close(final, expected.last_hidden_state, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(hidden[:-1], expected.hidden_states[:-1], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert embedding.shape == (2, 8) and torch.isfinite(embedding).all()
    wrong = {**published, "layer1.conv.weight": torch.zeros(3)}
    with pytest.raises(WeightsError, match="wrong shape keys: layer1.conv.weight"):
        load_mapped(SpeakerModel(cfg, channels=16, emb_dim=8), wrong, our_name, source="wavlm_large_finetune.pth")


def test_fbank_equals_kaldi_and_mel_filters_equal_librosas(monkeypatch):
    kaldi = _load_file("kaldi_reference", SITE / "torchaudio" / "compliance" / "kaldi.py",
                       {"torchaudio": types.ModuleType("torchaudio")}, monkeypatch)
    audio = torch.randn(1, 3920) * 0.3
    expected = kaldi.fbank(audio * 32768, frame_length=25, frame_shift=10, snip_edges=True, num_mel_bins=80,
                           energy_floor=0.0, dither=0.0, sample_frequency=16000)
    got = kaldi_fbank(audio, kaldi_mel_banks(), povey_window())[0]
    assert got.shape == expected.shape == (23, 80)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
    from transformers.audio_utils import mel_filter_bank

    theirs = mel_filter_bank(num_frequency_bins=513, num_mel_filters=80, min_frequency=0, max_frequency=8000,
                             sampling_rate=16000, norm="slaney", mel_scale="slaney")
    torch.testing.assert_close(slaney_mel_filters(), torch.from_numpy(theirs.T).float(), rtol=1e-4, atol=1e-7)


# -- the DiT ---------------------------------------------------------------------------------------------
TINY = DiTConfig(dim=32, depth=2, heads=2, head_dim=8, ff_mult=2, mel_dim=10, bn_dim=12, spk_dim=12,
                 chunk_frames=4, lookback_chunks=2, mrte_heads=2, mrte_blocks=2, time_freq_dim=16)


def tiny_dit(seed: int = 0) -> tuple[MeanVCDiT, dict[str, torch.Tensor]]:
    """A tiny DiT loaded from a synthetic state dict in the published naming."""
    torch.manual_seed(seed)
    shapes = {k: v.shape for k, v in MeanVCDiT(TINY).state_dict().items()}
    published = {k: torch.randn(s) * (0.3 if len(s) > 1 else 0.1) + (1.0 if k.endswith("norm.weight") else 0.0)
                 for k, s in shapes.items()}
    dit = MeanVCDiT(DiTConfig.from_shapes({k: tuple(v.shape) for k, v in published.items()}, chunk_frames=4,
                                          lookback_chunks=2, mrte_heads=2))
    assert dit.cfg == TINY
    load_mapped(dit, published, _ident, source="model_200ms.safetensors")
    return dit.eval(), published


def test_dit_loader_names_published_keys():
    dit, published = tiny_dit()
    expected = {"t_time_embed.time_mlp.0.weight", "r_time_embed.time_mlp.2.bias", "input_embed.proj.weight",
                "cache_embed.weight", "timbre_encoder.vp_proj.weight",
                "timbre_encoder.prompt_vp_encoders.1.self_attn.linear_k.weight",
                "timbre_encoder.prompt_vp_encoders.0.ffn.w_2.bias", "transformer_blocks.1.attn_norm.linear.weight",
                "transformer_blocks.0.attn.q_norm.weight", "transformer_blocks.0.attn.to_out.0.weight",
                "transformer_blocks.1.ff.ff.0.0.weight", "transformer_blocks.1.ff.ff.2.bias",
                "norm_out.linear.weight", "proj_out.bias"}
    assert expected <= set(published)
    with pytest.raises(WeightsError, match=r"missing keys: cache_embed.bias"):
        load_mapped(MeanVCDiT(TINY), {k: v for k, v in published.items() if k != "cache_embed.bias"}, _ident,
                    source="model_200ms.safetensors")
    with pytest.raises(WeightsError, match=r"unexpected keys: transformer_blocks.2.attn.to_q.weight"):
        load_mapped(MeanVCDiT(TINY), {**published, "transformer_blocks.2.attn.to_q.weight": torch.zeros(1)}, _ident,
                    source="model_200ms.safetensors")


def _inputs(batch: int, chunks: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    c = TINY.chunk_frames
    return (torch.randn(batch, chunks * c, TINY.mel_dim, generator=g), torch.randn(batch, chunks * c, TINY.bn_dim,
                                                                                   generator=g),
            torch.randn(batch, TINY.spk_dim, generator=g), torch.randn(batch, 30, TINY.mel_dim, generator=g))


def ring_stream(dit, noise, content, spk, prompt, steps, rows=None):
    """Our serving step (denoise_chunk on a RingKVCache), chunk by chunk; returns the clean mel (B, T, mel)."""
    b, total, _ = noise.shape
    c, lookback = TINY.chunk_frames, TINY.lookback_chunks
    cache = RingKVCache(num_layers=TINY.depth, num_slots=8, num_heads=TINY.heads, head_dim=TINY.head_dim,
                        window=(lookback + 1) * c)
    slots = rows or [cache.allocate() for _ in range(b)]
    rows_t = torch.tensor(slots)
    cond = dit.timbre_encoder(content, dit.timbre_encoder.memory(prompt, spk))
    previous, out = torch.zeros(b, c, TINY.mel_dim), []
    for k in range(total // c):
        offset = torch.full((b,), k * c)
        index = cache.reserve(slots, (offset[:, None] - c + torch.arange(c)))
        x = denoise_chunk(dit, cache, rows_t, cache.entry_index(rows_t, index), noise[:, k * c : (k + 1) * c],
                          previous, torch.full((b,), k > 0), cond[:, k * c : (k + 1) * c], spk, offset, steps,
                          lookback)
        previous = x
        out.append(x)
    return torch.cat(out, dim=1)


def published_loop(dit, noise, content, spk, prompt, steps):
    """MeanVC's streaming loop as published: per chunk, [cache chunk ; noisy] against keys kept before rotation,
    the whole key timeline rotated at absolute positions, block-causal mask with a look-back, cache trimmed."""
    b, total, _ = noise.shape
    c, lookback = TINY.chunk_frames, TINY.lookback_chunks
    h, hd = TINY.heads, TINY.head_dim
    cond = dit.timbre_encoder(content, dit.timbre_encoder.memory(prompt, spk))
    kv, previous, out = None, None, []
    for n in range(total // c):
        x = noise[:, n * c : (n + 1) * c]
        for t, r in SCHEDULES[steps]:
            temb = dit.time_embedding(torch.full((b,), t), torch.full((b,), r))
            tokens = dit.input_embed(x, cond[:, n * c : (n + 1) * c], spk)
            if previous is not None:
                tokens = torch.cat([dit.cache_embed(previous), tokens], dim=1)
            new_kv = []
            hs = tokens
            for i, block in enumerate(dit.transformer_blocks):
                shift1, scale1, gate1, shift2, scale2, gate2 = block.attn_norm(temb)
                hn = torch.nn.functional.layer_norm(hs, hs.shape[-1:], eps=1e-6) * (1 + scale1) + shift1
                q = block.attn.q_norm(block.attn.to_q(hn).view(b, -1, h, hd))
                k = block.attn.k_norm(block.attn.to_k(hn).view(b, -1, h, hd))
                v = block.attn.to_v(hn).view(b, -1, h, hd)
                if kv is not None:
                    k, v = torch.cat([kv[i][0], k], 1), torch.cat([kv[i][1], v], 1)
                new_kv.append((k[:, :-c], v[:, :-c]))
                keys = k.shape[1]
                pos = torch.arange(n * c + c - keys, n * c + c)[None].expand(b, -1)
                k = rotary(k, pos)
                q = rotary(q, pos[:, keys - q.shape[1] :])
                chunk_of = torch.arange(keys) // c
                qc = chunk_of[keys - q.shape[1] :][:, None]
                mask = (qc - chunk_of[None] >= 0) & (qc - chunk_of[None] <= lookback)
                y = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                     v.transpose(1, 2), attn_mask=mask)
                hs = hs + gate1 * block.attn.to_out[0](y.transpose(1, 2).reshape(b, -1, h * hd))
                hn = torch.nn.functional.layer_norm(hs, hs.shape[-1:], eps=1e-6) * (1 + scale2) + shift2
                hs = hs + gate2 * block.ff(hn)
            x = x - (t - r) * dit.head(hs[:, -c:], temb)
        kv = [(k[:, -lookback * c :], v[:, -lookback * c :]) for k, v in new_kv] if new_kv[0][0].shape[1] else None
        previous = x
        out.append(x)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("steps", [1, 2])
def test_ring_cache_streaming_equals_the_published_loop(steps):
    dit, _ = tiny_dit()
    noise, content, spk, prompt = _inputs(2, 9, seed=steps)
    with torch.no_grad():
        ours = ring_stream(dit, noise, content, spk, prompt, steps)
        theirs = published_loop(dit, noise, content, spk, prompt, steps)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_streaming_equals_one_offline_pass():
    """One step: every chunk's velocity in one pass over [clean ; noisy] with the chunk-causal mask."""
    dit, _ = tiny_dit(1)
    noise, content, spk, prompt = _inputs(2, 8, seed=5)
    with torch.no_grad():
        clean = ring_stream(dit, noise, content, spk, prompt, 1)
        cond = dit.timbre_encoder(content, dit.timbre_encoder.memory(prompt, spk))
        u = dit.forward_offline(clean, noise, cond, spk, torch.ones(2), torch.zeros(2), TINY.chunk_frames)
    torch.testing.assert_close(noise - u, clean, rtol=1e-4, atol=1e-4)


def test_batch_equals_single_in_any_slot():
    dit, _ = tiny_dit(2)
    noise, content, spk, prompt = _inputs(3, 6, seed=9)
    with torch.no_grad():
        together = ring_stream(dit, noise, content, spk, prompt, 2, rows=[5, 1, 3])
        for i in range(3):
            alone = ring_stream(dit, noise[i : i + 1], content[i : i + 1], spk[i : i + 1], prompt[i : i + 1], 2)
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def _convert(gen, audio, params):
    from models.base import StepInput, open_direct

    state = open_direct(gen, params)
    n = gen.spec.input_chunk_samples
    out = [gen.step([state], [StepInput(audio=audio[k * n : (k + 1) * n], num_valid_samples=n)], 1)[0].audio
           for k in range(len(audio) // n)]
    gen.close_session(state)
    return np.concatenate(out)


def test_asr_threads_change_nothing(tmp_path):
    """Sessions' ASR calls overlapped on threads (``asr_threads``) give the same audio as in turn."""
    from models.registry import load_model
    from models.vc.meanvc.random_release import speechlike, write_random_release

    folder = write_random_release(tmp_path / "w", tiny=True)
    audio = [speechlike(1.0, i) for i in range(3)]
    outs = []
    for threads in (1, 3):
        gen = load_model("vc", "cpu", {"weights": str(folder), "asr_threads": threads, "max_sessions": 3})
        from models.base import StepInput, open_direct

        states = [open_direct(gen, {"seed": i}) for i in range(3)]
        n = gen.spec.input_chunk_samples

        outs.append([gen.step(states, [StepInput(audio=a[k * n : (k + 1) * n], num_valid_samples=n) for a in audio],
                              3) for k in range(len(audio[0]) // n)])
    for a, b in zip(outs[0], outs[1], strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.audio, y.audio)


@pytest.mark.gpu
def test_gpu_graphs_equal_the_cpu(tmp_path):
    """On a GPU (one captured graph per bucket) a session converts as on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from models.registry import load_model
    from models.vc.meanvc.random_release import speechlike, write_random_release

    folder = write_random_release(tmp_path / "w", tiny=True)
    audio = speechlike(1.2, 1)
    cpu = _convert(load_model("vc", "cpu", {"weights": str(folder)}), audio, {"seed": 4, "steps": 2})
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 as on the CPU
    try:
        gen = load_model("vc", "cuda", {"weights": str(folder)})
        gpu = _convert(gen, audio, {"seed": 4, "steps": 2})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert gen._graphs[2].num_graphs >= 1
    np.testing.assert_allclose(gpu, cpu, atol=2e-3)
