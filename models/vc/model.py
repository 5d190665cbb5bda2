"""The voice-conversion model after MeanVC: content recognizer, speaker encoder, chunk-wise AR mean-flow DiT.

Data flow (16 kHz mic audio in, VAE latents out; the shared waveform VAE's causal decoder is the vocoder):

    audio ─▶ CausalMel (10 ms frames) ─▶ ContentEncoder (causal conv + GRU, CTC-trained) ─▶ bottleneck (50 Hz)
    reference audio ─▶ log-mel ─▶ SpeakerEncoder ─▶ speaker vector (adaLN) + timbre tokens (cross-attention)
    [clean context latents of past chunks | noisy latents of this chunk] ─▶ DiT ─▶ average velocity u(z, r, t)

- The content encoder is a streaming phoneme recognizer (CTC over espeak-ng phonemes); its 128-d bottleneck,
  not its posteriors (too spiky), is the speaker-independent content, as MeanVC uses ASR bottleneck features.
- The DiT runs over latent frames (25 Hz, 40 ms) in chunks of ``chunk_latents`` frames. It has two streams
  over the same frames: *clean* tokens (generated latents of past chunks, written to the shared ring KV
  cache, causal with a window of ``window_latents``) and *noisy* tokens (this chunk being denoised: they see
  the cached clean tokens of earlier chunks and each other, and are never cached). Training runs both
  streams over a whole sequence with :func:`two_stream_mask`, the same visibility as streaming, so
  streaming equals one offline pass.
- Mean flows (MeanFlow): the network predicts the average velocity over [r, t], so one step from t = 1 to
  r = 0 samples a chunk; two steps are selectable. Times are embedded in units of t (``TimeEmbedding``) so
  the d/dt term of the MeanFlow target stays moderate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.audio.dsp import mel_filterbank
from models.audio.vae import ResBlock, VAEConfig, WaveformVAE
from models.cache import RingKVCache
from models.layers import CachedSelfAttention, CrossAttention, RMSNorm, Rope, SwiGLU, TimeEmbedding, attend, modulate


@dataclass
class VCConfig:
    """Sizes of every part of the VC model (the VAE vocoder has its own config)."""

    sample_rate_hz: int = 16_000
    n_fft: int = 400  # mel analysis window (25 ms), causal: a frame ends where its hop ends
    mel_hop: int = 160  # samples per mel frame (10 ms)
    num_mels: int = 80  # mel bands of the content and speaker front ends
    num_phonemes: int = 64  # CTC classes incl. blank (id 0); set from the corpus inventory
    content_channels: int = 256  # content encoder conv / GRU width
    content_layers: int = 2  # GRU layers
    content_dim: int = 128  # bottleneck width: the content features the decoder reads
    content_per_latent: int = 2  # content frames (50 Hz) per latent frame (25 Hz)
    # Latent frames the content runs ahead of the latents the DiT makes from it: latent p is made from the
    # content of frames up to p + content_lookahead (serving's output is that much later). The causal
    # recognizer's features name a sound only after it was heard: a linear map from content at p + 1 predicts
    # latent p better than from content at p (held-out R^2 0.66 vs 0.56; docs/models/vc.md, session 12).
    content_lookahead: int = 0
    speaker_channels: int = 192  # speaker encoder width
    ref_stride: int = 8  # mel frames per timbre token (12.5 Hz)
    max_ref_s: float = 10.0  # longest reference used (longer ones are cut)
    dim: int = 256  # DiT width
    depth: int = 4  # DiT blocks
    num_heads: int = 4  # DiT attention heads
    ffn_hidden: int = 384  # SwiGLU hidden width (the checkpoint must stay under 20 MB)
    window_latents: int = 25  # attention window over past latent frames (1 s), the KV cache window
    chunk_latents: int = 4  # latent frames per chunk (4 = 160 ms; 2 = 80 ms)
    mf_fraction: float = 0.5  # training: share of rows with r < t (the rest is plain flow matching, r = t)
    adaptive_p: float = 0.5  # training: MeanFlow adaptive loss weight 1 / (err + c)^p
    context_noise: float = 0.1  # training: max std of noise on the clean context (exposure bias)
    context_drop: float = 0.1  # training: probability a sequence's noisy tokens see no past context
    vae: VAEConfig = field(default_factory=VAEConfig)

    @classmethod
    def paper(cls, num_phonemes: int = 64) -> VCConfig:
        """MeanVC sizes: DiT of width 512, depth 4, 2 heads, FFN x2, 160 ms chunks, 1 s window."""
        return cls(num_phonemes=num_phonemes, dim=512, num_heads=2, ffn_hidden=1024, content_channels=512,
                   content_dim=256, speaker_channels=512)

    @property
    def latent_hop(self) -> int:
        """Samples per latent frame."""
        return self.vae.hop

    @property
    def mels_per_latent(self) -> int:
        """Mel frames per latent frame."""
        return self.latent_hop // self.mel_hop

    def to_dict(self) -> dict:
        """JSON-able form (stored in the checkpoint's metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VCConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        vae = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("vae").items()})
        return cls(**d, vae=vae)


# -- front end and content -------------------------------------------------------------------------------
class CausalMel(nn.Module):
    """Log-mel frames of 16 kHz audio; frame i covers samples [hop * i - (n_fft - hop), hop * (i + 1)).

    Causal (a frame needs no future audio), so a stream is cut into frames exactly as the whole signal is,
    given the previous ``n_fft - hop`` samples (:attr:`tail`). Features are normalised by fixed statistics
    (``mean``/``std`` buffers set from training data), never per utterance, so streaming sees the same.
    """

    def __init__(self, cfg: VCConfig) -> None:
        super().__init__()
        self.n_fft, self.hop = cfg.n_fft, cfg.mel_hop
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(cfg.sample_rate_hz, cfg.n_fft, cfg.num_mels), persistent=False)
        self.register_buffer("mean", torch.zeros(cfg.num_mels))
        self.register_buffer("std", torch.ones(cfg.num_mels))

    @property
    def tail(self) -> int:
        """Past samples a chunk needs."""
        return self.n_fft - self.hop

    def forward(self, audio: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Audio (B, tail + N * hop) -> log-mel (B, N, num_mels), normalised (the content encoder's input)."""
        frames = audio.unfold(1, self.n_fft, self.hop) * self.window  # (B, N, n_fft)
        power = torch.fft.rfft(frames, dim=-1).abs().pow(2)  # (B, N, F)
        mel = torch.log(power @ self.fb.T + 1e-6)  # (B, N, M)
        return (mel - self.mean) / self.std if normalize else mel

    def offline(self, audio: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Whole signals (B, T) from their start (zeros before) -> (B, T // hop, num_mels)."""
        return self(F.pad(audio, (self.tail, 0))[:, : self.tail + audio.shape[1] // self.hop * self.hop], normalize)

    def reference(self, audio: torch.Tensor) -> torch.Tensor:
        """The speaker encoder's input: plain log-mel (B, T // hop, num_mels) of whole reference clips.

        Not normalised by the content statistics: the speaker encoder was trained on plain log-mel (the
        features stage computes reference mels before those statistics exist), and inference must match.
        """
        return self.offline(audio, normalize=False)


@dataclass
class ContentState:
    """Streaming state of the content encoder for a batch: conv contexts and GRU hidden states."""

    conv1: torch.Tensor  # (B, M, k1 - 1) past mel frames
    conv2: torch.Tensor  # (B, C, k2 - stride) past conv1 outputs
    gru: torch.Tensor  # (layers, B, C)


class ContentEncoder(nn.Module):
    """Streaming phoneme recognizer: causal convs (100 -> 50 Hz), GRU, a bottleneck, and a CTC head."""

    def __init__(self, cfg: VCConfig) -> None:
        super().__init__()
        ch = cfg.content_channels
        self.conv1 = nn.Conv1d(cfg.num_mels, ch, 3)  # causal: the state holds the 2 frames before a chunk
        self.conv2 = nn.Conv1d(ch, ch, 4, stride=2)  # causal by left padding 2: output j sees frames <= 2j + 1
        self.gru = nn.GRU(ch, ch, num_layers=cfg.content_layers, batch_first=True)
        self.bottleneck = nn.Linear(ch, cfg.content_dim)
        # A linear head: the bottleneck is a linear map of what the classifier reads, so it stays phonetic
        # (a deeper head learned far slower here: CTC sat on its blank plateau ~900 steps instead of ~50).
        self.head = nn.Linear(cfg.content_dim, cfg.num_phonemes)
        self.cfg = cfg

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> ContentState:
        """State at the start of a stream (silence of zeros before it)."""
        ch, m = self.cfg.content_channels, self.cfg.num_mels
        return ContentState(
            torch.zeros(batch, m, 2, device=device), torch.zeros(batch, ch, 2, device=device),
            torch.zeros(self.cfg.content_layers, batch, ch, device=device),
        )

    def forward(self, mel: torch.Tensor, state: ContentState | None = None) -> tuple[torch.Tensor, ContentState]:
        """Mel (B, 2N, M) -> bottleneck features (B, N, content_dim) and the state after it."""
        state = state or self.initial_state(mel.shape[0], mel.device)
        x = torch.cat([state.conv1, mel.transpose(1, 2)], dim=2)  # (B, M, 2 + 2N)
        h1 = F.silu(self.conv1(x))  # (B, C, 2N)
        h1 = torch.cat([state.conv2, h1], dim=2)  # (B, C, 2 + 2N)
        h2 = F.silu(self.conv2(h1)).transpose(1, 2)  # (B, N, C)
        y, gru = self.gru(h2, state.gru)
        return self.bottleneck(y), ContentState(x[:, :, -2:], h1[:, :, -2:], gru)

    def logits(self, content: torch.Tensor) -> torch.Tensor:
        """CTC logits (B, N, num_phonemes) of bottleneck features."""
        return self.head(content)


def offline_content(mel: CausalMel, content: ContentEncoder, audio: torch.Tensor) -> torch.Tensor:
    """Bottleneck features (B, T // (2 * mel_hop), content_dim) of whole 16 kHz signals (B, T), from the start."""
    frames = mel.offline(audio)
    return content(frames[:, : frames.shape[1] // 2 * 2])[0]  # the encoder halves the frame rate: an even count


# -- speaker ---------------------------------------------------------------------------------------------
class SpeakerEncoder(nn.Module):
    """Reference log-mel -> a speaker vector (global) and timbre tokens (12.5 Hz) for cross-attention."""

    def __init__(self, cfg: VCConfig) -> None:
        super().__init__()
        ch = cfg.speaker_channels
        s1 = 4
        self.convs = nn.Sequential(
            nn.Conv1d(cfg.num_mels, ch, 5, padding=2), nn.SiLU(),
            nn.Conv1d(ch, ch, s1, stride=s1), ResBlock(ch, 3, 1, causal=False),
            nn.SiLU(), nn.Conv1d(ch, ch, cfg.ref_stride // s1, stride=cfg.ref_stride // s1),
            ResBlock(ch, 3, 1, causal=False), ResBlock(ch, 3, 2, causal=False),
        )
        self.tokens = nn.Linear(ch, cfg.dim)
        self.pool = nn.Linear(2 * ch, cfg.dim)
        self.stride = cfg.ref_stride

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mel (B, T, M) with frame mask (B, T) -> speaker (B, dim), tokens (B, S, dim), token mask (B, S)."""
        num = mel.shape[1] // self.stride * self.stride
        h = self.convs(mel[:, :num].transpose(1, 2)).transpose(1, 2)  # (B, S, C)
        tmask = mask[:, :num].view(mask.shape[0], -1, self.stride).any(-1)  # (B, S)
        w = tmask[..., None].float()
        mean = (h * w).sum(1) / w.sum(1).clamp_min(1)
        std = ((h - mean[:, None]).pow(2) * w).sum(1).div(w.sum(1).clamp_min(1)).add(1e-5).sqrt()
        return self.pool(torch.cat([mean, std], -1)), self.tokens(h), tmask


# -- decoder (DiT) ---------------------------------------------------------------------------------------
def two_stream_mask(num_frames: int, chunk: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Visibility (1, 1, 2T, 2T) over [clean frames 0..T-1 ; noisy frames 0..T-1], equal to streaming.

    clean i sees clean j when i - window < j <= i (what the ring cache holds when i is written);
    noisy i (chunk c) sees clean j when i - window < j < start(c) (the cache while chunk c is denoised) and
    every noisy j of chunk c (denoised together); nothing sees a noisy token of another chunk.
    """
    i = torch.arange(num_frames, device=device)
    q, k = i[:, None], i[None, :]
    in_window = k > q - window
    clean_clean = (k <= q) & in_window
    noisy_clean = (k < q // chunk * chunk) & in_window
    noisy_noisy = (k // chunk) == (q // chunk)
    none = torch.zeros_like(clean_clean)
    top = torch.cat([clean_clean, none], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)[None, None]


class DiTBlock(nn.Module):
    """adaLN-modulated self-attention (cached), cross-attention to timbre tokens, and SwiGLU.

    The modulation is adaLN-single (PixArt-alpha): one projection of the condition shared by every block
    plus a learned per-block offset, a quarter of the DiT's weights saved at no measurable cost here.
    """

    def __init__(self, cfg: VCConfig, rope: Rope) -> None:
        super().__init__()
        self.attn = CachedSelfAttention(cfg.dim, cfg.num_heads, rope)
        self.cross = CrossAttention(cfg.dim, cfg.dim, cfg.num_heads)
        self.mlp = SwiGLU(cfg.dim, cfg.ffn_hidden)
        self.norm1, self.norm2, self.norm3 = RMSNorm(cfg.dim), RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.ada_offset = nn.Parameter(torch.zeros(6 * cfg.dim))

    def modulation(self, shared: torch.Tensor) -> list[torch.Tensor]:
        """(shift1, scale1, gate1, shift2, scale2, gate2), each (B, T, C), from the shared projection."""
        return list((shared + self.ada_offset).chunk(6, dim=-1))

    def forward(self, x, shared, self_attn, timbre_kv, timbre_mask, skip_mlp: bool = False) -> torch.Tensor:
        """X (B, T, C); shared modulation (B, T, 6C); ``self_attn`` maps normed x to attention output."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(shared)
        x = x + gate1 * self_attn(modulate(self.norm1(x), shift1, scale1))
        if skip_mlp:  # only the keys/values of the attention were wanted
            return x
        x = x + self.cross(self.norm2(x), timbre_kv, timbre_mask)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))


class DiT(nn.Module):
    """The chunk-wise autoregressive mean-flow decoder over latent frames."""

    def __init__(self, cfg: VCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rope = Rope(cfg.dim // cfg.num_heads)
        self.latent_in = nn.Linear(cfg.vae.latent_dim, cfg.dim)
        self.content_in = nn.Linear(cfg.content_per_latent * cfg.content_dim, cfg.dim)
        self.clean_embed = nn.Parameter(torch.zeros(cfg.dim))  # marks the clean (context) stream
        # Frequencies up to 30 (in units of t): smooth in t, so MeanFlow's du/dt target stays small.
        self.t_embed, self.dt_embed = TimeEmbedding(cfg.dim, max_freq=30.0), TimeEmbedding(cfg.dim, max_freq=30.0)
        self.blocks = nn.ModuleList(DiTBlock(cfg, self.rope) for _ in range(cfg.depth))
        self.ada = nn.Linear(cfg.dim, 6 * cfg.dim)  # adaLN-single, shared by all blocks; zero: blocks start as identity
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.norm_out = RMSNorm(cfg.dim)
        self.ada_out = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.vae.latent_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def set_explicit_attention(self, explicit: bool) -> None:
        """Write attention out (needed by ``torch.func.jvp`` in MeanFlow training)."""
        for m in self.modules():
            if isinstance(m, (CachedSelfAttention, CrossAttention)):
                m.explicit = explicit

    def timbre_kv(self, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-block cross-attention keys/values (B, H, S, D) of timbre tokens (B, S, dim)."""
        return [b.cross.condition_kv(tokens) for b in self.blocks]

    def embed(self, latents: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """Latents (B, T, latent_dim) + content (B, T * per_latent, content_dim) -> tokens (B, T, dim)."""
        b, t, _ = latents.shape
        return self.latent_in(latents) + self.content_in(content.reshape(b, t, -1))

    def condition(self, speaker: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The adaLN condition (B, T, dim) from the speaker vector (B, dim) and times (B, T)."""
        return speaker[:, None] + self.t_embed(t) + self.dt_embed(t - r)

    def head(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Final adaLN norm and projection to latents."""
        shift, scale = self.ada_out(F.silu(cond)).chunk(2, dim=-1)
        return self.out(modulate(self.norm_out(x), shift, scale))

    def _run(self, x, cond, timbre_kv, timbre_mask, attend_fn, skip_last_mlp: bool = False) -> torch.Tensor:
        """The blocks, with ``attend_fn(attention module, layer, normed x)`` doing self-attention."""
        shared = self.ada(F.silu(cond))
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            x = block(x, shared, lambda h, layer=layer, block=block: attend_fn(block.attn, layer, h),
                      timbre_kv[layer], timbre_mask, skip_mlp=skip_last_mlp and layer == last)
        return x

    def forward_offline(
        self,
        clean: torch.Tensor,
        noisy: torch.Tensor,
        content: torch.Tensor,
        r: torch.Tensor,
        t: torch.Tensor,
        speaker: torch.Tensor,
        timbre_kv: list[tuple[torch.Tensor, torch.Tensor]],
        timbre_mask: torch.Tensor,
        chunk: int,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Both streams over whole sequences: clean/noisy (B, T, D), r/t (B, T) -> u (B, T, D).

        ``context_mask`` (B,) False hides every clean token from a sequence's noisy tokens (context dropout).
        """
        b, n, _ = clean.shape
        x = torch.cat([self.embed(clean, content) + self.clean_embed, self.embed(noisy, content)], dim=1)
        zeros = torch.zeros_like(t)
        cond = torch.cat([self.condition(speaker, zeros, zeros), self.condition(speaker, r, t)], dim=1)
        pos = torch.arange(n, device=clean.device).repeat(2)[None].expand(b, -1)
        mask = two_stream_mask(n, chunk, self.cfg.window_latents, clean.device).expand(b, -1, -1, -1)
        if context_mask is not None:
            hide = torch.zeros(b, 1, 2 * n, 2 * n, dtype=torch.bool, device=clean.device)
            hide[:, :, n:, :n] = ~context_mask[:, None, None, None]
            mask = mask & ~hide
        tmask = timbre_mask[:, None, None, :]

        def attn(module: CachedSelfAttention, layer: int, h: torch.Tensor) -> torch.Tensor:
            return module(h, pos, mask)

        x = self._run(x, cond, timbre_kv, tmask, attn)
        return self.head(x[:, n:], cond[:, n:])

    def denoise(self, noisy, content, r, t, speaker, timbre_kv, timbre_mask, positions, cache: RingKVCache, slots):
        """Average velocity (B, K, D) of one chunk's noisy latents against the cached clean context (no write)."""
        x = self.embed(noisy, content)
        cond = self.condition(speaker, r, t)
        k_new = x.shape[1]
        cached = cache.mask(slots, positions, self.cfg.window_latents)  # (B, 1, K, S)
        # Entries already reserved for this chunk's clean tokens (written after sampling) are not context.
        cached = cached & (cache.labels[slots] < positions[:, :1])[:, None, None, :]
        own = torch.ones(x.shape[0], 1, k_new, k_new, dtype=torch.bool, device=x.device)
        mask = torch.cat([cached, own], dim=-1)
        tmask = timbre_mask[:, None, None, :]

        def attn(module: CachedSelfAttention, layer: int, h: torch.Tensor) -> torch.Tensor:
            b, n, c = h.shape
            q, k, v = module.project(h, positions)  # (B, K, H, hd)
            kc, vc = cache.read(layer, slots)  # (B, S, H, hd)
            k, v = torch.cat([kc, k], dim=1), torch.cat([vc, v], dim=1)
            y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, module.explicit)
            return module.out(y.transpose(1, 2).reshape(b, n, c))

        x = self._run(x, cond, timbre_kv, tmask, attn)
        return self.head(x, cond)

    def write_context(self, clean, content, speaker, timbre_kv, timbre_mask, positions, cache: RingKVCache, slots,
                      index: torch.Tensor) -> None:
        """Run one chunk's clean latents (B, K, D) through the clean stream, writing their keys/values.

        ``index`` comes from :meth:`RingKVCache.reserve` (called by the owner, outside any CUDA graph).
        """
        x = self.embed(clean, content) + self.clean_embed
        zeros = torch.zeros(positions.shape, device=x.device)
        cond = self.condition(speaker, zeros, zeros)
        mask = cache.mask(slots, positions, self.cfg.window_latents)
        tmask = timbre_mask[:, None, None, :]

        def attn(module: CachedSelfAttention, layer: int, h: torch.Tensor) -> torch.Tensor:
            return module(h, positions, mask, cache=cache, layer=layer, slots=slots, index=index)

        # Only the keys/values matter here: the last block's cross-attention and MLP are skipped.
        self._run(x, cond, timbre_kv, tmask, attn, skip_last_mlp=True)


def content_for_latents(content: torch.Tensor, cfg: VCConfig) -> torch.Tensor:
    """Content (..., T * per, C) on the audio's clock -> the content each latent frame is made from.

    Shifted ``cfg.content_lookahead`` latent frames earlier (the last frame repeated past the end), so frame
    p of the result goes with latent p: what training pairs and what offline passes feed the DiT. Serving
    needs no shift: its DiT runs that many frames behind the mic (see ``VCGenerator``).
    """
    ahead = cfg.content_lookahead * cfg.content_per_latent
    if ahead == 0:
        return content
    last = content[..., -1:, :].expand(*content.shape[:-2], ahead, content.shape[-1])
    return torch.cat([content[..., ahead:, :], last], dim=-2)


class VCModel(nn.Module):
    """Every trained part of the VC model, plus the waveform VAE used as its vocoder."""

    def __init__(self, cfg: VCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = CausalMel(cfg)
        self.content = ContentEncoder(cfg)
        self.speaker = SpeakerEncoder(cfg)
        self.dit = DiT(cfg)
        self.vae = WaveformVAE(cfg.vae)

    def reference(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reference clips (B, T) at 16 kHz (equal lengths) -> speaker (B, dim), tokens (B, S, dim), mask (B, S)."""
        mel = self.mel.reference(audio)
        return self.speaker(mel, torch.ones(mel.shape[:2], dtype=torch.bool, device=mel.device))

    def content_offline(self, audio: torch.Tensor) -> torch.Tensor:
        """Bottleneck features (B, T // (2 * mel_hop), content_dim) of whole signals."""
        return offline_content(self.mel, self.content, audio)
