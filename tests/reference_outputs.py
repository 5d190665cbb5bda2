"""Saved reference outputs of every family: seeded tiny models, fixed inputs, the streaming path's output.

The invariant tests compare streaming with an offline pass of the same code, so a change that moves both
together passes them; these saved outputs catch it. Each family's function builds its tiny model from a seed
(the same builders as its tests), runs a fixed input through the generator contract chunk by chunk and returns
a few small arrays; tests/test_reference_outputs.py compares them with ``tests/data/reference_<family>.npz``.

When an output changes on purpose (a retrained default, a deliberate change of the computation), regenerate
the files and say why in the commit:

    PYTHONPATH=$PWD python -m tests.reference_outputs            # writes tests/data/reference_*.npz
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.base import ControlEvent, StepInput, apply_event, open_direct

DATA = Path(__file__).resolve().parent / "data"


def tts_outputs() -> dict[str, np.ndarray]:
    """Tiny seeded TTS: a sentence, then a second one after barge-in."""
    from models.tts.generator import TTSGenerator
    from tests.tts_helpers import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        gen = TTSGenerator(checkpoint=make_tiny_checkpoint(f"{tmp}/t.safetensors"), max_sessions=2)
    state = open_direct(gen, {"seed": 3})

    def chunk() -> np.ndarray:
        out = gen.step([state], [StepInput()], 1)[0]
        return np.zeros(gen.spec.output_chunk_samples, np.float32) if out.idle else out.audio

    apply_event(gen, state, ControlEvent("text", {"text": "Hello there, how are you today?", "final": True}))
    audio = [chunk() for _ in range(8)]
    apply_event(gen, state, ControlEvent("interrupt"))
    apply_event(gen, state, ControlEvent("text", {"text": "Seven green boats.", "final": True}))
    audio += [chunk() for _ in range(4)]
    return {"audio": np.concatenate(audio)}


def vc_outputs() -> dict[str, np.ndarray]:
    """Tiny seeded VC, both vocoder heads: a speech-like input converted to a shipped voice, then switched."""
    from models.vc.generator import VCGenerator
    from tests.vc_helpers import make_tiny_checkpoint, run_session, speechlike

    out = {}
    audio = speechlike(0.96, 11)
    for head in ("istft", "harmonic"):
        with tempfile.TemporaryDirectory() as tmp:
            path = make_tiny_checkpoint(f"{tmp}/t.safetensors", harmonic=head == "harmonic")
            gen = VCGenerator(checkpoint=path, max_sessions=2)
        out[head] = run_session(gen, audio, {"voice": "low", "seed": 0}, {3: ("set_reference", {"voice": "high"})})
    return out


def avatar_outputs() -> dict[str, np.ndarray]:
    """Tiny random-weight avatar (seeded): agent speech and a quiet mic for 30 frames; motion and a frame."""
    from models.avatar.features import HOP
    from tests.avatar_helpers import b64_pcm16, speech, tiny_avatar

    torch.manual_seed(0)
    gen = tiny_avatar()
    state = open_direct(gen, {"seed": 1})
    apply_event(gen, state, ControlEvent("say", {"audio": b64_pcm16(speech("agent")[:16_000])}))
    mic = 0.01 * np.sin(np.arange(HOP, dtype=np.float32))
    motion, frames, audio = [], [], []
    for _ in range(30):
        out = gen.step([state], [StepInput(mic, HOP)], 1)[0]
        motion.append(state.motion)
        frames.append(out.video[0])
        audio.append(out.audio)
    return {"motion": np.stack(motion), "last_frame": frames[-1], "audio": np.concatenate(audio)}


def video_outputs() -> dict[str, np.ndarray]:
    """Tiny random-weight video model (seeded): three blocks, a prompt switch, three more; one frame a block."""
    from models.video.generator import VideoGenerator

    torch.manual_seed(0)
    gen = VideoGenerator(config="tiny", max_sessions=1)
    state = open_direct(gen, {"seed": 1, "prompt": "a red circle moving left"})
    frames = []
    for block in range(6):
        if block == 3:
            apply_event(gen, state, ControlEvent("prompt", {"text": "a blue square"}))
        frames.append(gen.step([state], [StepInput()], 1)[0].video[0])
    return {"frames": np.stack(frames)}


FAMILIES: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "tts": tts_outputs,
    "vc": vc_outputs,
    "avatar": avatar_outputs,
    "video": video_outputs,
}


def path(family: str) -> Path:
    """Where a family's saved outputs live."""
    return DATA / f"reference_{family}.npz"


def main(families: list[str]) -> None:
    """Regenerate the saved outputs (one torch thread, as the tests run)."""
    torch.set_num_threads(1)
    for family in families or list(FAMILIES):
        outputs = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in FAMILIES[family]().items()}
        np.savez_compressed(path(family), **outputs)  # float16 keeps them small; compared to ~1e-3
        print(family, {k: (v.shape, str(v.dtype)) for k, v in outputs.items()}, path(family).stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
