"""The serving fast path of the VC model: the same computation as ``model.py``, laid out for small batches.

``model.py``'s modules are the reference (training, offline passes, the tests' offline conversion). A step
of a few sessions on one CPU core is bound by per-op overhead and by reading the weights, not by
arithmetic, so serving runs the same weights through this file instead:

- **Content**: the causal convolutions are one matrix product each over time-major frames
  (:func:`~models.audio.vae_stream.causal_conv_step`); ``F.conv1d`` at batch 1 takes PyTorch's ``slow_conv2d``.
- **DiT, one pass per step**: the reference path runs two passes per chunk, the denoising pass and then
  the clean pass that writes the chunk's keys/values to the cache. The clean pass of chunk k only has to
  happen before chunk k+1 reads the cache, so it runs *inside* the next step's denoising pass, as the
  first stream of one batch of tokens: at every layer the clean tokens' keys/values are written to the
  ring first, then every query attends (clean tokens to the cache, as when written; noisy tokens to the
  cache and their own chunk). This is exactly the two-stream visibility of ``two_stream_mask``; the
  weights are read once per step instead of twice, at twice the rows.
- **Per-session constants**: the adaLN modulations depend only on the speaker vector and the flow times,
  which take a handful of values (clean: r = t = 0; one step: (0, 1); two steps: (0.5, 1), (0, 0.5)),
  so they are computed per session when its reference is set, with the RMSNorm gains folded in;
  rotary angles are computed once per pass, not per layer; weights are stored pre-transposed.

Equality with the reference path (to float rounding) is what ``tests/test_vc.py`` checks: streaming
through this file against whole-sequence passes of ``model.py``, on the tiny test model and the shipped one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.audio.vae_stream import causal_conv_step, conv_matrix
from models.cache import RingKVCache
from models.vc.model import DiT, VCModel

Rows = slice | torch.Tensor  # the sessions' rows of every per-slot tensor: a slice when consecutive (a view)


def rms(x: torch.Tensor, eps: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
    """:class:`~models.layers.RMSNorm` over the last dim in four ops.

    The module takes six, ``F.rms_norm`` as many inside and more time (~25 us against ~15 us on a
    (2, 4, 256) input here). ``eps`` is a 0-d tensor. ``vector_norm`` is one reduction; its square
    equals the sum of squares to float rounding.
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    scale = torch.addcmul(eps, norm, norm, value=1.0 / x.shape[-1]).rsqrt_()
    return x * scale if gain is None else (x * scale).mul_(gain)


def rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """:class:`~models.layers.Rope` as one complex product: feature pairs (2i, 2i+1) times e^(i angle).

    ``rotation`` (complex64) broadcasts against x's leading dims; the result equals Rope's (the same
    products and sums), in one op instead of seven.
    """
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation).flatten(-2)


class StreamingContent:
    """The content encoder's streaming step (:meth:`ContentEncoder.forward` with a state), time-major.

    State per session: the 2 mel frames before the chunk (conv1's context), the 2 conv1 outputs before it
    (conv2's), both (B, 2, C) time-major, and the GRU's (layers, B, C).
    """

    def __init__(self, model: VCModel) -> None:
        enc, mel = model.content, model.mel
        self.n_fft, self.hop, self.window = mel.n_fft, mel.hop, mel.window
        self.fb, self.mean, self.std = mel.fb.T.contiguous(), mel.mean, mel.std
        self.w1, self.b1 = conv_matrix(enc.conv1.weight), enc.conv1.bias.detach()
        self.w2, self.b2 = conv_matrix(enc.conv2.weight), enc.conv2.bias.detach()
        self.stride2 = enc.conv2.stride[0]
        self.gru = enc.gru
        self.wb, self.bb = enc.bottleneck.weight.detach().T.contiguous(), enc.bottleneck.bias.detach()

    def mel(self, audio: torch.Tensor) -> torch.Tensor:
        """:meth:`CausalMel.forward` (normalised): |X|^2 as re^2 + im^2, not abs() squared (4x faster at batch 32)."""
        spec = torch.fft.rfft(audio.unfold(1, self.n_fft, self.hop) * self.window, dim=-1)  # (B, N, F)
        power = spec.real.square() + spec.imag.square()
        return (torch.log(power @ self.fb + 1e-6) - self.mean) / self.std

    def __call__(self, audio: torch.Tensor, past1: torch.Tensor, past2: torch.Tensor, gru: torch.Tensor):
        """Audio (B, tail + 2N * mel_hop) -> content (B, N, content_dim), new (past1, past2, gru)."""
        mel = self.mel(audio)  # (B, 2N, M), normalised
        h1, past1 = causal_conv_step(mel, past1, self.w1, self.b1, self.w1.shape[0] // mel.shape[-1])
        h1 = F.silu(h1)
        h2, past2 = causal_conv_step(h1, past2, self.w2, self.b2, self.w2.shape[0] // h1.shape[-1], 1, self.stride2)
        y, gru = self.gru(F.silu(h2), gru)  # (B, N, C)
        b, n, c = y.shape
        return torch.addmm(self.bb, y.reshape(b * n, c), self.wb).view(b, n, -1), (past1, past2, gru)


@dataclass
class _Block:
    """One DiT block's weights, pre-transposed (x @ w), with the cross-attention's RMSNorm gain folded in."""

    qkv: torch.Tensor  # (C, 3C)
    qk_gain: torch.Tensor  # (2, 1, head_dim): q_norm's and k_norm's gains
    out: torch.Tensor  # (C, C)
    cross_q: torch.Tensor  # (C, C), rows scaled by norm2's gain
    cross_out: torch.Tensor  # (C, C)
    up: torch.Tensor  # (C, 2 * hidden)
    down: torch.Tensor  # (hidden, C)


class StreamingDiT:
    """The DiT's streaming step: optionally the previous chunk's clean pass and this chunk's denoising pass.

    Built from a loaded :class:`DiT` (weights are copied, pre-transposed): build it again if they change.
    """

    MODS_PER_BLOCK = 6  # shift1, gain1 (1 + scale1) * norm1, gate1, shift2, gain2 (1 + scale2) * norm3, gate2

    def __init__(self, dit: DiT) -> None:
        cfg = dit.cfg
        self.dit = dit
        self.dim, self.num_heads, self.head_dim = cfg.dim, cfg.num_heads, cfg.dim // cfg.num_heads
        self.window = cfg.window_latents
        self.eps = torch.tensor(dit.norm_out.eps, device=dit.out.weight.device)  # every RMSNorm's (0-d)
        w = lambda linear: linear.weight.detach().T.contiguous()  # noqa: E731 - (in, out) for x @ w
        # latent_in(latents) + content_in(content) is one product over the concatenated inputs.
        self.embed = torch.cat([w(dit.latent_in), w(dit.content_in)], dim=0)  # (D + P, C)
        bias = (dit.latent_in.bias + dit.content_in.bias).detach()
        self.stream_bias = torch.stack([bias + dit.clean_embed.detach(), bias])  # (2, C): clean, noisy
        self.blocks = [
            _Block(qkv=w(b.attn.qkv), out=w(b.attn.out),
                   qk_gain=torch.stack([b.attn.q_norm.weight, b.attn.k_norm.weight]).detach()[:, None],
                   cross_q=(b.cross.q.weight * b.norm2.weight).detach().T.contiguous(),
                   cross_out=w(b.cross.out), up=w(b.mlp.up), down=w(b.mlp.down))
            for b in dit.blocks
        ]
        self.out, self.out_bias = w(dit.out), dit.out.bias.detach()
        self.rope = dit.rope

    @property
    def num_mods(self) -> int:
        """Modulation vectors per (session, time pair): 6 per block and 2 for the output head."""
        return self.MODS_PER_BLOCK * len(self.blocks) + 2

    @torch.inference_mode()
    def modulations(self, speaker: torch.Tensor, r: float, t: float) -> torch.Tensor:
        """Speaker vectors (B, C) and flow times -> (B, num_mods, C), RMSNorm gains folded into the scales."""
        dit = self.dit
        times = speaker.new_full((speaker.shape[0], 1), t), speaker.new_full((speaker.shape[0], 1), r)
        cond = dit.condition(speaker, times[1], times[0])  # (B, 1, C)
        shared = dit.ada(F.silu(cond))[:, 0]  # (B, 6C)
        mods = []
        for block in dit.blocks:
            shift1, scale1, gate1, shift2, scale2, gate2 = block.modulation(shared)
            mods += [shift1, (1 + scale1) * block.norm1.weight, gate1, shift2, (1 + scale2) * block.norm3.weight, gate2]
        shift, scale = dit.ada_out(F.silu(cond))[:, 0].chunk(2, dim=-1)
        mods += [shift, (1 + scale) * dit.norm_out.weight]
        return torch.stack(mods, dim=1)

    def __call__(
        self,
        tokens: torch.Tensor,
        mods: torch.Tensor,
        positions: torch.Tensor,
        timbre: torch.Tensor,
        timbre_mask: torch.Tensor,
        cache: RingKVCache,
        rows: Rows,
        index: torch.Tensor,
    ) -> torch.Tensor:
        """Average velocity (B, K, latent_dim) of the last stream's tokens.

        ``tokens`` (B, S, K, latent_dim + content) are S = 1 (noisy) or 2 (clean, then noisy) streams of one
        chunk each, ``mods`` (B, S, num_mods, C) and ``positions`` (B, S, K) theirs. Every token's keys/values
        are written at its ring entry ``index`` (B, S * K) (from :meth:`RingKVCache.reserve`, which labelled
        them with their positions) before anything attends, so attention reads the cache alone: the clean
        tokens' entries are their final ones, the noisy tokens' are scratch until the next step writes that
        chunk's clean tokens over them. ``timbre`` (B, depth, 2, H, S_ref, hd) and ``timbre_mask`` (B, S_ref):
        the reference.
        """
        b, s, k, _ = tokens.shape
        c, h, hd = self.dim, self.num_heads, self.head_dim
        x = (tokens.reshape(b * s * k, -1) @ self.embed).view(b, s, k, c) + self.stream_bias[2 - s :, None]
        ang = self.rope.angles(positions.reshape(b, s * k))[:, :, None, None, :]  # (B, S*K, 1, 1, hd/2), float64
        rotation = torch.polar(torch.ones_like(ang), ang).to(torch.complex64)  # cos + i sin, as Rope rounds them
        # Boolean masks as additive ones, once per pass (SDPA would convert them in every layer).
        mask = _additive(self._mask(positions, cache.labels[rows]))  # (B, 1, S*K, cap)
        tmask = _additive(timbre_mask[:, None, None, :])
        entries = cache.entry_index(rows, index)
        mods = mods[..., None, :].unbind(2)  # num_mods tensors (B, S, 1, C): broadcast over a stream's tokens
        timbre_kv = [layer.unbind(1) for layer in timbre.unbind(1)]  # per layer: keys, values (B, H, S_ref, hd)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            shift1, gain1, gate1, shift2, gain2, gate2 = mods[self.MODS_PER_BLOCK * i : self.MODS_PER_BLOCK * (i + 1)]
            hn = torch.addcmul(shift1, rms(x, self.eps), gain1)
            qkv = (hn.view(b * s * k, c) @ block.qkv).view(b, s * k, 3, h, hd)
            # q_norm and k_norm, then rotary, on queries and keys at once: (B, S*K, 2, H, hd)
            q, key = rotate(rms(qkv[:, :, :2], self.eps, block.qk_gain), rotation).unbind(2)
            cache.write_entries(i, entries, key, qkv[:, :, 2])
            keys, values = (t.transpose(1, 2) for t in cache.read(i, rows))  # (B, H, cap, hd)
            attn_mask = mask
            if i == last and s == 2:  # the clean stream needed only this layer's keys/values
                x, q, attn_mask = x[:, 1:], q[:, k:], mask[:, :, k:]
                gate1, shift2, gain2, gate2 = gate1[:, 1:], shift2[:, 1:], gain2[:, 1:], gate2[:, 1:]
            n = x.shape[1] * k
            y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=attn_mask)  # (B, H, n, hd)
            x = torch.addcmul(x, gate1, (y.transpose(1, 2).reshape(b * n, c) @ block.out).view(x.shape))
            # cross-attention to the reference's timbre tokens (keys/values computed once per reference)
            q = (rms(x, self.eps).view(b * n, c) @ block.cross_q).view(b, n, h, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, *timbre_kv[i], attn_mask=tmask)
            x = x + (y.transpose(1, 2).reshape(b * n, c) @ block.cross_out).view(x.shape)
            a, g = (torch.addcmul(shift2, rms(x, self.eps), gain2).view(b * n, c) @ block.up).chunk(2, dim=-1)
            x = torch.addcmul(x, gate2, (F.silu(a) * g @ block.down).view(x.shape))
        shift, gain = mods[-2][:, -1:], mods[-1][:, -1:]  # (B, 1, 1, C)
        hn = torch.addcmul(shift, rms(x[:, -1:], self.eps), gain).view(b * k, c)
        return torch.addmm(self.out_bias, hn, self.out).view(b, k, -1)

    def _mask(self, positions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Visibility (B, 1, S*K, cap) of the ring's entries, the streams' own included.

        A clean token sees the entries labelled within the window up to itself (as when the reference path
        writes it; :func:`~models.cache.visible`); a noisy token sees those within the window up to the end
        of its chunk: the cache before the chunk and every token of the chunk, never a later chunk's.
        """
        b, s, k = positions.shape
        upper = positions.clone()
        upper[:, -1] = positions[:, -1, -1:]  # the noisy stream sees its whole chunk
        q, upper, key = positions.reshape(b, 1, s * k, 1), upper.reshape(b, 1, s * k, 1), labels[:, None, None, :]
        return (key >= 0) & (key > q - self.window) & (key <= upper)


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """A boolean visibility mask as SDPA's additive float mask (0 where visible, -inf elsewhere)."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))
