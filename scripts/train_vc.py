r"""Train the default voice-conversion model on CPU: content recognizer, then speaker encoder + mean-flow DiT.

Reproducible (seeded; one thread each). Stages, each bounded by steps and wall-clock minutes. The shipped
checkpoint was made by exactly these (`make train-vc`; ~80 min on 2 shared cores):

    python scripts/train_vc.py content --data data/speech_vc --out runs/vc --minutes 13 --steps 1600 --lr 3e-3 \
        --batch 12
    python scripts/train_vc.py content --resume --data data/speech_vc --out runs/vc --minutes 7 --steps 700 --lr 2e-3 \
        --batch 12
    python scripts/train_vc.py features --part latents --data data/speech_vc --out runs/vc
    python scripts/train_vc.py features --part content --data data/speech_vc --out runs/vc --shard 0 --num-shards 2
    python scripts/train_vc.py features --part content --data data/speech_vc --out runs/vc --shard 1 --num-shards 2
    python scripts/train_vc.py dit --out runs/vc --minutes 50 --steps 5500 --batch 8 --lr 5e-4
    python scripts/train_vc.py dit --resume --new-schedule --split-above 0.6 --out runs/vc --minutes 30 \
        --steps 7308 --batch 8 --lr 3e-4
    python scripts/train_vc.py export --data data/speech_vc --out runs/vc \
        --checkpoint checkpoints/vc_default.safetensors

The shipped run's first ``dit`` stage was stopped by its environment after step 3000 (its last save) and
continued with ``dit --resume --out runs/vc --minutes 24 --steps 5500 --batch 8 --lr 5e-4`` (the same lr
schedule from step 3001, a new data order, fresh optimizer moments re-warmed over 50 steps), which hit
its minutes at step 5308. Its one-step samples were noise (see :func:`dit_loss`): the second ``dit``
stage fine-tunes with the split-in-two target for intervals over 0.6, steps 5309-7308 on a new schedule.

``content`` trains the streaming CTC phoneme recognizer (level/noise augmentation; fixed mel statistics from
the data); ``features`` runs the TTS family's waveform-VAE encoder (``--vae``: its shipped checkpoint by
default) and the frozen recognizer over every utterance padded with silence, the latter also on a
pitch-shifted copy (content that carries less of the source's pitch); ``dit`` trains the speaker encoder
and the DiT with the MeanFlow objective (self-reconstruction: content of an utterance + a reference from
*another* utterance of the same voice -> its latents), with noisy context and context dropout against
exposure bias; ``export`` writes the one safetensors checkpoint (the VAE's weights copied in) with the
shipped reference voices; ``vocoder`` puts a re-tuned VAE decoder into that checkpoint in place (the
latents, and so everything trained on them, stay valid: the encoder was frozen). The shipped vocoder, a
harmonic-plus-noise decoder with a 10 ms delay (driven by the mic's pitch; docs/models/vc.md), was made
that way from the exported checkpoint, on the TTS corpus (``make speech-data``):

    python scripts/train_tts.py vae --decoder-only --init checkpoints/vc_default.safetensors --synth-window 320 \
        --harmonics 80 --data data/speech --out runs/vcharm --steps 8000 --minutes 40 --batch 8 --crop 24 \
        --lr 5e-4 --threads 2
    python scripts/train_vc.py vocoder --vae runs/vcharm --checkpoint checkpoints/vc_default.safetensors

(A fixed-phase decoder with the same 10 ms delay, ``--synth-window 320`` alone, was made the same way and not
shipped: low voices lost periodicity.)

To continue the shipped DiT on a machine without the runs that made it (session 13 did: ~10 min for both
corpora's features on 2 cores), unpack the checkpoint into a run folder, make the features with its own VAE and
recognizer, resume, and swap the result back in:

    python scripts/train_vc.py unpack --init checkpoints/vc_default.safetensors --out runs/next
    python scripts/train_vc.py features --part latents --data data/speech_human --out runs/next \
        --vae checkpoints/vc_default.safetensors   # and --part content; the same for data/speech_vc in a second
                                                    # folder (its own unpacked content.pt), passed as --extra-features
    python scripts/train_vc.py dit --resume --new-schedule --out runs/next ...
    python scripts/train_vc.py swap-dit --init checkpoints/vc_default.safetensors --out runs/next --checkpoint OUT
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_log import log, lr_at, optimizer_step  # noqa: E402

from evaluation.speech_corpus import (  # noqa: E402
    load_manifest,
    load_utterances,
    phoneme_inventory,
    render,  # noqa: E402
    voices,
)
from models.audio.augment import change_speed  # noqa: E402
from models.audio.pitch_track import median_pitch  # noqa: E402
from models.audio.vae import VAEConfig, WaveformVAE  # noqa: E402
from models.audio.vae_training import load_checkpoint_vae  # noqa: E402
from models.checkpoint_io import load_tensors, read_metadata, save_tensors  # noqa: E402
from models.diagnostic.pitch import shift_pitch  # noqa: E402
from models.flow import interpolate, mean_flow_target  # noqa: E402
from models.vc.checkpoint import FLOAT32_KEYS, load_checkpoint, save_checkpoint  # noqa: E402
from models.vc.generator import DEFAULT_TEMPERATURE  # noqa: E402
from models.vc.latent_recognizer import LatentContentLoss  # noqa: E402
from models.vc.model import VCConfig, VCModel, content_for_latents  # noqa: E402
from models.vc.phonemes import ctc_labels, ctc_phoneme_loss, ctc_symbols, greedy_ctc, phoneme_errors  # noqa: E402

PAD_S = 0.25  # silence added around every utterance so silence in -> silence out is learned
F0_TEXTS = ("The quick brown fox jumps over the lazy dog.", "How are you doing today? I am fine, thank you.",
            "Please call me back when you have a moment.")


def pad(audio: np.ndarray, hop: int, pad_s: float = PAD_S, rate: int = 16_000) -> np.ndarray:
    """Silence around the audio; length a multiple of ``hop``."""
    n = int(pad_s * rate)
    x = np.pad(audio, (n, n))
    return np.pad(x, (0, -len(x) % hop))


# -- stage 1: content recognizer --------------------------------------------------------------------------
def augment(x: np.ndarray, rng: random.Random, speed: float = 0.0) -> np.ndarray:
    """Random level (-20..0 dB), silence around, sometimes white noise (25-50 dB SNR).

    With probability ``speed``, first a speed change (0.85-1.18x: formants move, as another speaker's would).
    """
    if speed and rng.random() < speed:
        x = change_speed(x, np.random.default_rng(rng.randint(0, 2**31)))
    x = x * 10 ** (rng.uniform(-20, 0) / 20)
    x = np.pad(x, (rng.randint(0, 4000), rng.randint(0, 4000)))
    if rng.random() < 0.5:
        level = np.sqrt((x**2).mean() + 1e-9) * 10 ** (-rng.uniform(25, 50) / 20)
        x = x + np.random.default_rng(rng.randint(0, 2**31)).normal(0, level, len(x))
    return x.astype(np.float32)


def train_content(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    resume = args.resume and (out / "content.pt").exists()
    utts = load_utterances(args.data, ("train",), args.limit)
    if resume:  # continue this run: its sizes, classes and feature statistics as saved
        saved = torch.load(out / "content.pt")
        symbols, cfg = saved["symbols"], VCConfig.from_dict(saved["cfg"])
        model = VCModel(cfg)
        load_content(out, model)
    elif args.init:  # start from a shipped checkpoint's recognizer (e.g. on a corpus with more voices)
        shipped = load_checkpoint(args.init)
        symbols, model = shipped.symbols, shipped.model.train()
        cfg = model.cfg
    else:  # fresh, with fixed feature statistics from a sample (never per utterance: streaming sees the same)
        symbols = ctc_symbols(phoneme_inventory(args.data))
        cfg = VCConfig(num_phonemes=len(symbols))
        model = VCModel(cfg)
        sample = [torch.from_numpy(u.audio) for u in utts[:300]]
        mels = torch.cat([model.mel.offline(a[None])[0] for a in sample])
        model.mel.mean.copy_(mels.mean(0))
        model.mel.std.copy_(mels.std(0).clamp_min(1e-3))
    enc = model.content
    opt = torch.optim.AdamW(list(enc.parameters()), lr=args.lr, weight_decay=0.01)
    hop2 = 2 * cfg.mel_hop
    start = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=20 if resume or args.init else 200)
        batch = rng.sample(utts, args.batch)
        audio = [augment(u.audio, rng, args.speed_perturb) for u in batch]
        length = max(len(a) for a in audio) // hop2 * hop2 + hop2
        x = torch.from_numpy(np.stack([np.pad(a, (0, length - len(a)))[:length] for a in audio]))
        content, _ = enc(model.mel.offline(x))
        loss = ctc_phoneme_loss(enc.logits(content), [len(a) // hop2 for a in audio], [u.phonemes for u in batch],
                                symbols)
        optimizer_step(opt, loss, enc.parameters())
        minutes = (time.time() - start) / 60
        if step % 25 == 0:
            log(out / "content_log.jsonl", step=step, min=minutes, ctc=loss.item())
        if step % 100 == 0 or minutes > args.minutes or step == args.steps - 1:
            save_content(out, model, symbols)
        if minutes > args.minutes:
            break
    per = evaluate_content(model, symbols, load_utterances(args.data, ("test_unseen_voice",), 60))
    log(out / "content_log.jsonl", step=step, min=(time.time() - start) / 60, per_unseen=per)


@torch.no_grad()
def evaluate_content(model: VCModel, symbols: list[str], utts) -> float:
    """Phoneme error rate (greedy CTC) over utterances."""
    errors = total = 0
    for u in utts:
        content = model.content_offline(torch.from_numpy(u.audio)[None])
        hyp = greedy_ctc(model.content.logits(content)[0], symbols)
        ref = [symbols[i] for i in ctc_labels(u.phonemes, symbols)]
        errors += phoneme_errors(ref, hyp)
        total += len(ref)
    return errors / max(1, total)


def run_config(out: Path, vae_cfg: VAEConfig) -> VCConfig:
    """The run's model sizes (those the content stage saved, e.g. a shipped checkpoint's) with this VAE."""
    return replace(VCConfig.from_dict(torch.load(out / "content.pt")["cfg"]), vae=vae_cfg)


def save_content(out: Path, model: VCModel, symbols: list[str]) -> None:
    """The run's recognizer stage (content.pt): its sizes, CTC symbols, mel front end and content encoder."""
    torch.save({"cfg": model.cfg.to_dict(), "symbols": symbols, "mel": model.mel.state_dict(),
                "content": model.content.state_dict()}, out / "content.pt")


def load_content(out: Path, model: VCModel) -> list[str]:
    saved = torch.load(out / "content.pt")
    model.mel.load_state_dict(saved["mel"])
    model.content.load_state_dict(saved["content"])
    return saved["symbols"]


# -- stage 2: features ------------------------------------------------------------------------------------
def load_vae(source: Path) -> WaveformVAE:
    """The TTS family's VAE, from its shipped checkpoint or from a train_tts.py run folder.

    A .safetensors checkpoint holds it under ``vae.*``; a run folder has the encoder and latent statistics
    in vae.pt and the fine-tuned decoder, if any, in vae_decoder.pt.
    """
    if source.suffix == ".safetensors":
        return load_checkpoint_vae(str(source))
    saved = torch.load(source / "vae.pt", map_location="cpu")
    cfg = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["cfg"].items()})
    vae = WaveformVAE(cfg)
    state = saved["state"]
    if (source / "vae_decoder.pt").exists():
        dec = torch.load(source / "vae_decoder.pt", map_location="cpu")["state"]
        state = {k: (v if k.startswith("enc") or k.startswith("latent_") else dec[k]) for k, v in state.items()}
    bins = cfg.n_fft // 2 + 1
    if state["head.weight"].shape[0] == 2 * bins:  # a learned-phase head: the magnitudes are the first half
        state["head.weight"], state["head.bias"] = state["head.weight"][:bins], state["head.bias"][:bins]
    vae.load_state_dict(state)
    return vae.eval()


FEATURE_SPLITS = ("train", "test_seen_voice", "test_unseen_voice", "ref_unseen_voice")


@torch.no_grad()
def make_features(args) -> None:
    """``--part latents``: VAE latents + reference mels; ``--part content``: content features (shardable)."""
    out = Path(args.out)
    vae = load_vae(Path(args.vae))
    hop = vae.cfg.hop
    utts = load_utterances(args.data, FEATURE_SPLITS, args.limit)
    feats = defaultdict(list)
    start = time.time()
    if args.part == "latents":
        model = VCModel(VCConfig(vae=vae.cfg))
        feats["vae_cfg"] = dict(vae.cfg.__dict__)  # the DiT's latent size, whatever VAE made them
        for i, u in enumerate(utts):
            x = torch.from_numpy(pad(u.audio, hop))[None]
            feats["latents"].append(vae.normalize(vae.encode(x)[0])[0].T.half())  # (N, D)
            feats["mel"].append(model.mel.reference(torch.from_numpy(u.audio)[None])[0].half())  # plain log-mel
            for key in ("id", "split", "voice_id"):
                feats[key].append(getattr(u, key))
            if i % 500 == 0:
                minutes = round((time.time() - start) / 60, 2)
                print(json.dumps({"latents": i, "of": len(utts), "min": minutes}), flush=True)
        torch.save(dict(feats), out / "features_latents.pt")
        return
    model = VCModel(run_config(out, vae.cfg))
    load_content(out, model)
    grain = int(0.03 * 16_000)
    for i in range(args.shard, len(utts), args.num_shards):
        u = utts[i]
        rng = random.Random(f"{args.seed}-{u.id}")  # the same shift whatever the sharding
        x = torch.from_numpy(pad(u.audio, hop))[None]
        ratio = torch.tensor([2 ** (rng.choice([-1, 1]) * rng.uniform(2, 5) / 12)])
        shifted = shift_pitch(torch.zeros(1, grain + 1), x, torch.zeros(1), ratio, grain)
        feats["index"].append(i)
        feats["content"].append(model.content_offline(x)[0].half())
        feats["content_shifted"].append(model.content_offline(shifted)[0].half())
        if len(feats["index"]) % 500 == 0:
            print(json.dumps({"content": i, "of": len(utts), "min": round((time.time() - start) / 60, 2)}), flush=True)
    torch.save(dict(feats), out / f"features_content_{args.shard}.pt")


def load_features(out: Path, extra: tuple[Path, ...] = ()) -> dict:
    """The latents part and every content shard, merged per utterance; ``extra`` run folders' appended.

    An extra folder holds another corpus's features made with the same VAE and recognizer (e.g. the
    240-voice espeak-ng corpus beside the human-derived one, so the DiT keeps its speaker variety).
    """
    feats = load_run_features(out)
    for folder in extra:
        more = load_run_features(folder)
        if more.get("vae_cfg") != feats.get("vae_cfg"):
            raise ValueError(f"{folder}: its latents come from another VAE than {out}'s")
        for key, values in more.items():
            if isinstance(values, list):
                feats[key] = feats[key] + values
    return feats


def load_run_features(out: Path) -> dict:
    """One run folder's latents part and every content shard, merged per utterance."""
    feats = torch.load(out / "features_latents.pt")
    content = [None] * len(feats["id"])
    shifted = [None] * len(feats["id"])
    for path in sorted(out.glob("features_content_*.pt")):
        shard = torch.load(path)
        for i, c, s in zip(shard["index"], shard["content"], shard["content_shifted"], strict=True):
            content[i], shifted[i] = c, s
    if any(c is None for c in content):
        raise ValueError("content features are missing for some utterances: run every shard")
    return {**feats, "content": content, "content_shifted": shifted}


# -- stage 3: DiT -----------------------------------------------------------------------------------------
class DitBatches:
    """Random training crops: latents, content, and a reference from other utterances of the same voice."""

    def __init__(self, feats: dict, cfg: VCConfig, rng: random.Random, split: str = "train",
                 shifted_share: float = 0.5) -> None:
        self.f, self.cfg, self.rng = feats, cfg, rng
        self.shifted_share = shifted_share  # how often a crop's content is that of the pitch-shifted copy
        self.rows = [i for i, s in enumerate(feats["split"]) if s == split]
        self.by_voice = defaultdict(list)
        for i in self.rows:
            self.by_voice[feats["voice_id"][i]].append(i)

    def reference(self, row: int, max_frames: int) -> torch.Tensor:
        """Mel (T, M) of 1-3 other utterances of the row's voice, cut to a random 2.5 s..max length."""
        others = [j for j in self.by_voice[self.f["voice_id"][row]] if j != row] or [row]  # (tiny subsets)
        mel = torch.cat([self.f["mel"][j].float() for j in self.rng.sample(others, min(3, len(others)))])
        length = min(len(mel), self.rng.randint(250, max_frames))
        start = self.rng.randint(0, len(mel) - length)
        return mel[start : start + length]

    def __call__(self, batch: int, frames: int, max_ref_frames: int = 600):
        """A batch: latents (B, T, D), content (B, T * per, C), reference mel (B, R, M) and its mask (B, R)."""
        lat, con, refs = [], [], []
        for _ in range(batch):
            row = self.rng.choice(self.rows)
            z = self.f["latents"][row].float()
            n = len(z)
            start = self.rng.randint(0, max(0, n - frames))
            key = "content_shifted" if self.rng.random() < self.shifted_share else "content"
            c = self.f[key][row].float()
            c = content_for_latents(c, self.cfg)  # latent p goes with the content of p + lookahead
            per = self.cfg.content_per_latent
            zc, cc = z[start : start + frames], c[start * per : (start + frames) * per]
            if len(zc) < frames:  # short utterance: pad with its own last (silent) frame
                zc = torch.cat([zc, zc[-1:].expand(frames - len(zc), -1)])
                cc = torch.cat([cc, cc[-1:].expand(frames * per - len(cc), -1)])
            lat.append(zc)
            con.append(cc)
            refs.append(self.reference(row, max_ref_frames))
        length = max(len(r) for r in refs)
        length += -length % self.cfg.ref_stride
        ref = torch.zeros(batch, length, refs[0].shape[1])
        mask = torch.zeros(batch, length, dtype=torch.bool)
        for i, r in enumerate(refs):
            ref[i, : len(r)], mask[i, : len(r)] = r, True
        return torch.stack(lat), torch.stack(con), ref, mask


def chunk_times(batch: int, frames: int, chunk: int, mf: bool, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Per-chunk (r, t), each (B, T): logit-normal times; r = t for flow-matching rows, r < t otherwise."""
    num = -(-frames // chunk)
    a = torch.sigmoid(torch.randn(batch, num, generator=rng) - 0.4)
    if mf:
        b = torch.sigmoid(torch.randn(batch, num, generator=rng) - 0.4)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        exact = torch.rand(batch, num, generator=rng) < 0.15  # the one-step interval itself, [0, 1]
        t, r = torch.where(exact, torch.ones_like(t), t), torch.where(exact, torch.zeros_like(r), r)
    else:
        t = r = a
    expand = lambda x: x.repeat_interleave(chunk, dim=1)[:, :frames]  # noqa: E731
    return expand(r), expand(t)


def dit_loss(model: VCModel, batch, chunk: int, rng: torch.Generator, cfg: VCConfig,
             split_above: float = 2.0, self_context: float = 0.0, phoneme_loss: LatentContentLoss | None = None,
             phoneme_weight: float = 0.0, temperature: float = DEFAULT_TEMPERATURE,
             self_context_temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """MeanFlow loss (adaptive weighting) of one batch; rows split into r < t (jvp) and r = t (plain).

    Intervals longer than ``split_above`` (off by default) learn the interval-splitting identity instead
    of MeanFlow's: u(z, r, t) = (u(z, m, t) + u(z', r, m)) / 2 with m the midpoint and z' = z - (t - m) u(z, m, t),
    the model's own two half-jumps as the target (as shortcut models do). The shipped run needed it: near
    the one-step corner (r, t) = (0, 1) the MeanFlow target v - (t - r) du/dt fed on itself (du/dt grew
    with u) until u(z, 0, 1) was ~6x the velocity's size and one-step samples were noise.

    ``self_context``: the share of rows whose clean context is the model's own one-step sample of the
    sequence (made with the true context, no gradient) instead of the true latents. Serving feeds the DiT
    its own past output, never the truth; with true context only, the held-out PER of one-step latents
    was 0.60 teacher-forced and 0.80 running on its own output (candidate B, 2026-12-07). The sample starts
    from noise scaled by ``self_context_temperature``: 1 in the stages before session 13; serving samples at
    its temperature (0.3), whose past is smoother than a sample at 1, so a stage can show the DiT that past.

    ``phoneme_loss`` (weighted by ``phoneme_weight``): the batch is also sampled in one step from noise
    scaled by ``temperature`` (serving's default), as serving samples it, with gradient, and a frozen latent
    phoneme recognizer must hear that sample say what the true latents say (``models/vc/latent_recognizer.py``).
    The flow loss alone weighs every latent error alike; the DiT lost words even teacher-forced with 8 steps.
    At weight 0.5 (at temperature 0.5, then serving's) the DiT learnt latents that recognizer hears and the
    vocoder and the judge do not: every held-out number got worse (docs/models/vc.md, session 9). Off by default.
    """
    x, content, ref, ref_mask = batch
    b, n, _ = x.shape
    speaker, tokens, tmask = model.speaker(ref, ref_mask)
    kv = model.dit.timbre_kv(tokens)
    past = x
    if self_context > 0:
        own = torch.rand(b, generator=rng) < self_context
        if own.any():
            with torch.no_grad():
                model.dit.set_explicit_attention(False)
                z1 = self_context_temperature * torch.randn(x.shape, generator=rng)
                sample = z1 - model.dit.forward_offline(x, z1, content, torch.zeros(b, n), torch.ones(b, n), speaker,
                                                        kv, tmask, chunk)
            past = torch.where(own[:, None, None], sample, x)
    sigma = torch.rand(b, 1, 1, generator=rng) * cfg.context_noise
    clean = past + sigma * torch.randn(x.shape, generator=rng)
    context = torch.rand(b, generator=rng) >= cfg.context_drop
    noise = torch.randn(x.shape, generator=rng)
    num_mf = int(round(b * cfg.mf_fraction))
    out = {}
    for name, rows, mf in (("mf", slice(0, num_mf), True), ("fm", slice(num_mf, b), False)):
        m = rows.stop - rows.start
        if m == 0:
            continue
        r, t = chunk_times(m, n, chunk, mf, rng)
        z = interpolate(x[rows], noise[rows], t)
        v = noise[rows] - x[rows]
        kv_rows = [(k[rows], vv[rows]) for k, vv in kv]

        def u_fn(z_, r_, t_, rows=rows, kv_rows=kv_rows):
            return model.dit.forward_offline(clean[rows], z_, content[rows], r_, t_, speaker[rows], kv_rows,
                                             tmask[rows], chunk, context[rows])

        model.dit.set_explicit_attention(mf)  # forward-mode AD needs attention written out; SDPA otherwise
        if mf:
            u, target = mean_flow_target(u_fn, z, r, t, v)
            long = (t - r) > split_above  # (m, T)
            if long.any():
                target = torch.where(long[..., None], split_target(u_fn, z, r, t), target)
        else:
            u, target = u_fn(z, r, t), v
        err = (u - target).pow(2).mean(-1)  # (m, T)
        weight = 1.0 / (err.detach() + 1e-3) ** cfg.adaptive_p
        out[name] = (weight * err).mean()
        out[name + "_mse"] = err.mean().detach()
    out["loss"] = sum(out[k] for k in ("mf", "fm") if k in out)
    if phoneme_loss is not None and phoneme_weight > 0:
        model.dit.set_explicit_attention(False)
        z1 = temperature * torch.randn(x.shape, generator=rng)
        sample = z1 - model.dit.forward_offline(clean, z1, content, torch.zeros(b, n), torch.ones(b, n), speaker, kv,
                                                tmask, chunk, context)
        out["phoneme"] = phoneme_loss(sample, x)
        out["loss"] = out["loss"] + phoneme_weight * out["phoneme"]
    return out


@torch.no_grad()
def split_target(u_fn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The average velocity over [r, t] as the mean of the model's own two half-jumps (no gradient)."""
    mid = (r + t) / 2
    u_late = u_fn(z, mid, t)
    u_early = u_fn(z - (t - mid)[..., None] * u_late, r, mid)
    return (u_late + u_early) / 2


def train_dit(args) -> None:
    out = Path(args.out)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    feats = load_features(out, tuple(Path(p) for p in args.extra_features))
    vae_fields = feats.get("vae_cfg", {})  # (features of older runs: the default VAE)
    cfg = run_config(out, VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in vae_fields.items()}))
    cfg = replace(cfg, **{k: v for k, v in (("context_noise", args.context_noise), ("context_drop", args.context_drop))
                          if v is not None})  # training-only fields: serving never reads them
    resume = out / "dit.pt"
    state = torch.load(resume) if args.resume and resume.exists() else None
    ahead = args.content_lookahead
    if ahead is None:  # a resumed run keeps the lookahead it was trained with
        ahead = state.get("content_lookahead", 0) if state is not None else 0
    cfg = replace(cfg, content_lookahead=ahead)
    model = VCModel(cfg)
    params = list(model.speaker.parameters()) + list(model.dit.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    first, rewarm = 0, 0
    if state is not None:
        # Continue the same schedule (lr by step of --steps) from the saved step; fresh data order. A save
        # without optimizer moments (older runs) gets a short re-warm-up to the scheduled lr instead.
        model.speaker.load_state_dict(state["speaker"])
        model.dit.load_state_dict(state["dit"])
        first = state["step"] + 1
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        else:
            rewarm = 50
        torch.manual_seed(args.seed + first)
        rng = random.Random(args.seed + first)
        gen = torch.Generator().manual_seed(args.seed + first)
    elif args.init:  # fine-tune a shipped checkpoint's speaker encoder and DiT on new features
        shipped = load_checkpoint(args.init).model
        model.speaker.load_state_dict(shipped.speaker.state_dict())
        model.dit.load_state_dict(shipped.dit.state_dict())
    print(json.dumps({"dit_params": sum(p.numel() for p in model.dit.parameters()),
                      "speaker_params": sum(p.numel() for p in model.speaker.parameters()),
                      "first_step": first}), flush=True)
    batches = DitBatches(feats, cfg, rng, shifted_share=args.shifted_content)
    phoneme_loss = LatentContentLoss.from_file(args.latent_recognizer) if args.phoneme_loss > 0 else None
    start = time.time()
    step = first
    for step in range(first, args.steps):
        for group in opt.param_groups:
            ramp = min(1.0, (step - first + 1) / rewarm) if rewarm else 1.0
            if args.new_schedule:  # a fine-tuning phase: its own warm-up and cosine from the resumed step
                group["lr"] = lr_at(step - first, args.steps - first, args.lr, warmup=50)
            else:
                group["lr"] = ramp * lr_at(step, args.steps, args.lr)
        chunk = rng.choices((4, 3, 2), args.chunk_weights)[0]
        losses = dit_loss(model, batches(args.batch, args.frames), chunk, gen, cfg, args.split_above,
                          args.self_context, phoneme_loss, args.phoneme_loss,
                          self_context_temperature=args.self_context_temperature)
        optimizer_step(opt, losses["loss"], params)
        minutes = (time.time() - start) / 60
        if step % 25 == 0:
            log(out / "dit_log.jsonl", step=step, min=minutes, **{k: v.item() for k, v in losses.items()})
        if step % 200 == 0 or minutes > args.minutes:
            save_dit(resume, model, opt, step, cfg)
        if minutes > args.minutes:
            break
    save_dit(resume, model, opt, step, cfg)


def save_dit(path: Path, model: VCModel, opt: torch.optim.Optimizer | None, step: int, cfg: VCConfig) -> None:
    """The DiT stage's resumable state: speaker encoder, DiT, the step reached, its lookahead, optimizer moments.

    ``opt`` None (``unpack``): no moments are saved, and a resume re-warms its learning rate instead.
    """
    state = {"speaker": model.speaker.state_dict(), "dit": model.dit.state_dict(),
             "step": step, "content_lookahead": cfg.content_lookahead}
    if opt is not None:
        state["opt"] = opt.state_dict()
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # never a half-written dit.pt if the run is stopped mid-save


# -- stage 4: export --------------------------------------------------------------------------------------
def shipped_voices(data: str, num: int) -> dict[str, dict]:
    """Training voices to ship as references: distinct espeak-ng variants (female and male) across the pitch range."""
    table = {k: v for k, v in voices(data).items() if not v["held_out"]}
    female = [k for k in table if table[k]["variant"] in FEMALE_VARIANTS]
    male = [k for k in table if table[k]["variant"] in MALE_VARIANTS]
    chosen: dict[str, dict] = {}
    for group in (female, male):
        group = sorted(group, key=lambda k: table[k]["pitch"])
        step = max(1, len(group) // (num // 2))
        for k in group[::step]:
            if len(chosen) < num and table[k]["variant"] not in {c["variant"] for c in chosen.values()}:
                chosen[k] = table[k]
    return chosen


FEMALE_VARIANTS = {"f1", "f2", "f3", "f5", "Annie", "Andrea", "anika", "belinda", "linda", "steph", "aunty", "grandma"}
MALE_VARIANTS = {"m1", "m2", "m3", "m4", "m5", "m7", "m8", "Andy", "david", "john", "max", "paul", "rob", "Michael"}


@torch.no_grad()
def export(args) -> None:
    out = Path(args.out)
    vae = load_vae(Path(args.vae))
    saved = torch.load(out / "content.pt")
    state = torch.load(out / "dit.pt")
    model = VCModel(replace(run_config(out, vae.cfg), content_lookahead=state.get("content_lookahead", 0)))
    load_content(out, model)
    model.speaker.load_state_dict(state["speaker"])
    model.dit.load_state_dict(state["dit"])
    model.vae.load_state_dict(vae.state_dict())
    model.eval()
    table = voices(args.data)
    if args.add_voices:  # named voices of the corpus (e.g. the human-derived ones), described by its table
        chosen = {v: table[v] for v in args.add_voices.split(",")}
        if any(info.get("held_out") for info in chosen.values()):
            raise SystemExit("a held-out voice cannot be shipped")
    else:
        chosen = shipped_voices(args.data, args.num_voices)
    utts = load_utterances(args.data, ("train",))
    augmented = {row["id"]: row.get("augment") for row in load_manifest(args.data, ("train",))}
    refs = {}
    for voice_id, info in chosen.items():  # clean clips only: a reference should not teach reverb or noise
        clips = [u.audio for u in utts if u.voice_id == voice_id and not augmented.get(u.id)]
        audio = np.concatenate(clips[:3])[: int(8 * 16_000)]
        refs[voice_id] = {"audio": audio, "info": {k: v for k, v in info.items() if k != "held_out"}}
    # an older checkpoint's shipped voices are kept (reference log-mels need no retraining); read before writing,
    # as the older checkpoint may be the one being replaced
    kept = load_tensors(args.voices_from) if args.voices_from else None
    size = save_checkpoint(args.checkpoint, model, saved["symbols"], refs)
    if kept:
        size = merge_voices(args.checkpoint, *kept)
    shipped = sorted(read_metadata(args.checkpoint)["voices"])
    print(json.dumps({"checkpoint": args.checkpoint, "bytes": size, "voices": shipped}))


def merge_voices(path: str, old_tensors: dict, old_meta: dict) -> int:
    """Add another checkpoint's shipped voices (tensors ``voices.*``, their descriptions) to the one at ``path``."""
    tensors, meta = load_tensors(path)
    for voice_id, info in old_meta["voices"].items():
        if voice_id not in meta["voices"]:
            tensors[f"voices.{voice_id}"] = old_tensors[f"voices.{voice_id}"]
            meta["voices"][voice_id] = info
    return save_tensors(path, tensors, meta, float32_suffixes=FLOAT32_KEYS)


def swap_dit(args) -> None:
    """Put a DiT stage's speaker encoder and DiT into a copy of ``--init``'s checkpoint, at ``--checkpoint``.

    ``--out``'s dit.pt, with its content lookahead; the content recognizer, vocoder and shipped voices kept.
    For a DiT continued on the features of ``--init``'s own recognizer and VAE (e.g. with a new lookahead).
    """
    state = torch.load(Path(args.out) / "dit.pt", map_location="cpu")
    tensors, meta = load_tensors(args.init)
    for part in ("speaker", "dit"):
        if set(state[part]) != {k[len(part) + 1 :] for k in tensors if k.startswith(part + ".")}:
            raise SystemExit(f"{args.out}/dit.pt's {part} does not match {args.init}'s (another size?)")
        tensors.update({f"{part}.{name}": value for name, value in state[part].items()})
    meta["config"]["content_lookahead"] = state.get("content_lookahead", 0)
    meta["dit_step"] = state["step"]  # where a later stage resumes from (``unpack``)
    size = save_tensors(args.checkpoint, tensors, meta, float32_suffixes=FLOAT32_KEYS)
    print(json.dumps({"checkpoint": args.checkpoint, "bytes": size, "step": state["step"],
                      "content_lookahead": meta["config"]["content_lookahead"]}))


def unpack(args) -> None:
    """Write ``--init``'s recognizer and DiT as the run folder ``--out``'s content.pt and dit.pt.

    The way back from a shipped checkpoint to a run a DiT stage can resume (``dit --resume``), on a machine with
    none of the runs that made it: features come from the checkpoint's own VAE and recognizer (``features --vae
    <checkpoint> --out <the same folder>``), the step from the checkpoint (``swap-dit`` records it; 0 if it did
    not), the optimizer's moments start fresh.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shipped = load_checkpoint(args.init)
    model = shipped.model
    save_content(out, model, shipped.symbols)
    step = read_metadata(args.init).get("dit_step", 0)
    save_dit(out / "dit.pt", model, None, step, model.cfg)
    print(json.dumps({"out": str(out), "step": step, "content_lookahead": model.cfg.content_lookahead}))


@torch.no_grad()
def swap_vocoder(args) -> None:
    """Put a re-tuned decoder into the VC checkpoint in place (``--vae``: a run folder with vae_decoder.pt).

    The latents and everything else stay: only the decoder's weights and its config fields change (the
    synthesis window, the harmonic head). A harmonic decoder also needs each shipped voice's median pitch
    (``f0_hz``), which ``export`` measures; for an older checkpoint it is measured on espeak-ng renderings.
    """
    saved = torch.load(Path(args.vae) / "vae_decoder.pt", map_location="cpu")
    tensors, meta = load_tensors(args.checkpoint)
    for name, value in saved["state"].items():
        if not name.startswith(("enc", "latent_")):  # the encoder was frozen; the statistics are the model's
            tensors[f"vae.{name}"] = value
    meta["config"]["vae"] = {**meta["config"]["vae"], **saved["cfg"]}
    for info in meta["voices"].values():  # a harmonic vocoder moves the speaker's pitch to each voice's
        if "f0_hz" not in info:  # an older export: the voice's audio is not in the checkpoint, render some
            speech = np.concatenate([render({"speed_wpm": 170, **info}, text) for text in F0_TEXTS])
            info["f0_hz"] = round(median_pitch(speech), 1)
    size = save_tensors(args.checkpoint, tensors, meta, float32_suffixes=FLOAT32_KEYS)
    print(json.dumps({"checkpoint": args.checkpoint, "bytes": size, "vae": meta["config"]["vae"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["content", "features", "dit", "export", "vocoder", "swap-dit", "unpack"])
    ap.add_argument("--data", default="data/speech_vc")
    ap.add_argument("--out", default="runs/vc")
    ap.add_argument("--vae", default="checkpoints/tts_default.safetensors",
                    help="the TTS family's VAE: its shipped checkpoint, or a train_tts.py run folder (vae.pt)")
    ap.add_argument("--checkpoint", default="checkpoints/vc_default.safetensors")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=40, help="latent frames per training crop (40 ms each)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--num-voices", type=int, default=8)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default=None,
                    help="content, dit: start from this VC checkpoint's recognizer (content) or speaker encoder and "
                         "DiT (dit) instead of fresh weights")
    ap.add_argument("--speed-perturb", type=float, default=0.0,
                    help="content: share of training clips played 0.85-1.18x faster or slower (speaker variety)")
    ap.add_argument("--add-voices", default=None,
                    help="export: ship these corpus voice ids (comma list) instead of the espeak-ng selection")
    ap.add_argument("--voices-from", default=None,
                    help="export: also keep this older VC checkpoint's shipped voices")
    ap.add_argument("--new-schedule", action="store_true",
                    help="dit --resume: a new lr schedule (warm-up, cosine) from the resumed step to --steps")
    ap.add_argument("--split-above", type=float, default=2.0,
                    help="dit: intervals t - r above this learn the split-in-two target (default: never)")
    ap.add_argument("--extra-features", action="append", default=[],
                    help="dit: also train on this run folder's features (same VAE and recognizer; repeatable)")
    ap.add_argument("--self-context", type=float, default=0.0,
                    help="dit: share of rows whose past context is the model's own one-step sample (exposure bias)")
    ap.add_argument("--self-context-temperature", type=float, default=1.0,
                    help="dit: noise scale of the own samples used as past context (serving's is 0.3)")
    ap.add_argument("--context-noise", type=float, default=None, help="dit: max std of noise on the past context")
    ap.add_argument("--context-drop", type=float, default=None, help="dit: share of rows that see no past context")
    ap.add_argument("--phoneme-loss", type=float, default=0.0,
                    help="dit: weight of the latent phoneme recognizer's loss on one-step samples (0.5 was worse on "
                         "every held-out number: docs/models/vc.md, session 9)")
    ap.add_argument("--latent-recognizer", default="runs/latrec/latent_recognizer.pt",
                    help="dit: the recognizer for --phoneme-loss (scripts/train_latent_recognizer.py)")
    ap.add_argument("--part", choices=["latents", "content"], default="content", help="features: which part")
    ap.add_argument("--shard", type=int, default=0, help="features --part content: this shard of --num-shards")
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--content-lookahead", type=int, default=None,
                    help="dit: latents the content runs ahead of the latents made from it (default: the run's, or 0)")
    ap.add_argument("--shifted-content", type=float, default=0.5,
                    help="dit: share of crops whose content is the pitch-shifted copy's (less of the source's voice)")
    ap.add_argument("--chunk-weights", type=float, nargs=3, default=(0.7, 0.0, 0.3),
                    help="dit: how often training chunks are 4, 3 and 2 latents long")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.lr is None:
        args.lr = {"content": 2e-3, "dit": 5e-4}.get(args.stage, 1e-3)
    stages = {"content": train_content, "features": make_features, "dit": train_dit, "export": export,
              "vocoder": swap_vocoder, "swap-dit": swap_dit, "unpack": unpack}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
