"""Train the default TTS model on CPU: the waveform VAE first, then the AR transformer + flow head.

Reproducible (seeded; one or two threads). Stages, each bounded by steps and wall-clock minutes. The shipped
checkpoint (checkpoints/tts_default.safetensors) came from exactly these runs on a shared 2-core machine
(``make train-tts``; wall-clock minutes, the cores shared with other jobs, so steps per minute vary):

    python scripts/train_tts.py vae --out runs/tts --steps 2000 --minutes 26 --batch 8 --crop 24 --threads 2
    python scripts/train_tts.py latents --out runs/tts
    python scripts/train_tts.py ar --out runs/tts --steps 2000 --minutes 45 --batch 12 --head-repeats 2 --threads 1 &
    python scripts/train_tts.py vae --decoder-only --out runs/tts --steps 4000 --minutes 35 --batch 8 --crop 24 \
        --lr 1e-3 --threads 1
    python scripts/train_tts.py ar --resume --out runs/tts --steps 600 --minutes 20 --batch 12 --head-repeats 2 \
        --lr 5e-4 --threads 2
    # (the first shipped checkpoint, step 975, was exported here; the VAE has not changed since)
    python scripts/train_tts.py ar --resume --out runs/tts --steps 2000 --stop-at 1750 --minutes 75 --batch 12 \
        --head-repeats 2 --lr 5e-4 --threads 1 --self-context 0.5 --self-context-ramp 200 --keep-snapshots
    python scripts/train_tts.py ar --resume --out runs/tts --steps 1100 --minutes 40 --batch 12 \
        --head-repeats 2 --lr 4e-4 --threads 1 --self-context 0.5 --self-context-ramp 1 --keep-snapshots
    python scripts/train_tts.py export --out runs/tts --checkpoint runs/tts/tts_fixed_phase.safetensors
    # the shipped vocoder (issue 15; docs/models/tts.md): a pitch head alone, then the harmonic decoder with the
    # content-preservation loss (VC_BASE: the espeak-only VC checkpoint, commit fd2deec's vc_default.safetensors)
    python scripts/train_tts.py vae --decoder-only --init runs/tts/tts_fixed_phase.safetensors --harmonics 80 \
        --synth-window 320 --pitch-head 64 --pitch-only --out runs/tts_harm_cl --steps 500 --minutes 5 --batch 8 \
        --crop 24 --lr 2e-3 --threads 1
    python scripts/train_tts.py vae --decoder-only --resume-decoder --drive teacher --out runs/tts_harm_cl \
        --steps 800 --minutes 17 --batch 8 --crop 24 --lr 5e-4 --threads 1 --content-loss 0.5 \
        --content-loss-from VC_BASE
    python scripts/train_tts.py vae --decoder-only --resume-decoder --drive teacher --out runs/tts_harm_cl \
        --steps 500 --minutes 13 --batch 8 --crop 24 --lr 3e-4 --threads 1 --seed 1 --content-loss 0.5 \
        --content-loss-from VC_BASE
    python scripts/train_tts.py vae --decoder-only --resume-decoder --drive teacher --out runs/tts_harm_cl \
        --steps 700 --minutes 10 --batch 8 --crop 24 --lr 2e-4 --threads 1 --seed 2 --content-loss 0.5 \
        --content-loss-from VC_BASE
    python scripts/train_tts.py export-vae --init runs/tts/tts_fixed_phase.safetensors --out runs/tts_harm_cl \
        --checkpoint runs/tts_harm_cl/tts_harmonic.safetensors
    # session 11: the VC family's human-corpus VAE (VC_CKPT: checkpoints/vc_default.safetensors) with a pitch head,
    # the corpus encoded with it, the AR model above continued on those latents
    python scripts/train_tts.py vae --decoder-only --init VC_CKPT --synth-window 320 --pitch-head 64 --pitch-only \
        --out runs/ttsv --steps 500 --minutes 5 --batch 8 --crop 24 --lr 2e-3 --threads 1
    mv runs/ttsv/vae_decoder.pt runs/ttsv/vae.pt
    python scripts/train_tts.py latents --out runs/ttsv --threads 2
    python scripts/train_tts.py ar --init runs/tts_harm_cl/tts_harmonic.safetensors --out runs/ttsv --steps 600 \
        --minutes 25 --batch 12 --head-repeats 2 --lr 5e-4 --threads 2
    python scripts/train_tts.py ar --resume --out runs/ttsv --steps 3000 --stop-at STOP --minutes 60 --batch 12 \
        --head-repeats 2 --lr 4e-4 --threads 1 --self-context 0.5 --self-context-ramp 200 --keep-snapshots
    python scripts/train_tts.py export --out runs/ttsv --checkpoint checkpoints/tts_default.safetensors
    # its sampling settings (session 9: chosen with the human-hearing judge; weights unchanged)
    python scripts/train_tts.py sampling --checkpoint checkpoints/tts_default.safetensors --temperature 0.3 \
        --cfg-scale 1.25

The fixed-phase decoder spoke nearly unvoiced (YIN voiced frames ~0.06 of the espeak voices' ~0.65, already in
its round trip of the reference): the last five stages give it the VC vocoder's harmonic-plus-noise head,
driven by a pitch head (``--pitch-head``: per-frame log f0 and voicing from the decoder trunk, taught by the
YIN tracker) because a TTS has no speaker to track. ``--drive teacher`` trains the oscillators on the
tracker's pitch of the crop while the head learns it; serving drives them with the head's pitch. (``--drive
predicted``, training on the head's own pitch as served, was tried beside it for the same 17 minutes and
learnt to mute the harmonics: round-trip voiced ratio 0.06 vs 0.66 with teacher driving, reference 0.71.)
``--content-loss`` adds a content-preservation term: a frozen phoneme recognizer (a VC checkpoint's mel front end
and content encoder, ``--content-loss-from``) hears the decoded crop and the real one, and the KL between its
phoneme posteriors is penalised (models/vc/content_loss.py). Without it the harmonic decoder's round trip of
espeak speech lost phonemes (PER 0.405 -> 0.455 by the re-trained VC recognizer); with it at weight 0.5 it
keeps them (0.407) and the decoder shipped (docs/models/tts.md, session 8). ``export-vae`` writes --init's
checkpoint with the fine-tuned decoder in place of its VAE (the encoder is frozen throughout, so the AR model
needs no retraining).

That VAE's round trip still lost the words of held-out human speech (its encoder saw espeak-ng only); the VC
family's VAE, re-trained whole on the human-derived corpus, keeps them. The session-11 stages move the TTS onto
it: a pitch head on its harmonic decoder (``--pitch-only``: nothing else of it changes), new latents, and the AR
model continued from the previous one (``ar --init``: the text alignment carries over, only the latent
mapping is new), 600 teacher-forced steps, then scheduled sampling; the snapshot was chosen on the development
set (docs/models/tts.md, session 11).

The last two ``ar`` stages add scheduled sampling (``--self-context``): half the context latents are the
model's own samples. Without it the ~975-step model spoke clearly under teacher forcing (phoneme error 0.44)
and unintelligibly when free running (0.82). A stronger variant tried in between (``--self-context 0.8
--self-passes 2``, 250 steps from step 1750) made teacher forcing worse (0.52) without helping free running,
and was discarded (the second stage resumes from the step-1750 snapshot).

``vae`` writes runs/tts/vae.pt; ``latents`` encodes the training corpus with it (normalised latents, per
utterance, plus per-voice reference-encoder inputs); ``ar`` trains the AR transformer and flow head on those
latents (guided-attention loss for alignment, noisy context against exposure bias); ``vae --decoder-only``
fine-tunes the decoder on the frozen encoder (so it can run beside ``ar``); ``export`` writes the one
safetensors checkpoint (VAE, AR, head, voice table, phoneme vocabulary) the server loads. With a GPU,
``--device cuda`` runs the same stages faster.

History that a re-run will not repeat exactly: the shipped VAE *encoder* was trained (first stage, ~480
steps) with an earlier decoder head that also predicted phase and a per-example spectral-convergence loss;
``load_vae`` keeps that head's magnitude half. The current code trains the fixed-phase head from the start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_log import log, lr_at, optimizer_step  # noqa: E402

from evaluation.speech_corpus import load_utterances  # noqa: E402
from models.audio.pitch_track import decoder_pitch, track_signal  # noqa: E402
from models.audio.vae import VAEConfig, WaveformVAE, predicted_f0  # noqa: E402
from models.audio.vae_training import (  # noqa: E402
    kl_loss,
    load_checkpoint_vae,
    magnitude_loss,
    pitch_loss,
    reconstruction_loss,
)
from models.flow import flow_matching_loss, interpolate, sample_training_times  # noqa: E402
from models.speech_text import PhonemeVocab  # noqa: E402
from models.tts.checkpoint import save_checkpoint  # noqa: E402
from models.tts.model import TTSConfig, TTSModel, guided_attention_loss, speaker_stats  # noqa: E402


# -- stage 1: VAE --------------------------------------------------------------------------------------
def vae_batch(utts, batch: int, num_latents: int, hop: int, delay: int, rng: random.Random, left: int = 0):
    """Random crops (B, L) and their delayed targets (B, L + delay) (and with ``left`` > 0 (B, left + L)).

    The last: the crops with ``left`` samples before them, which the pitch tracker of a harmonic decoder reads.
    The decoder's output lags by ``delay`` samples, and its last frames reach ``delay`` samples past the crop.
    """
    length, front = num_latents * hop, max(delay, left)
    xs, ys, pre = [], [], []
    for _ in range(batch):
        audio = rng.choice(utts).audio
        padded = np.concatenate([np.zeros(front + length, np.float32), audio, np.zeros(2 * length, np.float32)])
        start = rng.randrange(0, max(1, len(audio) - length // 2)) + front  # index into padded
        xs.append(padded[start : start + length])
        ys.append(padded[start - delay : start + length])
        pre.append(padded[start - left : start + length])
    out = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    return (*out, torch.from_numpy(np.stack(pre))) if left else out


def train_vae(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    utts = load_utterances(args.data, ("train",), args.limit)
    extra = {}
    if args.decoder_only:  # fine-tune the decoder on the frozen encoder (runs beside AR training)
        if args.resume_decoder:  # continue a decoder fine-tune (e.g. the pitch head trained alone first)
            vae = load_vae(out, args.device, name="vae_decoder.pt").train()
        elif args.init:  # from a shipped checkpoint's VAE (the vocoders: a shorter delay, a harmonic head)
            keep = {} if args.harmonics is None else {"harmonics": args.harmonics}  # default: the checkpoint's head
            if args.pitch_head:
                keep["pitch_head"] = args.pitch_head
            vae = load_checkpoint_vae(args.init, synth_window=args.synth_window, **keep).to(args.device).train()
        else:
            vae = load_vae(out, args.device).train()
            saved = torch.load(out / "vae.pt")  # (a VC vocoder's run has no silence latent: no AR reads it)
            extra = {"silence": saved["silence"]} if "silence" in saved else {}
        params = [p for name, p in vae.named_parameters()
                  if not name.startswith("enc") and (not args.pitch_only or name.startswith("pitch_head"))]
    elif args.init:  # fine-tune a shipped VAE whole, encoder too (a new latent space: retrain what reads it)
        overrides = {"synth_window": args.synth_window} if args.synth_window else {}
        vae = load_checkpoint_vae(args.init, **overrides).to(args.device).train()
        params = list(vae.parameters())
    else:
        vae = WaveformVAE(VAEConfig()).to(args.device)
        params = list(vae.parameters())
    cfg = vae.cfg
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    content = None
    if args.content_loss:  # a frozen phoneme recognizer hears the decoded and the real crop (models/vc/content_loss.py)
        from models.vc.content_loss import ContentLoss

        if not args.content_loss_from:
            raise SystemExit("--content-loss needs --content-loss-from (a VC checkpoint with the recognizer)")
        content = ContentLoss.from_checkpoint(args.content_loss_from).to(args.device)
    name = "vae_decoder.pt" if args.decoder_only else "vae.pt"
    rng = random.Random(args.seed)
    start = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        left = 3 * cfg.frame_hop if cfg.harmonics else 0
        batch = vae_batch(utts, args.batch, args.crop, cfg.hop, vae.delay_samples, rng, left)
        batch = [t.to(args.device) for t in batch]
        x, y = batch[:2]
        with torch.set_grad_enabled(not args.decoder_only):
            mean, logvar = vae.encode(x)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        kl = kl_loss(mean, logvar)
        with torch.set_grad_enabled(not args.pitch_only):
            feats = vae.features(z)
        losses = {}
        teacher = None
        if cfg.pitch_head:  # the pitch head learns the tracker's pitch and voicing of the crop's frames
            f0_t, voicing_t = (t[:, left // cfg.frame_hop :] for t in track_signal(batch[2]))
            pitch = vae.predict_pitch(feats)
            losses |= pitch_loss(pitch, f0_t, voicing_t)
            if args.drive == "predicted":  # the oscillators follow the head's pitch, as they will when serving
                teacher = predicted_f0(pitch.detach())
        if args.pitch_only:
            loss = losses["f0"] + losses["voicing"]
        else:
            # a harmonic decoder is driven by the tracker's pitch of the crop (or its pitch head's), and its
            # fixed-phase head is only the noise part then: its magnitudes have no target of their own
            if cfg.harmonics:
                pred = vae.decode_features(feats, decoder_pitch(batch[2], left) if teacher is None else teacher)
            else:
                pred = vae.overlap_add(vae._frames(vae.head(feats).float()))
            losses |= reconstruction_loss(pred, y[:, : pred.shape[1]])
            losses["mag"] = pred.new_zeros(()) if cfg.harmonics else magnitude_loss(vae, z, y)
            loss = losses["stft"] + losses["mel"] + 2.0 * losses["mag"] + args.kl_weight * kl
            if content is not None:
                losses["content"] = content(pred, y[:, : pred.shape[1]])
                loss = loss + args.content_loss * losses["content"]
            if cfg.pitch_head:
                loss = loss + args.pitch_weight * (losses["f0"] + losses["voicing"])
        optimizer_step(opt, loss, vae.parameters())
        minutes = (time.time() - start) / 60
        if step % 50 == 0 or step == args.steps - 1:
            log(out / f"{name[:-3]}_log.jsonl", step=step, min=minutes, kl=kl.item(),
                **{k: v.item() for k, v in losses.items()})
        if step % 200 == 0 or minutes > args.minutes:
            torch.save({"cfg": cfg.__dict__, "state": vae.state_dict(), **extra}, out / name)
        if minutes > args.minutes:
            break
    torch.save({"cfg": cfg.__dict__, "state": vae.state_dict(), **extra}, out / name)


def load_vae(out: Path, device: str = "cpu", name: str = "vae.pt") -> WaveformVAE:
    """The VAE saved by the ``vae`` stage (with latent statistics once ``latents`` ran)."""
    saved = torch.load(out / name, map_location=device)
    cfg = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["cfg"].items()})
    vae = WaveformVAE(cfg).to(device)
    state = saved["state"]
    bins = cfg.n_fft // 2 + 1
    if state["head.weight"].shape[0] == 2 * bins:  # the first VAE run had a learned phase head: keep magnitudes
        state["head.weight"], state["head.bias"] = state["head.weight"][:bins], state["head.bias"][:bins]
    vae.load_state_dict(state)
    return vae.eval()


# -- stage 2: latents ------------------------------------------------------------------------------------
@torch.no_grad()
def encode_corpus(args) -> None:
    out = Path(args.out)
    vae = load_vae(out, args.device)
    utts = load_utterances(args.data, ("train",), args.limit)
    hop = vae.cfg.hop
    raw = []
    for u in utts:
        n = max(1, len(u.audio) // hop)
        audio = np.pad(u.audio, (0, max(0, n * hop - len(u.audio))))[: n * hop]
        raw.append(vae.encode(torch.from_numpy(audio)[None].to(args.device))[0][0].T.cpu())  # (N, D)
    allz = torch.cat(raw)
    vae.latent_mean.copy_(allz.mean(0))
    vae.latent_std.copy_(allz.std(0).clamp_min(1e-3))
    silence = vae.encode(torch.zeros(1, 8 * hop, device=args.device))[0][0, :, 4].cpu()  # steady-state silence
    saved = torch.load(out / "vae.pt")
    saved["state"] = vae.state_dict()
    saved["silence"] = silence
    torch.save(saved, out / "vae.pt")
    latents = [((z - vae.latent_mean.cpu()) / vae.latent_std.cpu()).half() for z in raw]
    stats = [speaker_stats(z.float()) for z in latents]
    torch.save({
        "ids": [u.id for u in utts], "voice_ids": [u.voice_id for u in utts], "phonemes": [u.phonemes for u in utts],
        "latents": latents, "stats": stats,
    }, out / "latents.pt")
    print(json.dumps({"utterances": len(utts), "frames": len(allz)}))


# -- stage 3: AR transformer + flow head -----------------------------------------------------------------
def ar_batch(data: dict, vocab: PhonemeVocab, by_voice: dict, batch: int, rng: random.Random):
    """A padded batch: speaker stats of *another* utterance of the same voice, phoneme ids, latents."""
    picks = [rng.randrange(len(data["ids"])) for _ in range(batch)]
    ids = [vocab.encode(data["phonemes"][i]) for i in picks]
    lats = [data["latents"][i].float() for i in picks]
    spk = torch.stack([data["stats"][rng.choice(by_voice[data["voice_ids"][i]])] for i in picks])
    num_ph = torch.tensor([len(x) for x in ids])
    num_lat = torch.tensor([len(z) for z in lats])
    ph = torch.zeros(batch, int(num_ph.max()), dtype=torch.long)
    z = torch.zeros(batch, int(num_lat.max()), lats[0].shape[1])
    for b in range(batch):
        ph[b, : num_ph[b]] = torch.tensor(ids[b])
        z[b, : num_lat[b]] = lats[b]
    return spk, ph, num_ph, z, num_lat


@torch.no_grad()
def self_context(
    model: TTSModel, spk, ph, num_ph, z: torch.Tensor, share: float, cfg: TTSConfig, passes: int = 1
) -> torch.Tensor:
    """Context latents (B, N, D) where a ``share`` of the positions hold the model's own samples.

    Parallel scheduled sampling against exposure bias: a teacher-forced pass samples every latent from the
    ground-truth context before it (as inference samples it, guided, with the inference flow steps); a
    random share of the positions then shows that sample instead of the truth, while the targets stay the
    truth. With ``passes`` > 1 the next pass samples from the previous pass's mixed context, so errors
    compound as they do in free-running synthesis. Free-running synthesis sees only its own samples; without
    this the model learned to lean on a clean context (teacher-forced phoneme error 0.44, free-running 0.82
    with the ~975-step model).
    """
    b, n_max, d = z.shape
    bos = 1 + ph.shape[1]
    context = z
    for _ in range(passes):
        h, _ = model(spk, ph, num_ph, context)
        h_lat = h[:, bos : bos + n_max].reshape(b * n_max, -1)  # (B * N, C): predicts latent i
        noise = torch.randn(b * n_max, d, device=z.device)
        pred = model.head.sample(h_lat, noise, cfg.flow_steps, cfg.cfg_scale).view(b, n_max, d)
        use = torch.rand(b, n_max, 1, device=z.device) < share
        context = torch.where(use, pred, z)
    return context


def train_ar(args) -> None:
    out = Path(args.out)
    data = torch.load(out / "latents.pt")
    from evaluation.speech_corpus import phoneme_inventory

    vocab = PhonemeVocab(phoneme_inventory(args.data))
    vae = load_vae(out)
    cfg = TTSConfig(vocab_size=len(vocab), latent_dim=vae.cfg.latent_dim, vae=vae.cfg)
    state, first = None, 0
    if args.resume:  # continue a run (optimizer state is not kept: the warm-up restarts it)
        saved = torch.load(out / "ar.pt")
        cfg, state, first = TTSConfig.from_dict(saved["cfg"]), saved["state"], saved["step"] + 1
    elif args.init:  # another TTS checkpoint's AR model on this run's latents (which may be another VAE's)
        from models.tts.checkpoint import load_checkpoint

        init = load_checkpoint(args.init)
        if list(init.phonemes) != list(vocab.symbols) or init.model.cfg.latent_dim != vae.cfg.latent_dim:
            raise SystemExit(f"{args.init}: its phoneme vocabulary or latent size is not this run's")
        # its sizes; sampling (scheduled sampling's guidance) at the training defaults, as in any run
        cfg = dataclasses.replace(init.model.cfg, vae=vae.cfg, cfg_scale=cfg.cfg_scale, temperature=cfg.temperature)
        state, first = init.model.state_dict(), 1  # as a resume from its step 0: the short warm-up
    model = TTSModel(cfg).to(args.device)
    if state is not None:
        model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    by_voice: dict[str, list[int]] = {}
    for i, v in enumerate(data["voice_ids"]):
        by_voice.setdefault(v, []).append(i)
    rng = random.Random(args.seed + first)
    start = time.time()
    for step in range(first, first + args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step - first, args.steps, args.lr, warmup=50 if first else 200)
        spk, ph, num_ph, z, num_lat = (t.to(args.device) for t in ar_batch(data, vocab, by_voice, args.batch, rng))
        b, n_max, d = z.shape
        bos = 1 + ph.shape[1]
        context = z
        share = args.self_context * min(1.0, (step - first + 1) / max(1, args.self_context_ramp))
        if share > 0:
            context = self_context(model, spk, ph, num_ph, z, share, cfg, args.self_passes)
        sigma = torch.rand(b, 1, 1, device=z.device) * cfg.context_noise
        h, attns = model(spk, ph, num_ph, context + sigma * torch.randn_like(z))
        h_lat = h[:, bos : bos + n_max]  # (B, N, C): predicts latent i
        valid = torch.arange(n_max, device=z.device)[None] < num_lat[:, None]  # (B, N)
        cond, target = h_lat[valid], z[valid]  # (M, C), (M, D)
        reps = args.head_repeats
        cond, target = cond.repeat(reps, 1), target.repeat(reps, 1)
        drop = torch.rand(len(cond), 1, device=z.device) < cfg.cond_drop
        cond = torch.where(drop, model.head.null.expand_as(cond), cond)
        t = sample_training_times(len(cond), z.device)
        noise = torch.randn_like(target)
        flow = flow_matching_loss(model.head(interpolate(target, noise, t), t, cond), target, noise)
        stop_logits = model.stop(h[:, bos : bos + n_max + 1])[..., 0]  # (B, N + 1)
        steps_idx = torch.arange(n_max + 1, device=z.device)[None]
        stop_target = (steps_idx == num_lat[:, None]).float()
        stop_valid = steps_idx <= num_lat[:, None]
        stop = F.binary_cross_entropy_with_logits(
            stop_logits[stop_valid], stop_target[stop_valid], pos_weight=torch.tensor(5.0, device=z.device)
        )
        guide = sum(guided_attention_loss(a, num_ph, num_lat, cfg.guide_sigma) for a in attns) / len(attns)
        loss = flow + 0.5 * stop + args.guide_weight * guide
        optimizer_step(opt, loss, model.parameters())
        minutes = (time.time() - start) / 60
        done = minutes > args.minutes or (args.stop_at is not None and step >= args.stop_at)
        if step % 25 == 0 or step == args.steps - 1:
            log(out / "ar_log.jsonl", step=step, min=minutes, flow=flow.item(), stop=stop.item(), guide=guide.item())
        if (step % 250 == 0 and step) or done:
            torch.save({"cfg": cfg.to_dict(), "state": model.state_dict(), "step": step}, out / "ar.pt")
            if args.keep_snapshots:
                torch.save({"cfg": cfg.to_dict(), "state": model.state_dict(), "step": step}, out / f"ar_step{step}.pt")
        if done:
            break
    torch.save({"cfg": cfg.to_dict(), "state": model.state_dict(), "step": step}, out / "ar.pt")


# -- stage 4: export -------------------------------------------------------------------------------------
def export(args) -> None:
    out = Path(args.out)
    from evaluation.speech_corpus import phoneme_inventory, voices

    saved = torch.load(out / "ar.pt")
    cfg = TTSConfig.from_dict(saved["cfg"])
    model = TTSModel(cfg)
    model.load_state_dict(saved["state"])
    vae = load_vae(out, name="vae_decoder.pt" if (out / "vae_decoder.pt").exists() else "vae.pt")
    silence = torch.load(out / "vae.pt")["silence"]
    data = torch.load(out / "latents.pt")
    table = voices(args.data)
    voice_stats: dict[str, torch.Tensor] = {}
    for v in sorted(set(data["voice_ids"])):
        rows = [data["stats"][i] for i, vid in enumerate(data["voice_ids"]) if vid == v]
        voice_stats[v] = torch.stack(rows).mean(0)
    keys = ("language", "espeak_voice", "pitch", "speed_wpm")
    voice_info = {v: {k: table[v][k] for k in keys} for v in voice_stats}
    symbols = PhonemeVocab(phoneme_inventory(args.data)).symbols
    size = save_checkpoint(args.checkpoint, model, vae, silence, symbols, voice_stats, voice_info)
    print(json.dumps({"checkpoint": args.checkpoint, "bytes": size}))


def export_vae(args) -> None:
    """Write --checkpoint: --init's TTS checkpoint with its VAE replaced by a decoder fine-tune's.

    The encoder is frozen in a decoder fine-tune, so the latents, the AR model and the voice table stay valid.
    """
    from models.tts.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.init)
    vae = load_vae(Path(args.out), name="vae_decoder.pt") if args.vae_decoder is None else None
    if vae is None:
        saved = torch.load(args.vae_decoder)
        cfg = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["cfg"].items()})
        vae = WaveformVAE(cfg)
        vae.load_state_dict(saved["state"])
    ckpt.model.cfg.vae = vae.cfg
    size = save_checkpoint(args.checkpoint, ckpt.model, vae.eval(), ckpt.silence, ckpt.phonemes, ckpt.voice_stats,
                           ckpt.voice_info)
    print(json.dumps({"checkpoint": args.checkpoint, "bytes": size, "vae": vae.cfg.__dict__}))


def set_sampling(args) -> None:
    """Rewrite --checkpoint's sampling settings in place (weights unchanged): --temperature, --cfg-scale.

    They are the generator's defaults for that checkpoint (``tts:temperature=...`` still overrides per server).
    """
    from models.flow import check_temperature
    from models.tts.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    if args.temperature is not None:
        ckpt.model.cfg.temperature = check_temperature(args.temperature)
    if args.cfg_scale is not None:
        ckpt.model.cfg.cfg_scale = args.cfg_scale
    size = save_checkpoint(args.checkpoint, ckpt.model, ckpt.vae, ckpt.silence, ckpt.phonemes, ckpt.voice_stats,
                           ckpt.voice_info)
    cfg = ckpt.model.cfg
    print(json.dumps({"checkpoint": args.checkpoint, "bytes": size, "temperature": cfg.temperature,
                      "cfg_scale": cfg.cfg_scale, "flow_steps": cfg.flow_steps}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["vae", "latents", "ar", "export", "export-vae", "sampling"])
    ap.add_argument("--data", default="data/speech")
    ap.add_argument("--out", default="runs/tts")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-3)
    ap.add_argument("--resume", action="store_true", help="ar: continue from runs/.../ar.pt")
    ap.add_argument("--decoder-only", action="store_true", help="vae: fine-tune the decoder, encoder frozen")
    ap.add_argument("--init", default=None,
                    help="vae: start from this safetensors checkpoint's VAE (the whole of it, or with --decoder-only "
                         "its decoder) instead of the run's or a fresh one; ar: from this TTS checkpoint's AR model "
                         "and flow head (the latents may be another VAE's: the text alignment carries over)")
    ap.add_argument("--synth-window", type=int, default=0,
                    help="vae --decoder-only --init: the decoder's synthesis window (0: n_fft; 320: 10 ms delay)")
    ap.add_argument("--harmonics", type=int, default=None,
                    help="vae --decoder-only --init: a harmonic-plus-noise head with this many harmonics "
                         "(default: the checkpoint's head)")
    ap.add_argument("--pitch-head", type=int, default=0,
                    help="vae --decoder-only --init: add a pitch predictor of this width (drives the harmonics)")
    ap.add_argument("--pitch-only", action="store_true", help="vae --decoder-only: train only the pitch head")
    ap.add_argument("--drive", choices=["teacher", "predicted"], default="teacher",
                    help="vae: the pitch a harmonic decoder with a pitch head is driven by while training")
    ap.add_argument("--pitch-weight", type=float, default=0.5, help="vae: weight of the pitch head's losses")
    ap.add_argument("--content-loss", type=float, default=0.0,
                    help="vae: weight of the content-preservation loss (KL of a frozen phoneme recognizer's "
                         "posteriors on the decoded vs the real crop; 0: off)")
    ap.add_argument("--content-loss-from", default=None,
                    help="vae --content-loss: the VC checkpoint whose recognizer (mel front end + content encoder) "
                         "judges the crops")
    ap.add_argument("--resume-decoder", action="store_true", help="vae --decoder-only: continue vae_decoder.pt")
    ap.add_argument("--vae-decoder", default=None,
                    help="export-vae: the vae_decoder.pt to put into --init's checkpoint (default: the run's)")
    ap.add_argument("--crop", type=int, default=24, help="VAE training crop in latents")
    ap.add_argument("--head-repeats", type=int, default=4, help="flow-head samples per latent and step")
    ap.add_argument("--guide-weight", type=float, default=2.0)
    ap.add_argument("--self-context", type=float, default=0.0,
                    help="ar: share of context latents replaced by the model's own samples (scheduled sampling)")
    ap.add_argument("--self-passes", type=int, default=1, help="ar: sampling passes that build that context")
    ap.add_argument("--self-context-ramp", type=int, default=200, help="ar: steps over which that share ramps up")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="ar: stop after this (absolute) step, keeping the learning-rate schedule of --steps")
    ap.add_argument("--keep-snapshots", action="store_true", help="ar: also keep ar_step<N>.pt every 250 steps")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N utterances (smoke tests)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default="checkpoints/tts_default.safetensors")
    ap.add_argument("--temperature", type=float, default=None, help="sampling: the starting-noise scale")
    ap.add_argument("--cfg-scale", type=float, default=None, help="sampling: classifier-free guidance")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    stages = {"vae": train_vae, "latents": encode_corpus, "ar": train_ar, "export": export, "export-vae": export_vae,
              "sampling": set_sampling}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
