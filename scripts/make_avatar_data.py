"""Build procedural two-party conversations with a teacher motion track for the avatar family.

Usage (reproducible; the defaults give ~2 h of conversation, a few minutes on one core):

    python scripts/make_avatar_data.py --speech-corpus data/speech --out data/avatar --seed 0

Speech comes from the shared multi-voice espeak-ng corpus (``scripts/make_speech_data.py``: manifest.jsonl
plus 16 kHz wavs). Each conversation has an agent track and a user track (different voices) with turn
taking, pauses (some long), user backchannels during agent turns, interruptions (the agent stops ~0.3 s
after the user barges in, as the served avatar does), and overlapping turn starts. Both tracks are
featurized exactly as when serving (``models/avatar/features.py``: log-mels + silero-vad), the
conversational state is derived from both tracks' VAD, and the teacher (``models/avatar/motion.py``)
animates the agent. Training conversations use the corpus's ``train`` split; held-out ones use
``test_unseen_voice`` (voices and sentences never seen in training).

Output: ``<out>/{train,heldout}.npz`` with per-conversation arrays concatenated along time and ``offsets``
(conversation k spans frames offsets[k]:offsets[k+1]); held-out files also carry both audio tracks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.speech_corpus import load_manifest  # noqa: E402
from models.audio.dsp import read_wav  # noqa: E402
from models.avatar.features import HOP, SAMPLE_RATE_HZ, TrackFeaturizer, conversation_states, track_features  # noqa: E402
from models.avatar.motion import teacher_motion  # noqa: E402


def load_pool(root: Path, split: str, limit: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Up to ``limit`` utterances of a corpus split, grouped by voice."""
    rows = load_manifest(root, (split,))
    rng.shuffle(rows)
    pool: dict[str, list[np.ndarray]] = {}
    for r in rows[:limit]:
        audio, rate = read_wav(str(root / r["wav"]))
        if rate != SAMPLE_RATE_HZ:
            raise ValueError(f"{r['wav']}: expected {SAMPLE_RATE_HZ} Hz, got {rate}")
        pool.setdefault(r["voice_id"], []).append(audio)
    return {v: u for v, u in pool.items() if len(u) >= 2}


def fade(x: np.ndarray, ms: float = 30.0) -> np.ndarray:
    """Short fade-out at the end (cut speech must not click)."""
    n = min(len(x), int(SAMPLE_RATE_HZ * ms / 1000))
    y = x.copy()
    if n:
        y[-n:] *= np.linspace(1, 0, n, dtype=np.float32)
    return y


def place(track: np.ndarray, audio: np.ndarray, start_s: float) -> float:
    """Add audio to a track at a time; returns the end time (s)."""
    i = int(start_s * SAMPLE_RATE_HZ)
    j = min(len(track), i + len(audio))
    if i < j:
        track[i:j] += audio[: j - i]
    return start_s + len(audio) / SAMPLE_RATE_HZ


def make_conversation(
    pool: dict[str, list[np.ndarray]], duration_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Agent and user tracks of one conversation (float32, 16 kHz)."""
    voice_ids = list(pool)
    agent_voice, user_voice = rng.choice(voice_ids, 2, replace=len(voice_ids) < 2)
    n = int(duration_s * SAMPLE_RATE_HZ)
    agent, user = np.zeros(n, np.float32), np.zeros(n, np.float32)
    user_gain = float(rng.uniform(0.4, 1.0))

    def utt(voice: str) -> np.ndarray:
        choices = pool[voice]
        return choices[int(rng.integers(len(choices)))]

    t = float(rng.uniform(0.2, 2.0))
    speaker = "agent" if rng.random() < 0.6 else "user"
    while t < duration_s - 1.0:
        if speaker == "agent":
            turn = np.concatenate(
                [np.concatenate([utt(agent_voice), np.zeros(int(rng.uniform(0.05, 0.4) * SAMPLE_RATE_HZ), np.float32)])
                 for _ in range(int(rng.integers(1, 4)))]
            )
            r = rng.random()
            if r < 0.2:  # the user interrupts; the agent stops ~0.3 s later
                cut = float(rng.uniform(0.25, 0.8)) * len(turn) / SAMPLE_RATE_HZ
                place(user, user_gain * utt(user_voice), t + cut)
                stop = cut + float(rng.uniform(0.2, 0.4))
                place(agent, fade(turn[: int(stop * SAMPLE_RATE_HZ)]), t)
                t = t + cut + len(utt(user_voice)) / SAMPLE_RATE_HZ + float(rng.uniform(0.2, 0.8))
                speaker = "agent" if rng.random() < 0.5 else "user"
                continue
            end = place(agent, turn, t)
            if r < 0.45:  # a short backchannel from the user in the middle of the agent's turn
                clip = fade(utt(user_voice)[: int(rng.uniform(0.25, 0.5) * SAMPLE_RATE_HZ)], 60)
                place(user, user_gain * clip, t + float(rng.uniform(0.3, 0.7)) * (end - t))
            t = end
        else:
            turn = np.concatenate([utt(user_voice) for _ in range(int(rng.integers(1, 4)))])
            t = place(user, user_gain * turn, t)
        gap = float(rng.uniform(0.2, 1.2)) if rng.random() < 0.85 else float(rng.uniform(2.0, 5.0))
        if rng.random() < 0.1:
            gap = -0.2  # the next speaker starts a little early (overlap)
        t += gap
        speaker = ("user" if speaker == "agent" else "agent") if rng.random() < 0.8 else speaker
    user += float(rng.uniform(0.0005, 0.004)) * rng.standard_normal(n).astype(np.float32)  # mic noise
    return np.clip(agent, -1, 1), np.clip(user, -1, 1)


def build_split(
    pool: dict[str, list[np.ndarray]], num: int, duration_s: float, rng: np.random.Generator,
    featurizer: TrackFeaturizer, keep_audio: bool,
) -> dict[str, np.ndarray]:
    """Featurize and animate ``num`` conversations; concatenated arrays plus offsets."""
    keys = ("agent", "user", "state", "motion", "agent_audio", "user_audio")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    offsets = [0]
    for k in range(num):
        agent, user = make_conversation(pool, duration_s, rng)
        fa, fu = track_features(featurizer, agent), track_features(featurizer, user)
        states = conversation_states(fa[:, -1], fu[:, -1])
        motion, _ = teacher_motion(fa, states, rng)
        for key, arr in (("agent", fa), ("user", fu), ("state", states), ("motion", motion)):
            parts[key].append(arr)
        if keep_audio:
            parts["agent_audio"].append(agent[: len(states) * HOP])
            parts["user_audio"].append(user[: len(states) * HOP])
        offsets.append(offsets[-1] + len(states))
        if (k + 1) % 20 == 0:
            print(f"  {k + 1}/{num} conversations", flush=True)
    out = {k: np.concatenate(v) for k, v in parts.items() if v}
    out["offsets"] = np.asarray(offsets, np.int64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speech-corpus", default="data/speech", help="folder made by scripts/make_speech_data.py")
    ap.add_argument("--out", default="data/avatar")
    ap.add_argument("--num-train", type=int, default=300, help="training conversations")
    ap.add_argument("--num-heldout", type=int, default=12, help="held-out conversations (unseen voices)")
    ap.add_argument("--duration-s", type=float, default=24.0, help="length of each conversation")
    ap.add_argument("--max-utterances", type=int, default=2000, help="corpus utterances loaded for training")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    root, out = Path(args.speech_corpus), Path(args.out)
    if not (root / "manifest.jsonl").exists():
        sys.exit(f"no speech corpus at {root}: run scripts/make_speech_data.py first")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    featurizer = TrackFeaturizer()
    started = time.time()
    for split, corpus_split, num, keep in (
        ("heldout", "test_unseen_voice", args.num_heldout, True),
        ("train", "train", args.num_train, False),
    ):
        pool = load_pool(root, corpus_split, args.max_utterances, rng)
        print(f"{split}: {sum(map(len, pool.values()))} utterances of {len(pool)} voices", flush=True)
        data = build_split(pool, num, args.duration_s, rng, featurizer, keep)
        np.savez_compressed(out / f"{split}.npz", **data)
        print(f"{split}: {len(data['state'])} frames in {time.time() - started:.0f} s", flush=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))


if __name__ == "__main__":
    main()
