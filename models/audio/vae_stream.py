"""The waveform VAE's decoder stepped chunk by chunk with per-layer convolution states (inference only).

:class:`StreamingDecoder` equals :meth:`models.audio.vae.WaveformVAE.decode` over the whole stream (to float
rounding); :func:`causal_conv_step` and :func:`conv_matrix` lay a causal convolution out as one matrix product,
which the VC family's streaming content encoder (models/vc/stream.py) uses too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.audio.vae import ResBlock, UpBlock, WaveformVAE, overlap_gain, periodic_part, predicted_f0


def causal_conv_step(x: torch.Tensor, past: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     kernel: int, dilation: int = 1, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal conv over time-major frames as one matrix product: (B, T, C) -> (B, T', C'), new ``past``.

    ``past`` (B, P, C) holds the input frames before ``x`` that the next outputs need; ``weight`` is
    :func:`conv_matrix` of the conv's weight. Output j reads input frames ``j * stride + i * dilation``
    (i < kernel) of ``[past ; x]``; the new past is the last P frames of ``[past ; x]``. Small batches on
    the CPU reach PyTorch's ``slow_conv2d`` / ``slow_conv_dilated2d`` kernels through ``F.conv1d`` (a dilated
    256-channel conv over 22 frames: ~1.1 ms); this is one ``addmm`` (~0.2 ms).
    """
    b, num_past = past.shape[0], past.shape[1]
    full = torch.cat([past, x], dim=1) if num_past else x  # (B, P + T, C)
    span = (kernel - 1) * dilation + 1
    num_out = (full.shape[1] - span) // stride + 1
    end = (num_out - 1) * stride + 1
    taps = [full[:, i * dilation : i * dilation + end : stride] for i in range(kernel)]
    cols = torch.cat(taps, dim=-1) if kernel > 1 else taps[0]  # (B, T', kernel * C)
    flat = cols.reshape(b * num_out, -1)
    y = torch.addmm(bias, flat, weight) if bias is not None else flat @ weight
    return y.view(b, num_out, -1), full[:, full.shape[1] - num_past :]


def conv_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Conv1d weight (C', C, k) -> (k * C, C') for :func:`causal_conv_step` (row ``i * C + c`` = tap i, channel c)."""
    return weight.detach().permute(2, 1, 0).reshape(-1, weight.shape[0]).contiguous()


class StreamingDecoder:
    """The VAE decoder stepped chunk by chunk with per-layer convolution states (inference only).

    :meth:`WaveformVAE.decode_chunk` re-decodes ``context_latents`` latents of left context with every
    chunk (18 latents for 4 new ones); this keeps, per session, the input frames each causal convolution
    still needs and the overlap-add tail, so a chunk costs only its own frames. Frames are time-major
    (B, T, C) so every convolution is one matrix product. It computes what :meth:`WaveformVAE.decode`
    computes over the whole stream (to float rounding; tested against it). Built from a loaded VAE: the
    weights are copied (re-laid out), so build it again if the VAE's weights change.

    State: a list of tensors (B, frames, channels), one per convolution with a receptive field plus the
    overlap-add tail (B, 1, synth_len - frame_hop); :meth:`state_shapes` gives their shapes without the batch.
    """

    def __init__(self, vae: WaveformVAE) -> None:
        cfg = vae.cfg
        if cfg.synth_len % cfg.frame_hop:
            raise ValueError("the streaming decoder needs the synthesis window to be a multiple of the frame hop")
        self.cfg = cfg
        self._ops: list[tuple] = []  # ("conv" | "res" | "up", ...) in order; see _run
        self._shapes: list[tuple[int, int]] = []
        self._add_conv(vae.dec_in, None)
        for stage in vae.dec:
            for m in (stage if isinstance(stage, nn.Sequential) else [stage]):
                if isinstance(m, ResBlock):
                    self._add_res(m)
                elif isinstance(m, UpBlock):
                    self._add_up(m)
                else:
                    raise TypeError(f"the streaming decoder does not know {type(m).__name__}")
        self.head_w, self.head_b = conv_matrix(vae.head.weight), vae.head.bias.detach().clone()
        if vae.harm_head is not None:
            self.harm_w, self.harm_b = conv_matrix(vae.harm_head.weight), vae.harm_head.bias.detach().clone()
        self.pitch_ops = None
        if vae.pitch_head is not None:
            first, last = vae.pitch_head[0], vae.pitch_head[-1]
            self.pitch_ops = (conv_matrix(first.weight), first.bias.detach().clone(),
                              conv_matrix(last.weight), last.bias.detach().clone())
        self.synth = vae.synth
        self.phase = vae.phase  # (frames per latent, F): the fixed phase repeats every latent
        self._phases: dict[int, torch.Tensor] = {}
        self.gain = overlap_gain(vae.synth, cfg.frame_hop)
        self.latent_std, self.latent_mean = vae.latent_std.clone(), vae.latent_mean.clone()
        self._shapes.append((1, cfg.synth_len - cfg.frame_hop))  # the overlap-add tail
        if cfg.harmonics:  # the oscillators: last frame's amplitudes, its f0, the running phase
            self._shapes.append((1, cfg.harmonics + 2))

    def _add_conv(self, conv: nn.Conv1d, kind: str | None) -> tuple:
        k, d = conv.kernel_size[0], conv.dilation[0]
        op = (conv_matrix(conv.weight), conv.bias.detach().clone(), k, d)
        if (k - 1) * d:
            self._shapes.append(((k - 1) * d, conv.in_channels))
        if kind is None:
            self._ops.append(("conv", *op))
        return op

    def _add_res(self, block: ResBlock) -> None:
        if block.conv2.kernel_size[0] != 1:
            raise ValueError("ResBlock.conv2 must be 1x1")
        self._ops.append(("res", self._add_conv(block.conv1, "res"), conv_matrix(block.conv2.weight),
                          block.conv2.bias.detach().clone()))

    def _add_up(self, block: UpBlock) -> None:
        conv = block.conv
        f, cout, cin = block.factor, block.cout, conv.in_channels
        # Output channel j = c * factor + p of the conv is sample p of channel c; reorder the columns so the
        # product's last dim is (p, c) and channel-to-space is a free view. The shortcut duplicates input
        # channel j // (cout * factor / cin) into channel j: the same reorder, as a gather of input channels.
        order = torch.arange(cout * f).view(cout, f).T.reshape(-1)  # new column (p, c) <- old column c * f + p
        weight, bias, k, d = self._add_conv(conv, "up")
        dup = order // (cout * f // cin)
        self._ops.append(("up", (weight[:, order].contiguous(), bias[order].contiguous(), k, d), dup, f, cout))

    def state_shapes(self) -> list[tuple[int, int]]:
        """(frames, channels) of each state tensor, in order."""
        return list(self._shapes)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Zeros: the state before a stream's first latent (the convolutions' zero padding)."""
        return [torch.zeros(batch, t, c, device=device) for t, c in self._shapes]

    def to(self, device: torch.device | str) -> StreamingDecoder:
        """Move the copied weights."""
        self._phases = {}
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        self._ops = [tuple(_to(x, device) for x in op) for op in self._ops]
        return self

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Time-major :meth:`WaveformVAE.denormalize`: (B, T, latent_dim)."""
        return z * self.latent_std + self.latent_mean

    def __call__(self, z: torch.Tensor, state: list[torch.Tensor],
                 f0: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Un-normalised latents (B, T, latent_dim) -> audio (B, T * hop) and the new state.

        The audio is exactly the next ``T * hop`` samples of :meth:`WaveformVAE.decode` over the stream so
        far (delayed by ``delay_samples`` like it). A harmonic decoder takes the frames' ``f0`` (B, T * up) too
        (with a pitch head: or None, for the predicted pitch).
        """
        new: list[torch.Tensor] = []
        past = iter(state)
        x = z
        for op in self._ops:
            if op[0] == "conv":
                x = self._conv(x, op[1:], past, new)
            elif op[0] == "res":
                h = self._conv(F.silu(x), op[1], past, new)
                x = x + self._conv1x1(F.silu(h), op[2], op[3])
            else:  # up: conv of silu(x) + the duplicating shortcut, then channel-to-space
                conv, dup, factor, cout = op[1:]
                b, t, _ = x.shape
                y = self._conv(F.silu(x), conv, past, new)
                x = (y + x[..., dup]).view(b, t * factor, cout)  # (B, T * factor, cout)
        b, n = x.shape[:2]
        x_head = F.silu(x)
        mag = self._conv1x1(x_head, self.head_w, self.head_b).clamp(max=8.0).exp()  # (B, frames, F)
        phase = self._phases.get(n)
        if phase is None:  # the fixed phase of n frames from a latent boundary (a chunk has one length)
            phase = self._phases[n] = self.phase.repeat(n // self.phase.shape[0], 1)
        size = self.cfg.synth_len
        frames = torch.fft.irfft(mag * phase, n=self.cfg.n_fft)[..., :size] * self.synth  # (B, frames, size)
        # Overlap-add: frame i covers hops i .. i + size / hop - 1 of the output. As shifted adds of hop-long
        # segments (F.fold, which decode uses, costs ~0.15 ms at batch 1 and ~3 ms at batch 32 here).
        hop, per = self.cfg.frame_hop, size // self.cfg.frame_hop
        segments = frames.view(b, n, per, hop)
        tail = next(past).reshape(b, per - 1, hop)  # earlier frames' overlap with these hops
        out = torch.cat([tail, frames.new_zeros(b, n, hop)], dim=1)  # (B, n + per - 1, hop)
        for j in range(per):
            out[:, j : j + n] += segments[:, :, j]
        new.append(out[:, n:].reshape(b, 1, -1))  # the overlap of these frames with the next chunk
        audio = out[:, :n].reshape(b, n * hop) / self.gain
        if self.cfg.harmonics:
            osc_state = next(past)[:, 0]
            if f0 is None:
                if self.pitch_ops is None:
                    raise ValueError("a harmonic decoder needs f0 per frame")
                w1, b1, w2, b2 = self.pitch_ops
                pitch = self._conv1x1(F.silu(self._conv1x1(x_head, w1, b1)), w2, b2)  # (B, frames, 2)
                f0 = predicted_f0(pitch, osc_state[:, -2])  # the state's f0: the last frame's, held
            env = self._conv1x1(x_head, self.harm_w, self.harm_b)
            periodic, osc = periodic_part(self.cfg, env, f0, osc_state)
            audio = audio + periodic
            new.append(osc[:, None])
        return audio, new

    @staticmethod
    def _conv(x: torch.Tensor, op: tuple, past, new: list[torch.Tensor]) -> torch.Tensor:
        weight, bias, k, d = op
        if (k - 1) * d == 0:
            return StreamingDecoder._conv1x1(x, weight, bias)
        y, p = causal_conv_step(x, next(past), weight, bias, k, d)
        new.append(p)
        return y

    @staticmethod
    def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return torch.addmm(bias, x.reshape(b * t, c), weight).view(b, t, -1)


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_to(y, device) for y in x)
    return x
