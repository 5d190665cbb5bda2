"""LongLive / Wan2.1 on our runtime, proven against the reference implementations on tiny random configs.

The same random tensors, in the published naming, are loaded into our modules (through the key-mapping
loader) and into diffusers' / transformers' modules; float32 outputs must agree to 1e-4 relative.
"""

from __future__ import annotations

import pytest
import torch

from models.video.wan.dit import TextCondition, WanConfig, WanDiT, diffusers_key, longlive_key
from models.weights import load_mapped

diffusers = pytest.importorskip("diffusers")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12))


def _random_state(module: torch.nn.Module, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {prefix + k: torch.randn(v.shape, generator=g) * (0.3 if v.dim() > 1 else 0.2) + (1.0 if "norm" in k else 0)
            for k, v in module.state_dict().items()}


def _reference_dit(cfg: WanConfig):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=cfg.patch, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels, out_channels=cfg.in_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps).eval()


@pytest.fixture(scope="module")
def tiny_dit():
    """Our tiny DiT with random weights in LongLive's naming, and diffusers' model with the same weights."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    cfg = WanConfig.tiny()
    ours = WanDiT(cfg).eval()
    published = _random_state(ours, 0, prefix="model.")  # LongLive saves its generator as model.<Wan name>
    report = load_mapped(ours, published, longlive_key, source="longlive_base.pt")
    assert len(report.loaded) == len(published)
    ref = _reference_dit(cfg)
    converted = convert_wan_transformer_to_diffusers({k[len("model."):]: v for k, v in published.items()})
    ref.load_state_dict(converted, strict=True)
    return cfg, ours, ref


def test_dit_first_block_equals_diffusers(tiny_dit):
    cfg, ours, ref = tiny_dit
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, cfg.in_channels, cfg.block_frames, cfg.latent_h, cfg.latent_w, generator=g)
    text = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    text[:, 5:] = 0  # Wan pads the prompt with zero vectors
    timestep = torch.tensor([937.5, 250.0])
    with torch.no_grad():
        expected = ref(latents, timestep, text, return_dict=False)[0]
        got = ours.forward_video(latents, timestep, text)
        # the streaming path on an empty cache (first block, no history) is the same computation
        cache = ours.new_cache(2)
        slots = [cache.allocate(), cache.allocate()]
        patches = ours.patchify(latents.transpose(1, 2))
        streamed = ours.cached_pass(cache, slots, patches, timestep, torch.zeros(2, dtype=torch.long),
                                    ours.condition(text))
        streamed = ours.unpatchify(streamed, cfg.block_frames).transpose(1, 2)
    assert _rel(got, expected) < 1e-4
    assert _rel(streamed, expected) < 1e-4


def test_dit_loads_diffusers_naming(tiny_dit):
    cfg, ours, ref = tiny_dit
    again = WanDiT(cfg)
    load_mapped(again, ref.state_dict(), diffusers_key, source="transformer/diffusion_pytorch_model.safetensors")
    for k, v in ours.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_dit_cached_blocks_equal_offline_block_causal_pass(tiny_dit):
    """With history: every denoising pass of block n equals one offline pass over [clean 0..n-1 | noisy n]."""
    cfg, ours, _ = tiny_dit
    torch.manual_seed(3)
    text = torch.randn(1, cfg.text_len, cfg.text_dim)
    cond = ours.condition(text)
    cache = ours.new_cache(1)
    slot = cache.allocate()
    clean, traces = [], []
    num_blocks = 5  # past the sink and a full window: ring entries are overwritten, and the no-mask path runs
    for n in range(num_blocks):
        noise = torch.randn(len(cfg.denoising_steps), 1, cfg.tokens_per_block, cfg.patch_dim)
        trace: list = []
        clean.append(ours.generate_block(cache, [slot], torch.tensor([n]), cond, noise, trace))
        traces.append(trace)
    for n in range(num_blocks):
        history = torch.cat(clean[:n], 1) if n else torch.zeros(1, 0, cfg.patch_dim)
        labels = ours.block_labels(torch.zeros(1, dtype=torch.long), n + 1)
        positions = ours.positions(torch.zeros(1, dtype=torch.long), (n + 1) * cfg.block_frames)
        mask = ours.history_mask(labels)
        for sigma, x_t, v in traces[n]:
            t = torch.cat([torch.zeros(1, history.shape[1]), torch.full((1, cfg.tokens_per_block), sigma * 1000)], 1)
            with torch.no_grad():
                full = ours(torch.cat([history, x_t], 1), t, positions, mask, cond)
            assert _rel(v, full[:, history.shape[1]:]) < 1e-5, (n, sigma)


def test_lora_is_merged_at_load():
    from models.video.wan.lora import merge_lora

    cfg = WanConfig.tiny(num_layers=1)
    model = WanDiT(cfg)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    rank = 3
    a = torch.randn(rank, cfg.dim)
    b = torch.randn(cfg.dim, rank)
    lora = {"base_model.model.blocks.0.self_attn.q.lora_A.weight": a,
            "base_model.model.blocks.0.self_attn.q.lora_B.weight": b}
    merged = merge_lora(model, lora, alpha=6.0, rank=rank, source="lora.pt")
    assert merged == 1
    key = "blocks.0.self_attn.q.weight"
    assert torch.allclose(model.state_dict()[key], base[key] + 2.0 * b @ a)
    with pytest.raises(Exception, match="blocks.0.nothing"):
        bad = {f"base_model.model.blocks.0.nothing.lora_{x}.weight": w for x, w in (("A", a), ("B", b))}
        merge_lora(model, bad, alpha=1.0, rank=rank, source="lora.pt")


def test_text_condition_is_per_layer():
    cfg = WanConfig.tiny()
    cond = WanDiT(cfg).condition(torch.randn(1, cfg.text_len, cfg.text_dim))
    assert isinstance(cond, TextCondition) and len(cond.kv) == cfg.num_layers
    assert cond.kv[0][0].shape == (1, cfg.num_heads, cfg.text_len, cfg.head_dim)


def test_vae_streaming_decode_equals_diffusers_whole_clip():
    """Block by block from the feature cache (first block, then 3-frame blocks) = diffusers decoding the clip."""
    from diffusers import AutoencoderKLWan

    from models.video.wan.vae import StreamingWanDecoder, vae_key

    z_dim, mean, std = 4, [0.1, -0.2, 0.3, 0.0], [1.5, 0.7, 2.0, 1.1]
    ref = AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std).eval()
    ref.load_state_dict(_random_state(ref, 4))
    ours = StreamingWanDecoder(dim=8, z_dim=z_dim, dim_mult=(1, 2, 2, 2), num_res_blocks=1, latent_mean=mean,
                               latent_std=std).eval()
    report = load_mapped(ours, ref.state_dict(), vae_key, source="vae/diffusion_pytorch_model.safetensors")
    assert report.ignored and all(k.startswith(("encoder.", "quant_conv.")) for k in report.ignored)
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(2, z_dim, 7, 4, 6, generator=g)  # normalised, as the DiT makes them
    with torch.no_grad():
        denorm = latents * torch.tensor(std).view(1, -1, 1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1, 1)
        expected = ref.decode(denorm).sample
        state = ours.new_state()
        chunks = [ours.decode(latents[:, :, a:b], state) for a, b in ((0, 1), (1, 4), (4, 7))]
        # a batch of two streams decodes like two streams decoded alone
        alone = ours.new_state()
        first = ours.decode(latents[:1, :, :3], alone)
    got = torch.cat(chunks, dim=2)
    assert got.shape == expected.shape == (2, 3, 1 + 4 * 6, 32, 48)
    assert [c.shape[2] for c in chunks] == [1, 12, 12]
    assert _rel(got, expected) < 1e-4
    assert _rel(first, expected[:1, :, :9]) < 1e-4


def _tiny_umt5(folder):
    """A tiny umT5 encoder and a word-level tokenizer saved as a release folder's text_encoder/ and tokenizer/."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "red", "fox", "runs", "in", "snow", "the", "city", "at", "night"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(6)
    config = UMT5Config(vocab_size=len(words), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
                        eos_token_id=1)
    encoder = UMT5EncoderModel(config).eval()
    encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    return encoder, tokenizer


def test_text_path_equals_umt5_encoder(tmp_path):
    from models.video.wan.text import WanTextEncoder

    encoder, tokenizer = _tiny_umt5(tmp_path)
    ours = WanTextEncoder.from_folder(tmp_path, text_len=8)
    prompt = "a red fox runs in snow"
    got = ours.encode(prompt)
    ids = tokenizer([prompt], return_tensors="pt").input_ids  # the prompt's 6 words and </s>, unpadded
    with torch.no_grad():
        expected = encoder(input_ids=ids).last_hidden_state[0]
    n = ids.shape[1]
    assert got.shape == (8, 16)
    assert _rel(got[:n], expected) < 1e-4
    assert torch.equal(got[n:], torch.zeros(8 - n, 16))  # Wan: zero vectors past the prompt
    # encoded once per prompt: a second request (a switch back) is served from the cache
    assert ours.encode(prompt) is got and ours.num_encoded == 1
    long = ours.encode(" ".join(["snow"] * 20))  # truncated to the token budget, ends with </s>
    assert long.shape == (8, 16) and ours.num_encoded == 2


# --- the release, end to end on the CPU (tiny shapes) -----------------------------------------------------

TINY_VAE = {"dim": 8, "z_dim": 4, "dim_mult": (1, 2, 2, 2), "num_res_blocks": 1, "latent_mean": [0.0] * 4,
            "latent_std": [1.0] * 4}


def _tiny_release(folder, rank: int = 2):
    """A release folder in the published layout: LongLive .pt files, diffusers VAE, transformers umT5."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    from models.video.wan import published

    cfg = WanConfig.tiny(text_dim=16, text_len=8)
    generator = _random_state(WanDiT(cfg), 7, prefix="model.")
    (folder / "longlive").mkdir(parents=True)
    torch.save({"generator": generator}, folder / published.GENERATOR)
    g = torch.Generator().manual_seed(8)
    lora = {}
    for name, shape in WanDiT(cfg).state_dict().items():
        if name.startswith("blocks.") and name.endswith(".weight") and len(shape.shape) == 2:
            out_dim, in_dim = shape.shape
            base = "base_model.model." + name[: -len(".weight")]
            lora[base + ".lora_A.weight"] = torch.randn(rank, in_dim, generator=g) * 0.1
            lora[base + ".lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * 0.1
    torch.save({"generator_lora": lora}, folder / published.LORA)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    (folder / "vae").mkdir()
    save_file({k: v.contiguous() for k, v in _random_state(vae, 9).items()}, str(folder / published.VAE))
    _tiny_umt5(folder)
    (folder / published.TEXT_INDEX).write_text('{"weight_map": {"shared.weight": "model.safetensors"}}')
    return cfg, generator, lora


def test_release_loads_merges_lora_and_streams(tmp_path):
    from models.base import ControlEvent, StepInput
    from models.video.wan import published

    cfg, generator, lora = _tiny_release(tmp_path)
    text_shapes = {"shared.weight": (13, 16)}
    assert published.check(tmp_path, cfg, TINY_VAE, text_shapes) == []
    gen = published.load(tmp_path, device="cpu", dtype="float32", max_sessions=2, cfg=cfg, vae=TINY_VAE,
                         prompt="a red fox runs in snow")
    key = "blocks.1.ffn.2"
    a, b = lora[f"base_model.model.{key}.lora_A.weight"], lora[f"base_model.model.{key}.lora_B.weight"]
    merged = generator[f"model.{key}.weight"] + (2 / 2) * b @ a  # alpha defaults to the rank
    assert torch.allclose(gen.dit.state_dict()[f"{key}.weight"], merged, atol=1e-6)

    first, second = gen.open_session({"seed": 1}), gen.open_session({"prompt": "the city at night", "seed": 2})
    assert gen.text_encoder.num_encoded == 2
    outputs = []
    for n in range(4):
        if n == 2:
            gen.handle_event(first, ControlEvent("prompt", {"text": "a red fox runs in the city"}))
        outputs.append(gen.step([first, second], [StepInput(), StepInput()], 2))
    frames = outputs[0][0].video
    assert frames.shape == (4 * cfg.block_frames, 32, 48, 3) and frames.dtype == "uint8"  # 4 frames per latent frame
    assert (frames[:4] == frames[3]).all()  # the first block's first frame is held for 3 more
    applied = outputs[2][0].notices[0]
    assert applied["type"] == "prompt_applied" and applied["recached_blocks"] == 1  # the window past the sink
    assert first.num_blocks == 4 and gen.cache.num_entries(first.slot) == gen.cache.capacity  # sink + 3 blocks
    gen.close_session(first)
    # a session's video does not depend on who shares its batch
    alone = published.load(tmp_path, device="cpu", dtype="float32", max_sessions=2, cfg=cfg, vae=TINY_VAE)
    solo = alone.open_session({"prompt": "the city at night", "seed": 2})
    for n in range(2):
        video = alone.step([solo], [StepInput()], 1)[0].video
        assert abs(video.astype(int) - outputs[n][1].video.astype(int)).max() <= 1


def test_release_check_names_file_and_key(tmp_path):
    from models.video.wan import published

    cfg, generator, lora = _tiny_release(tmp_path)
    text_shapes = {"shared.weight": (13, 16)}
    del generator["model.blocks.0.ffn.0.bias"]
    torch.save({"generator": {**generator, "model.extra": torch.zeros(1)}}, tmp_path / published.GENERATOR)
    lora.pop(next(k for k in lora if k.endswith("lora_B.weight")))
    torch.save({"generator_lora": lora}, tmp_path / published.LORA)
    problems = published.check(tmp_path, cfg, TINY_VAE, text_shapes)
    text = "\n".join(problems)
    assert "longlive_base.pt: missing key 'model.blocks.0.ffn.0.bias'" in text
    assert "longlive_base.pt: unexpected key 'model.extra'" in text
    assert "lora.pt" in text and "incomplete pair" in text


def test_cpu_server_refuses_the_release_saying_it_needs_a_gpu(tmp_path, capsys):
    from models import weights
    from models.errors import WeightsError
    from models.registry import load_model
    from streaming.cli import main as cli_main

    model = weights.published_model("longlive")
    assert model.needs_gpu and model.family == "video"
    assert {f.license for f in model.files} == {"CC-BY-NC-4.0", "Apache-2.0"}
    assert all(f.approx_bytes for f in model.files)
    weights.write_manifest(tmp_path, model, {})
    with pytest.raises(WeightsError, match="'longlive' needs a GPU"):
        load_model("video", "cpu", {"weights": str(tmp_path)})
    assert cli_main(["serve", "--port", "0", "--device", "cpu", "--models", f"video:weights={tmp_path}"]) == 2
    assert "needs a GPU" in capsys.readouterr().err
