"""Where a VC checkpoint loses the words: its DiT's latents under teacher forcing vs running on its own output.

A training voice's clean clips are converted to that same voice, offline, one chunk (``--chunk`` latents) at a
time, so the source's own latents are the right answer. JSON line ``vc.dit_diagnostics``, for each way of
making the latents: their mean squared error against the source's (normalised latent units) and the WER
(pocketsphinx) and PER (the ``--judge-checkpoint``'s recognizer) of what the checkpoint's vocoder makes of them,
driven by the source's own pitch:

- ``true``: the source's latents themselves (the vocoder's round trip: the ceiling);
- ``teacher``: one step, each chunk seeing the true past (what training shows the DiT);
- ``teacher8``: the same with 8 flow steps (is one-step sampling the limit?);
- ``own``: one step, each chunk seeing the DiT's own earlier chunks (what serving does);
- ``no_context``: one step, no past at all; ``wrong_content``: teacher-forced, the content features rolled
  by half the clip (does the DiT use the content?).

Also ``level_ratio``: the vocoder round trip's RMS over the clip's, for ``--level-clip`` (a shipped voice's
own speech: a vocoder that loses a voice's level is caught here).

    python bench/vc_dit_diagnostics.py --checkpoint CKPT --data data/speech_human --voice fl-slt-0

Slow on a CPU (a minute or two); one torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.vc import vocode  # noqa: E402
from evaluation.phonemes import PhonemeRecognizer  # noqa: E402
from evaluation.speech_corpus import load_utterances  # noqa: E402
from evaluation.words import open_recognizer  # noqa: E402
from models.audio.dsp import read_wav  # noqa: E402
from models.audio.pitch_track import decoder_pitch  # noqa: E402
from models.vc.checkpoint import load_checkpoint  # noqa: E402
from models.vc.generator import VCGenerator  # noqa: E402
from models.vc.reference_fit import reference_latents  # noqa: E402


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--judge-checkpoint", default=None, help="PER judge (default: --checkpoint's recognizer)")
    ap.add_argument("--data", default="data/speech_human")
    ap.add_argument("--voice", default="fl-slt-0", help="a training voice of --data that the checkpoint ships")
    ap.add_argument("--utterances", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=4, help="latents per chunk (4 = 160 ms)")
    ap.add_argument("--level-clip", default="tests/data/vc_target_v056.wav")
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_checkpoint(args.checkpoint)
    model, hop = loaded.model.eval(), loaded.model.vae.cfg.hop
    utts = [u for u in load_utterances(args.data, ("train",))
            if u.voice_id == args.voice and "-a" not in u.id][: args.utterances]  # clean copies only
    mel = loaded.voice_mels[args.voice][None].float()
    speaker, tokens, tmask = model.speaker(mel, torch.ones(mel.shape[:2], dtype=torch.bool))
    kv = model.dit.timbre_kv(tokens)
    ways = ("true", "teacher", "teacher8", "own", "no_context", "wrong_content")
    errors = {w: [] for w in ways}
    audio = {w: [] for w in ways}
    for u in utts:
        x = torch.from_numpy(np.pad(u.audio, (0, -len(u.audio) % hop)))[None]
        latents, content = reference_latents(model, x)  # (1, N, D), latent p's content (with any lookahead)
        n = latents.shape[1]
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))

        def sample(past, con=content, context=True, steps=1, z=noise):
            n = z.shape[1]
            for i in range(steps):  # mean flows: z_r = z_t - (t - r) u(z_t, r, t)
                t, r = 1 - i / steps, 1 - (i + 1) / steps
                u_ = model.dit.forward_offline(past, z, con, torch.full((1, n), r), torch.full((1, n), t), speaker,
                                               kv, tmask, args.chunk, torch.tensor([context]))
                z = z - (t - r) * u_
            return z

        own = torch.zeros_like(latents)
        for start in range(0, n, args.chunk):  # each chunk sees only the DiT's own earlier chunks
            own[:, start : start + args.chunk] = sample(own)[:, start : start + args.chunk]
        made = {"true": latents, "teacher": sample(latents), "teacher8": sample(latents, steps=8), "own": own,
                "no_context": sample(latents, context=False),
                "wrong_content": sample(latents, torch.roll(content, content.shape[1] // 2, dims=1))}
        f0 = decoder_pitch(x)
        for way, z in made.items():
            errors[way].append(float((z - latents).pow(2).mean()))
            wave = model.vae.decode(model.vae.denormalize(z.transpose(1, 2)), f0)[0, model.vae.delay_samples :]
            audio[way].append((u.text, wave.numpy()))
    words, phonemes = open_recognizer(), PhonemeRecognizer(args.judge_checkpoint or args.checkpoint)
    row = {"bench": "vc.dit_diagnostics", "checkpoint": args.checkpoint, "voice": args.voice,
           "utterances": len(utts), "chunk_latents": args.chunk,
           "wer_source": words.wer((u.text, u.audio) for u in utts),
           "per_source": phonemes.per((u.text, "en-us", u.audio) for u in utts)}
    for way in ways:
        row[f"mse_{way}"] = float(np.mean(errors[way]))
        row[f"wer_{way}"] = words.wer(audio[way])
        row[f"per_{way}"] = phonemes.per((t, "en-us", a) for t, a in audio[way])
    clip = read_wav(args.level_clip)[0]
    back = vocode(VCGenerator(checkpoint=args.checkpoint, max_sessions=1), clip)
    row["level_clip"] = args.level_clip
    row["level_ratio"] = float(np.sqrt(np.mean(back**2)) / np.sqrt(np.mean(clip**2)))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
