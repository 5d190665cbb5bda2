"""Diagnose a TTS checkpoint stage by stage on held-out sentences; prints JSON lines.

    python scripts/diagnose_tts.py --checkpoint checkpoints/tts_default.safetensors --num-eval 20 \
        --stages vae,tf,free --wav-dir runs2/diag

``--ar runs/tts/ar_step1250.pt`` swaps in the AR transformer + flow head of a training snapshot (the VAE,
voices and vocabulary stay the checkpoint's), so snapshots can be compared during training.

Stages (each decoded by the same VAE, each scored against the espeak-ng reference by the phoneme error rate
of the project's phoneme recognizer (``--per-checkpoint``, as in ``bench/tts.py``), by the
vocabulary-limited pocketsphinx WER (``--no-wer`` skips it) and by mel-cepstral distortion after DTW):

- ``vae``: the reference encoded and decoded (the ceiling any generator on these latents can reach);
- ``tf``: teacher forcing: the AR model sees the *ground-truth* latent context and the flow head samples each
  next latent (isolates the flow head + AR conditioning from exposure bias and alignment drift);
- ``free``: free-running synthesis of whole sentences (one segment each), for every combination of
  ``--flow-steps``, ``--cfg-scales`` and ``--temperatures`` (the scale of the flow's initial noise);
  also the alignment: head-0 attention of each layer from latents to phonemes (diagonal prior loss,
  monotonicity of the attended phoneme, where it ends) and where the stop head fires relative to the
  reference's length.

``--wav-dir`` writes every stage's audio and a ``items.jsonl`` (wav, text, language, phonemes) so another
recognizer (e.g. a phoneme recognizer) can score the same audio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.phonemes import load_recognizer  # noqa: E402
from evaluation.speech_corpus import load_manifest  # noqa: E402
from evaluation.words import VocabularyRecognizer, words_of  # noqa: E402
from models.audio.dsp import mel_cepstral_distortion, read_wav, write_wav  # noqa: E402
from models.speech_text import PhonemeVocab  # noqa: E402
from models.tts.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from models.tts.model import TTSModel, guided_attention_loss, speaker_stats  # noqa: E402


def emit(**fields) -> None:
    """One JSON line."""
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}), flush=True)


@torch.no_grad()
def encode(ckpt: Checkpoint, audio: np.ndarray) -> torch.Tensor:
    """Normalised latents (N, D) of a reference (padded to whole latents)."""
    hop = ckpt.vae.cfg.hop
    n = -(-len(audio) // hop)
    x = torch.from_numpy(np.pad(audio, (0, n * hop - len(audio))))[None]
    return ckpt.vae.normalize(ckpt.vae.encode(x)[0])[0].T


@torch.no_grad()
def decode(ckpt: Checkpoint, z: torch.Tensor) -> np.ndarray:
    """Audio of normalised latents (N, D), decoded after silence context, delay removed."""
    vae = ckpt.vae
    ctx = vae.context_latents
    raw = vae.denormalize(z.T[None])  # (1, D, N)
    silence = ckpt.silence[None, :, None].expand(1, -1, ctx)
    tail = ckpt.silence[None, :, None].expand(1, -1, 2)  # lets the overlap-add delay flush
    audio = vae.decode(torch.cat([silence, raw, tail], dim=2))[0, ctx * vae.cfg.hop :]
    d = vae.delay_samples
    return audio[d : d + z.shape[0] * vae.cfg.hop].clamp(-1, 1).numpy()


@torch.no_grad()
def teacher_forced(
    model: TTSModel, speaker, ids, z_gt, gen, steps, cfg_scale, temperature, context_noise: float = 0.0
) -> torch.Tensor:
    """Each latent sampled from the hidden state after the ground-truth context (optionally noised)."""
    ph = torch.tensor([ids])
    context = z_gt + context_noise * torch.randn(z_gt.shape, generator=gen)
    h, _ = model(speaker[None], ph, torch.tensor([len(ids)]), context[None])
    bos = 1 + len(ids)
    h_lat = h[0, bos : bos + len(z_gt)]
    noise = torch.randn(h_lat.shape[0], z_gt.shape[1], generator=gen) * temperature
    return model.head.sample(h_lat, noise, steps, cfg_scale)


@torch.no_grad()
def free_run(
    model: TTSModel, speaker, ids, gen, steps, cfg_scale, temperature, max_latents
) -> tuple[torch.Tensor, bool]:
    """Free-running latents (N, D) of one segment with a growing KV cache; and whether the stop head fired."""
    cfg = model.cfg
    x = model.prefix(speaker[None], torch.tensor([ids]))  # (1, T, C)
    t = x.shape[1]
    heads, hd = cfg.num_heads, cfg.dim // cfg.num_heads
    k = torch.zeros(cfg.num_layers, 1, 0, heads, hd)
    v = torch.zeros_like(k)
    mask = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    h, nk, nv = model.step_core(x, torch.arange(t)[None], k, v, mask)
    k, v = torch.cat([k, nk], 2), torch.cat([v, nv], 2)
    hidden, pos, out = h[:, -1], t, []
    for _ in range(max_latents):
        stop = torch.sigmoid(model.stop(hidden)[:, 0])
        if float(stop[0]) > 0.5:
            return torch.stack(out) if out else torch.zeros(0, cfg.latent_dim), True
        noise = torch.randn(1, cfg.latent_dim, generator=gen) * temperature
        z = model.head.sample(hidden, noise, steps, cfg_scale)
        out.append(z[0])
        mask = torch.ones(1, 1, 1, pos + 1, dtype=torch.bool)
        h, nk, nv = model.step_core(model.latent_in(z)[:, None], torch.tensor([[pos]]), k, v, mask)
        k, v = torch.cat([k, nk], 2), torch.cat([v, nv], 2)
        hidden, pos = h[:, -1], pos + 1
    return torch.stack(out), False


@torch.no_grad()
def alignment(model: TTSModel, speaker, ids, z) -> dict:
    """Head-0 latent->phoneme attention of each layer over a latent sequence (what the model saw)."""
    if len(z) < 2:
        return {}
    p, n = len(ids), len(z)
    _, attns = model(speaker[None], torch.tensor([ids]), torch.tensor([p]), z[None])
    out = {}
    for layer, a in enumerate(attns):
        guide = guided_attention_loss(a, torch.tensor([p]), torch.tensor([n]), model.cfg.guide_sigma).item()
        sub = a[0, 1 + p : 1 + p + n, 1 : 1 + p]  # (N, P)
        sub = sub / sub.sum(-1, keepdim=True).clamp_min(1e-6)
        peak = sub.argmax(-1).float()
        steps = peak[1:] - peak[:-1]
        out[layer] = {
            "guide": guide,
            "monotonic": float((steps >= -1).float().mean()),  # the attended phoneme never moves back > 1
            "max_jump": float(steps.abs().max()),
            "end": float(peak[-3:].mean() / max(1, p - 1)),  # where the attention is when the segment stops
            "sharp": float(sub.max(-1).values.mean()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/tts_default.safetensors")
    ap.add_argument("--data", default="data/speech")
    ap.add_argument("--split", default="test_seen_voice")
    ap.add_argument("--num-eval", type=int, default=20)
    ap.add_argument("--stages", default="vae,tf,free")
    ap.add_argument("--flow-steps", default="6")
    ap.add_argument("--cfg-scales", default="2.0")
    ap.add_argument("--temperatures", default="1.0")
    ap.add_argument("--tf-noise", default="0", help="tf: std of noise on the ground-truth context (list)")
    ap.add_argument("--wav-dir", default=None)
    ap.add_argument("--no-mcd", action="store_true")
    ap.add_argument("--no-wer", action="store_true")
    ap.add_argument("--ar", default=None, help="AR + flow-head weights from a training snapshot (ar.pt)")
    ap.add_argument("--per-checkpoint", default=None, help="phoneme recognizer (see bench/tts.py)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    if args.ar:
        ckpt.model.load_state_dict(torch.load(args.ar, map_location="cpu")["state"])
    model, vocab = ckpt.model, PhonemeVocab(ckpt.phonemes)
    per_recognizer = load_recognizer(args.per_checkpoint)
    root = Path(args.data)
    rows = load_manifest(root)
    refs_by_voice = {}
    for r in rows:
        if r["split"] == "ref_unseen_voice":
            refs_by_voice.setdefault(r["voice_id"], r["wav"])
    test = [r for r in rows if r["split"] == args.split][: args.num_eval]
    refs = [read_wav(str(root / r["wav"]))[0] for r in test]
    if args.split == "test_seen_voice":
        speakers = [ckpt.voice_stats[r["voice_id"]] for r in test]
    else:
        speakers = [speaker_stats(encode(ckpt, read_wav(str(root / refs_by_voice[r["voice_id"]]))[0])) for r in test]
    recognizer = VocabularyRecognizer({w for r in test for w in words_of(r["text"])})
    wav_dir = Path(args.wav_dir) if args.wav_dir else None

    def score(stage: str, audios: list[np.ndarray], **extra) -> None:
        wer = None if args.no_wer else recognizer.wer((r["text"], a) for r, a in zip(test, audios, strict=True))
        if per_recognizer is not None:
            extra["per"] = per_recognizer.per((r["text"], r["language"], a) for r, a in zip(test, audios, strict=True))
        mcd = None if args.no_mcd else statistics.mean(
            mel_cepstral_distortion(ref, a) for ref, a in zip(refs, audios, strict=True))
        dur = sum(len(a) for a in audios) / sum(len(a) for a in refs)
        emit(stage=stage, split=args.split, n=len(test), wer=wer, mcd_db=mcd, duration_ratio=dur, **extra)
        if wav_dir:
            d = wav_dir / args.split / stage
            d.mkdir(parents=True, exist_ok=True)
            with open(d / "items.jsonl", "w") as f:
                for r, a in zip(test, audios, strict=True):
                    write_wav(str(d / f"{r['id']}.wav"), a, 16_000)
                    f.write(json.dumps({"wav": f"{r['id']}.wav", "text": r["text"], "language": r["language"],
                                        "phonemes": r["phonemes"]}) + "\n")

    stages = args.stages.split(",")
    gts = [encode(ckpt, a) for a in refs]
    ids = [vocab.encode(r["phonemes"].split()) for r in test]
    score("reference", refs)
    if "chance" in stages:  # another held-out sentence's reference: the MCD/WER of wrong content
        score("chance_other_sentence", refs[1:] + refs[:1])
    if "vae" in stages:
        score("vae", [decode(ckpt, z) for z in gts])
    grid = list(itertools.product(
        [int(s) for s in args.flow_steps.split(",")], [float(c) for c in args.cfg_scales.split(",")],
        [float(t) for t in args.temperatures.split(",")],
    ))
    if "tf" in stages:
        for (steps, cfg_scale, temp), noise in itertools.product(grid, [float(x) for x in args.tf_noise.split(",")]):
            gen = torch.Generator().manual_seed(0)
            zs = [teacher_forced(model, s, i, z, gen, steps, cfg_scale, temp, noise)
                  for s, i, z in zip(speakers, ids, gts, strict=True)]
            err = statistics.mean(float((z - g).pow(2).mean()) for z, g in zip(zs, gts, strict=True))
            score(f"tf_s{steps}_c{cfg_scale}_t{temp}_n{noise}", [decode(ckpt, z) for z in zs], latent_mse=err)
        align = [alignment(model, s, i, z) for s, i, z in zip(speakers, ids, gts, strict=True)]
        emit(stage="tf_alignment", **_mean_alignment(align))
    if "free" in stages:
        for steps, cfg_scale, temp in grid:
            gen = torch.Generator().manual_seed(0)
            start = time.time()
            outs = [free_run(model, s, i, gen, steps, cfg_scale, temp, model.cfg.max_latents(len(i)))
                    for s, i in zip(speakers, ids, strict=True)]
            secs = time.time() - start
            zs = [z for z, _ in outs]
            stopped = statistics.mean(float(s) for _, s in outs)
            len_ratio = statistics.mean(len(z) / len(g) for z, g in zip(zs, gts, strict=True))
            align = [alignment(model, s, i, z) for s, i, z in zip(speakers, ids, zs, strict=True)]
            score(f"free_s{steps}_c{cfg_scale}_t{temp}", [decode(ckpt, z) for z in zs], stopped=stopped,
                  latent_len_ratio=len_ratio, seconds=secs, **_mean_alignment(align))


def _mean_alignment(aligns: list[dict]) -> dict:
    """Per-layer means of the alignment measures, flattened as ``l<layer>_<measure>``."""
    out = {}
    aligns = [a for a in aligns if a]
    for layer in aligns[0] if aligns else []:
        for key in aligns[0][layer]:
            out[f"l{layer}_{key}"] = statistics.mean(a[layer][key] for a in aligns)
    return out


if __name__ == "__main__":
    main()
