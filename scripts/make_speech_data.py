"""Synthesize the multi-voice espeak-ng speech corpus shared by the TTS and voice-conversion families.

Usage (reproducible; defaults give ~4,900 utterances, ~4 h of 16 kHz audio, ~1.5 min on 2 cores):

    python scripts/make_speech_data.py --out data/speech --num-train-sentences 4800 --seed 0

Voices are espeak-ng *language/accent* × *variant* × pitch × speed. Training voices use variants that the
held-out voices never use, so a held-out voice is genuinely unseen (accent, timbre, pitch and rate).
Voice conversion needs many more voices than TTS for zero-shot conversion: ``--train-variants all`` takes
every variant the installed espeak-ng lists (~100) except the held-out ones, and ``--pitch-min/--pitch-max``
widen the pitch range, e.g. the VC corpus:

    python scripts/make_speech_data.py --out data/speech_vc --num-train-voices 240 --train-variants all \
        --pitch-min 10 --pitch-max 90 --seed 1
Sentences come from an offline random grammar (``scripts/speech_sentences.py``); held-out sentences never
occur in training.

Layout of ``--out``:

    manifest.jsonl   one JSON object per utterance:
                     id, split, voice_id, espeak_voice, language, pitch, speed_wpm, text,
                     phonemes (space-separated tokens of models.speech_text.phonemize), wav, num_samples,
                     sample_rate_hz
    voices.json      {voice_id: {espeak_voice, language, variant, pitch, speed_wpm, held_out}}
    phonemes.json    the sorted phoneme inventory seen in the corpus
    wav/<voice_id>/<id>.wav   16-bit PCM, 16 kHz, mono, silence-trimmed, peak-normalised to 0.7

Splits: ``train`` (training voices × training sentences), ``test_seen_voice`` (held-out sentences × training
voices), ``test_unseen_voice`` (held-out sentences × held-out voices), ``ref_unseen_voice`` (a few
training sentences per held-out voice, for reference/prompt audio of unseen voices).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speech_sentences import sentences  # noqa: E402

from evaluation.speech_corpus import render, write_corpus, write_utterance  # noqa: E402
from models.speech_text import LANGUAGES, normalize_text, phonemize  # noqa: E402

TRAIN_VARIANTS = (
    "m1 m2 m3 m4 m5 m7 f1 f2 f3 f5 klatt klatt2 klatt4 Andy Annie anika belinda boris david edward gustave "
    "iven john linda max michel norbert paul pedro"
).split()
HELD_OUT_VARIANTS = "f4 m6 klatt3 adam Alicia caleb Hugo Henrique".split()


def installed_variants() -> list[str]:
    """The installed espeak-ng variants (file names under ``!v/``), held-out and whispering ones excluded."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True).stdout
    names = [line.split()[4].removeprefix("!v/") for line in listing.splitlines()[1:] if len(line.split()) >= 5]
    held = {v.lower() for v in HELD_OUT_VARIANTS} | {"whisper", "whisperf"}  # whispering has no voice to convert to
    return sorted({n for n in names if n.lower() not in held})


def make_voices(
    num_train: int, rng: random.Random, train_variants: list[str] | None = None, pitch_range: tuple[int, int] = (25, 75)
) -> dict[str, dict]:
    """Training and held-out voice definitions."""
    train_variants = train_variants or list(TRAIN_VARIANTS)
    voices = {}
    for i in range(num_train + len(HELD_OUT_VARIANTS)):
        held_out = i >= num_train
        variant = HELD_OUT_VARIANTS[i - num_train] if held_out else train_variants[i % len(train_variants)]
        language = rng.choice(LANGUAGES)
        voices[f"{'h' if held_out else 'v'}{i:03d}"] = {
            "espeak_voice": f"{language}+{variant}",
            "language": language,
            "variant": variant,
            "pitch": rng.randint(*pitch_range),
            "speed_wpm": rng.randint(140, 185),
            "held_out": held_out,
        }
    return voices


def synthesize(job: tuple[dict, dict, str]) -> dict:
    """Render one utterance with the espeak-ng command and write its 16 kHz WAV."""
    utt, voice, out_dir = job
    return write_utterance(out_dir, utt, render(voice, utt["text"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/speech")
    ap.add_argument("--num-train-voices", type=int, default=40)
    ap.add_argument("--num-train-sentences", type=int, default=4800)
    ap.add_argument("--num-test-sentences", type=int, default=100)
    ap.add_argument("--num-refs-per-unseen-voice", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--train-variants", default="default", help="'default' (28 variants) or 'all' installed ones")
    ap.add_argument("--pitch-min", type=int, default=25)
    ap.add_argument("--pitch-max", type=int, default=75)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    variants = installed_variants() if args.train_variants == "all" else None
    voices = make_voices(args.num_train_voices, rng, variants, (args.pitch_min, args.pitch_max))
    train_ids = [v for v, d in voices.items() if not d["held_out"]]
    unseen_ids = [v for v, d in voices.items() if d["held_out"]]
    texts = sentences(args.num_train_sentences + args.num_test_sentences, args.seed)
    train_texts, test_texts = texts[: args.num_train_sentences], texts[args.num_train_sentences :]

    utts: list[dict] = []

    def add(split: str, voice_id: str, text: str) -> None:
        language = voices[voice_id]["language"]
        tokens = phonemize(normalize_text(text), language)
        utts.append({
            "id": f"{split}-{len(utts):05d}",
            "split": split,
            "voice_id": voice_id,
            "espeak_voice": voices[voice_id]["espeak_voice"],
            "language": language,
            "pitch": voices[voice_id]["pitch"],
            "speed_wpm": voices[voice_id]["speed_wpm"],
            "text": text,
            "phonemes": " ".join(tokens),
        })

    for i, text in enumerate(train_texts):
        add("train", train_ids[i % len(train_ids)], text)
    for i, text in enumerate(test_texts):
        add("test_seen_voice", train_ids[(7 * i + 3) % len(train_ids)], text)
        add("test_unseen_voice", unseen_ids[i % len(unseen_ids)], text)
    for j, voice_id in enumerate(unseen_ids):
        for k in range(args.num_refs_per_unseen_voice):
            add("ref_unseen_voice", voice_id, train_texts[(j * 97 + k * 13) % len(train_texts)])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(u, voices[u["voice_id"]], str(out)) for u in utts]
    with ProcessPoolExecutor(args.workers) as pool:
        done = list(pool.map(synthesize, jobs, chunksize=32))
    print(json.dumps(write_corpus(out, done, voices)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
