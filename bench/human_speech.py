"""Speech quality on the held-out human-derived voices (flite awb and rms): the judges, then every model. JSON lines.

No training stage of any model sees awb or rms (scripts/make_human_speech.py). Make the material first:

    python scripts/make_human_speech.py --out data/speech_human_eval --num-train-sentences 60 \
        --num-test-sentences 40 --augment-copies 0
    python bench/human_speech.py --data data/speech_human_eval

Lines:
- ``human.judge``: the judges on the clean held-out speech itself, per voice: pocketsphinx with its default
  English model (open vocabulary; ``wer``) and our CTC phoneme recognizer (``per``). A judge that cannot
  read clean speech cannot judge a model: check these first.
- ``human.vae``: the waveform VAE round trip (encode, causal decode) of the TTS checkpoint and the VC
  checkpoint's vocoder, WER and PER next to the source's (target: WER within 1.2x).
- ``human.vc``: converting held-out speech to shipped voices: WER/PER of the converted speech next to the
  source's, pitch error vs the voice's median (semitones), and with resemblyzer (``pip install -e
  .[vc-bench]``) the speaker margin cos(out, target) - cos(out, source), the target's embedding from its
  own rendering (espeak-ng, flite or festival; ``wer_target_voice``: that rendering's WER, how well the judge
  reads the target voice itself). ``human.vc_zero_shot``: one held-out voice's clips uploaded as the reference,
  the other converted to it: margin cos(out, reference voice) - cos(out, source voice) (target: > 0).
- ``human.tts``: each shipped TTS voice speaking the held-out sentences, WER and voiced-frame ratio next
  to the espeak-ng voice it imitates saying the same text (target: voiced ratio 0.8-1.2x).

Slow on a CPU (minutes); run it under ``nice``. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tts import speak, voiced_ratio  # noqa: E402
from bench.tts import vocode as tts_vocode  # noqa: E402
from bench.vc import Judge, convert, wav_base64  # noqa: E402
from bench.vc import vocode as vc_vocode  # noqa: E402
from evaluation.phonemes import PhonemeRecognizer  # noqa: E402
from evaluation.speech_corpus import load_utterances, render  # noqa: E402
from evaluation.words import open_recognizer  # noqa: E402
from models.audio.pitch_track import median_pitch  # noqa: E402
from models.registry import parse_model_spec  # noqa: E402


def generator_options(family: str, options: str, checkpoint: str | None) -> dict:
    """``--model family:...``-style options for a generator, plus the checkpoint when one is given."""
    return parse_model_spec(f"{family}:{options}")[1] | ({"checkpoint": checkpoint} if checkpoint else {})


def emit(**fields) -> None:
    """One JSON line."""
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}), flush=True)


def semitones(a_hz: float, b_hz: float) -> float:
    """|a - b| in semitones (nan when either is unvoiced)."""
    return abs(12 * np.log2(a_hz / b_hz)) if a_hz > 0 and b_hz > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/speech_human_eval")
    ap.add_argument("--utterances", type=int, default=12, help="held-out utterances per voice")
    ap.add_argument("--first-utterance", type=int, default=0,
                    help="skip this many of each voice's held-out utterances (e.g. 12: sentences no earlier "
                         "decision was measured on)")
    ap.add_argument("--vc-voices", default="v057,v056,v039,v058", help="shipped VC voices to convert to")
    ap.add_argument("--tts-voices", type=int, default=4, help="shipped TTS voices to speak with")
    ap.add_argument("--vc-checkpoint", default=None)
    ap.add_argument("--vc-options", default="", help="more VC generator options, as in --model vc:... "
                    "(e.g. temperature=0.3)")
    ap.add_argument("--vc-steps", type=int, default=1, help="VC mean-flow steps per chunk (the session's `steps`)")
    ap.add_argument("--tts-checkpoint", default=None)
    ap.add_argument("--tts-options", default="", help="more TTS generator options, as in --model tts:... "
                    "(e.g. temperature=0.7,cfg_scale=3)")
    ap.add_argument("--judge-checkpoint", default=None,
                    help="the VC checkpoint whose phoneme recognizer judges PER (default: --vc-checkpoint's); fix it "
                         "to compare checkpoints under one judge")
    ap.add_argument("--skip", default="", help="comma list of judge,vae,vc,tts")
    args = ap.parse_args()
    torch.set_num_threads(1)
    skip = set(filter(None, args.skip.split(",")))

    by_voice, seen = defaultdict(list), defaultdict(int)
    for u in load_utterances(args.data, ("test_unseen_voice",)):
        seen[u.voice_id] += 1
        if seen[u.voice_id] > args.first_utterance and len(by_voice[u.voice_id]) < args.utterances:
            by_voice[u.voice_id].append(u)
    refs = defaultdict(list)
    for u in load_utterances(args.data, ("ref_unseen_voice",)):
        refs[u.voice_id].append(u)
    held_out = sorted(by_voice)
    words = open_recognizer()
    phonemes = PhonemeRecognizer(args.judge_checkpoint or args.vc_checkpoint)
    source_wer = {v: words.wer((u.text, u.audio) for u in by_voice[v]) for v in held_out}
    source_per = {v: phonemes.per((u.text, "en-us", u.audio) for u in by_voice[v]) for v in held_out}

    if "judge" not in skip:
        for v in held_out:
            emit(bench="human.judge", voice=v, utterances=len(by_voice[v]), wer=source_wer[v], per=source_per[v])

    from models.tts.generator import TTSGenerator
    from models.vc.generator import VCGenerator

    vc = VCGenerator(**generator_options("vc", args.vc_options, args.vc_checkpoint))
    tts = TTSGenerator(backend="torch", **generator_options("tts", args.tts_options, args.tts_checkpoint))

    if "vae" not in skip:
        for v in held_out:
            texts = [u.text for u in by_voice[v]]
            tts_trip = [tts_vocode(tts, u.audio) for u in by_voice[v]]
            vc_trip = [vc_vocode(vc, u.audio)[: len(u.audio)] for u in by_voice[v]]
            wer_tts = words.wer(zip(texts, tts_trip, strict=True))
            wer_vc = words.wer(zip(texts, vc_trip, strict=True))
            per_tts = phonemes.per((t, "en-us", a) for t, a in zip(texts, tts_trip, strict=True))
            per_vc = phonemes.per((t, "en-us", a) for t, a in zip(texts, vc_trip, strict=True))
            emit(bench="human.vae", voice=v, wer_source=source_wer[v], wer_tts_vae=wer_tts, wer_vc_vocoder=wer_vc,
                 ratio_tts_vae=wer_tts / max(1e-6, source_wer[v]), ratio_vc_vocoder=wer_vc / max(1e-6, source_wer[v]),
                 per_source=source_per[v], per_tts_vae=per_tts, per_vc_vocoder=per_vc)

    if "vc" not in skip:
        judge = _speaker_judge()
        for target in filter(None, args.vc_voices.split(",")):
            info = vc.voice_info.get(target, {})
            for v in held_out:
                outs = [convert(vc, u.audio, {"voice": target, "seed": i, "steps": args.vc_steps})[0]
                        for i, u in enumerate(by_voice[v])]
                fields = {"wer_source": source_wer[v], "per_source": source_per[v],
                          "wer_converted": words.wer((u.text, o) for u, o in zip(by_voice[v], outs, strict=True)),
                          "per_converted": phonemes.per((u.text, "en-us", o)
                                                        for u, o in zip(by_voice[v], outs, strict=True))}
                fields["wer_ratio"] = fields["wer_converted"] / max(1e-6, fields["wer_source"])
                f0 = info.get("f0_hz")
                if f0:
                    fields["pitch_error_semitones"] = float(np.nanmean([semitones(median_pitch(o, 0.0), f0)
                                                                        for o in outs]))
                if info.get("espeak_voice") or info.get("engine"):  # a voice a synthesiser can render
                    # the target voice itself saying the same sentences: how well the judge reads that voice
                    rendering = {"speed_wpm": 165, **info}  # shipped espeak-ng VC voices record no rate
                    spoken = [render(rendering, u.text) for u in by_voice[v]]
                    fields["wer_target_voice"] = words.wer(
                        (u.text, a) for u, a in zip(by_voice[v], spoken, strict=True))
                    if judge is not None:
                        target_emb = judge.embed(spoken[:3])
                        source_emb = judge.embed([u.audio for u in refs[v][:4]]
                                                 or [u.audio for u in by_voice[v][:3]])
                        fields["speaker_margin"] = statistics.mean(
                            float(judge.embed([o]) @ target_emb - judge.embed([o]) @ source_emb) for o in outs)
                emit(bench="human.vc", source_voice=v, target=target, utterances=len(outs), **fields)
        if judge is not None and len(held_out) >= 2:
            for src, ref in ((held_out[0], held_out[1]), (held_out[1], held_out[0])):
                reference = wav_base64(np.concatenate([u.audio for u in refs[ref][:4]]))
                outs = [convert(vc, u.audio, {"reference_audio": reference, "seed": i, "steps": args.vc_steps})[0]
                        for i, u in enumerate(by_voice[src])]
                ref_emb = judge.embed([u.audio for u in refs[ref][4:8]] or [u.audio for u in by_voice[ref][:3]])
                src_emb = judge.embed([u.audio for u in refs[src][4:8]] or [u.audio for u in by_voice[src][:3]])
                margin = statistics.mean(float(judge.embed([o]) @ ref_emb - judge.embed([o]) @ src_emb) for o in outs)
                emit(bench="human.vc_zero_shot", source_voice=src, reference_voice=ref, utterances=len(outs),
                     margin=margin, wer_source=source_wer[src],
                     wer_converted=words.wer((u.text, o) for u, o in zip(by_voice[src], outs, strict=True)))

    if "tts" not in skip:
        texts = [u.text for u in by_voice[held_out[0]]]
        for voice in sorted(tts.voice_stats)[: args.tts_voices]:
            spec = tts.voice_info[voice]
            ours = [speak(tts, t, {"voice": voice, "seed": i})[0] for i, t in enumerate(texts)]
            refs_espeak = [render(spec, t) for t in texts]
            wer_ours = words.wer(zip(texts, ours, strict=True))
            wer_ref = words.wer(zip(texts, refs_espeak, strict=True))
            voiced_ours = statistics.mean(voiced_ratio(a) for a in ours)
            voiced_ref = statistics.mean(voiced_ratio(a) for a in refs_espeak)
            emit(bench="human.tts", voice=voice, espeak_voice=spec.get("espeak_voice"), utterances=len(texts),
                 wer=wer_ours, wer_reference=wer_ref,
                 per=phonemes.per((t, "en-us", a) for t, a in zip(texts, ours, strict=True)),
                 per_reference=phonemes.per((t, "en-us", a) for t, a in zip(texts, refs_espeak, strict=True)),
                 voiced_ratio=voiced_ours, voiced_ratio_reference=voiced_ref,
                 voiced_ratio_vs_reference=voiced_ours / max(1e-6, voiced_ref))


def _speaker_judge() -> Judge | None:
    try:
        return Judge()
    except ImportError:
        print("resemblyzer not installed (pip install -e '.[vc-bench]'): no speaker margins", file=sys.stderr)
        return None


if __name__ == "__main__":
    main()
