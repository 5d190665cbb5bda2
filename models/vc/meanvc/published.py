"""The MeanVC release: its files, a header-only check, and the loader that serves it as ``vc:weights=DIR``.

Files (``download_ckpt.py`` of github.com/ASLP-lab/MeanVC, Apache-2.0, and its README):

| file | what | read as |
|---|---|---|
| ``model_200ms.safetensors`` | the DiT + MRTE (200 ms chunks) | safetensors, our :class:`MeanVCDiT` |
| ``vocos.pt`` | Vocos vocoder, TorchScript | its tensors only, our :class:`Vocos` |
| ``fastu2++.pt`` | WeNet U2++ conformer ASR (content), TorchScript | run as shipped (``torch.jit``) |
| ``wavlm_large_finetune.pth`` | WavLM-Large + ECAPA (Google Drive) | ``torch.load``, our :class:`SpeakerModel` |

``meanvc_200ms.pt`` (the same DiT as TorchScript) is not needed. Optional ``voices/*.wav`` in the folder
are listed as target voices (the page's picker); without any, one synthetic harmonic tone stands in (a
session that names no voice and uploads no ``reference_audio`` gets it; the engine's warm-up needs one).

The check reads headers only: the safetensors header, and the pickled ``data.pkl`` of the torch archives
(:func:`models.weights.torch_archive_header`: names, shapes, dtypes, nothing run or loaded); sizes are
inferred from the tensors and every other tensor must agree with them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.errors import WeightsError
from models.weights import (
    HubFile,
    PublishedModel,
    header_shapes,
    load_mapped,
    read_tensors,
    read_torch_file,
    torch_archive_header,
)

DIT_FILE, VOCOS_FILE, ASR_FILE, SPEAKER_FILE = ("model_200ms.safetensors", "vocos.pt", "fastu2++.pt",
                                                "wavlm_large_finetune.pth")
SPEAKER_URL = "https://drive.google.com/file/d/1-aE1NfzpRCLxA4GUxX9ITI3F9LlbtEGP/view"
VOICES_DIR = "voices"
SYNTHETIC_VOICE = "synthetic-test-tone"  # listed when the folder has no voices: upload a reference instead
RELEASED_CHUNK_FRAMES = 20  # model_200ms: trained on 200 ms chunks


def _meta_shapes(module_fn) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in module_fn().state_dict().items()}


def _compare(path: Path, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = [f"{path}: missing key {k!r}" for k in expected if k not in found]
    problems += [f"{path}: {k!r} has shape {list(found[k])}, expected {list(s)}" for k, s in expected.items()
                 if k in found and tuple(found[k]) != tuple(s)]
    problems += [f"{path}: unexpected key {k!r}" for k in found if k not in expected]
    return problems


# -- the DiT ------------------------------------------------------------------------------------------------
def _dit_problems(folder: Path) -> list[str]:
    from models.vc.meanvc.dit import DiTConfig, MeanVCDiT

    path = folder / DIT_FILE
    try:
        found = {k: shape for k, (shape, _dtype) in header_shapes(path).items()}
        cfg = DiTConfig.from_shapes(found)
    except WeightsError as e:
        return [str(e)]
    except (KeyError, IndexError, ZeroDivisionError, TypeError) as e:
        return [f"{path}: missing key {e} (cannot size the DiT)"]
    return _compare(path, found, _meta_shapes(lambda: MeanVCDiT(cfg)))


# -- the vocoder ---------------------------------------------------------------------------------------------
def _vocos_name(key: str) -> str | None:
    """vocos.pt's names are ours; its analysis front end (``feature_extractor``) is not used to decode."""
    return None if key.startswith("feature_extractor.") else key


def _vocos_problems(folder: Path) -> list[str]:
    from models.vc.meanvc.vocos import Vocos, VocosConfig

    path = folder / VOCOS_FILE
    try:
        header = torch_archive_header(path)
    except WeightsError as e:
        return [str(e)]
    found = {k: s for k, (s, _d) in header.tensors.items() if _vocos_name(k) is not None}
    padding = header.attributes.get("head.istft.padding", "same")
    if padding != "same":
        return [f"{path}: 'head.istft.padding' is {padding!r}; only Vocos's 'same' padding is supported"]
    try:
        cfg = VocosConfig.from_shapes(found)
    except (KeyError, IndexError, ValueError) as e:
        return [f"{path}: missing key {e} (cannot size the vocoder)"]
    return _compare(path, found, _meta_shapes(lambda: Vocos(cfg)))


# -- the speaker model ------------------------------------------------------------------------------------
def _wavlm_config(shapes: dict[str, tuple[int, ...]]):
    from models.vc.meanvc.speaker import WavLMConfig

    p = "feature_extract.model."
    kernels, strides = WavLMConfig().conv_kernels, WavLMConfig().conv_strides
    layers = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(p) + r"encoder\.layers\.(\d+)\.", k))}
    dim = shapes[p + "post_extract_proj.weight"][0]
    v = shapes[p + "encoder.pos_conv.0.weight_v"]
    return WavLMConfig(
        dim=dim, layers=len(layers), heads=shapes[p + "encoder.layers.0.self_attn.grep_a"][1],
        ffn_dim=shapes[p + "encoder.layers.0.fc1.weight"][0], conv_dim=shapes[p + "layer_norm.weight"][0],
        conv_kernels=kernels, conv_strides=strides,
        conv_bias=p + "feature_extractor.conv_layers.0.0.bias" in shapes,
        layer_norm_convs=p + "feature_extractor.conv_layers.0.2.1.weight" in shapes,
        pos_kernel=v[2], pos_groups=dim // v[1],
        num_buckets=shapes[p + "encoder.layers.0.self_attn.relative_attention_bias.weight"][0])


def _speaker_sizes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    return {"wavlm": _wavlm_config(shapes), "channels": shapes["layer1.conv.weight"][0],
            "emb_dim": shapes["linear.weight"][0]}


def _speaker_problems(folder: Path) -> list[str]:
    from models.vc.meanvc.speaker import SpeakerModel, our_name, published_name

    path = folder / SPEAKER_FILE
    try:
        header = torch_archive_header(path)
    except WeightsError as e:
        return [str(e)]
    found = {k[len("model."):]: s for k, (s, _d) in header.tensors.items() if k.startswith("model.")}
    if not found:
        return [f"{path}: no 'model' state dict"]
    found = {k: s for k, s in found.items() if our_name(k) is not None}
    try:
        sizes = _speaker_sizes(found)
    except (KeyError, IndexError, ZeroDivisionError) as e:
        return [f"{path}: missing key {e} (cannot size the speaker model)"]
    expected = {published_name(k): s for k, s in _meta_shapes(lambda: SpeakerModel(**sizes)).items()}
    return _compare(path, found, expected)


def check(folder: Path) -> list[str]:
    """Problems of a MeanVC folder (file and key named), from headers alone; empty when it can be served."""
    problems = _dit_problems(folder) + _vocos_problems(folder) + _speaker_problems(folder)
    return problems + _asr_problems(folder / ASR_FILE)


def _asr_problems(path: Path) -> list[str]:
    """The ASR runs as shipped: a TorchScript zip whose directory lists its code and pickled module."""
    import zipfile

    if not path.exists():
        return [f"{path}: missing"]
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        return [f"{path}: not a readable TorchScript archive ({e})"]
    if not any("/code/" in n for n in names) or not any(n.endswith("data.pkl") for n in names):
        return [f"{path}: not a TorchScript archive (no code/ or data.pkl; WeNet's export has both)"]
    return []


# -- loading ------------------------------------------------------------------------------------------------
def _voices(folder: Path) -> dict[str, np.ndarray]:
    from models.audio.dsp import read_wav, resample, trim_silence

    voices = {}
    for path in sorted((folder / VOICES_DIR).glob("*.wav")):
        try:
            audio, rate = read_wav(str(path))
        except ValueError as e:
            raise WeightsError(f"{path}: not a usable WAV ({e})") from e
        speech = trim_silence(resample(audio, rate, 16_000), 16_000)
        peak = float(np.abs(speech).max()) if len(speech) else 0.0
        if peak < 1e-3:
            raise WeightsError(f"{path}: silent")
        voices[path.stem] = speech.astype(np.float32)  # at its own level, as MeanVC reads a reference
    if not voices:  # the engine warms up with default params: a session that names no voice needs one
        from models.vc.meanvc.random_release import speechlike

        voices[SYNTHETIC_VOICE] = speechlike(4.0, 0, 150.0)
    return voices


def _jit_load(path: Path, device: str) -> torch.jit.ScriptModule:
    """Load a TorchScript file (torch 2.13 warns that torch.jit is deprecated: MeanVC ships it so)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.load(str(path), map_location=device)
        except Exception as e:  # TorchScript raises its own error types for a bad archive
            raise WeightsError(f"{path}: cannot be read as TorchScript ({e})") from e


def load(folder: Path, device: str = "cpu", **options: Any):
    """Build the generator serving a checked MeanVC folder; WeightsError naming the file and keys at fault."""
    from models.vc.meanvc.dit import DiTConfig, MeanVCDiT
    from models.vc.meanvc.generator import MeanVCGenerator
    from models.vc.meanvc.speaker import SpeakerModel, our_name
    from models.vc.meanvc.vocos import Vocos, VocosConfig

    tensors = read_tensors(folder / DIT_FILE, torch.float32)
    dit = MeanVCDiT(DiTConfig.from_shapes({k: tuple(v.shape) for k, v in tensors.items()},
                                          chunk_frames=RELEASED_CHUNK_FRAMES))
    load_mapped(dit, tensors, lambda k: k, source=str(folder / DIT_FILE))

    state = {k: v.float() for k, v in _jit_load(folder / VOCOS_FILE, "cpu").state_dict().items()}
    kept = {k: tuple(v.shape) for k, v in state.items() if _vocos_name(k) is not None}
    vocos = Vocos(VocosConfig.from_shapes(kept))
    load_mapped(vocos, state, _vocos_name, source=str(folder / VOCOS_FILE))

    raw = read_torch_file(folder / SPEAKER_FILE)
    if not isinstance(raw, dict) or "model" not in raw:
        raise WeightsError(f"{folder / SPEAKER_FILE}: no 'model' state dict")
    raw = raw["model"]
    shapes = {k: tuple(v.shape) for k, v in raw.items() if our_name(k) is not None}
    speaker = SpeakerModel(**_speaker_sizes(shapes)).eval()
    load_mapped(speaker, {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}, our_name,
                source=str(folder / SPEAKER_FILE))

    asr = _jit_load(folder / ASR_FILE, device).eval()
    if not hasattr(asr, "forward_encoder_chunk"):
        raise WeightsError(f"{folder / ASR_FILE}: has no forward_encoder_chunk (not WeNet's export)")
    speaker_device = options.pop("speaker_device", device)
    speaker.to(speaker_device)
    return MeanVCGenerator(dit=dit, asr=asr, vocos=vocos, speaker=_OnDevice(speaker, speaker_device),
                           voices=_voices(folder), device=device, **options)


class _OnDevice(torch.nn.Module):
    """The speaker model on its own device (it may stay on the CPU while the rest runs on a GPU)."""

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        super().__init__()
        self.model, self.device = model, device

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Speaker vectors of clips."""
        return self.model(audio.to(self.device))


PUBLISHED_MODEL = PublishedModel(
    name="meanvc",
    family="vc",
    description="MeanVC (ASLP-lab): streaming zero-shot voice conversion, DiT 14M + WeNet ASR + Vocos + WavLM-Large",
    files=(
        HubFile("ASLP-lab/MeanVC", DIT_FILE, "Apache-2.0", approx_bytes=57_000_000),
        HubFile("ASLP-lab/MeanVC", VOCOS_FILE, "Apache-2.0", approx_bytes=54_000_000),
        HubFile("ASLP-lab/MeanVC", ASR_FILE, "Apache-2.0"),
        HubFile("manual", SPEAKER_FILE, "MIT (microsoft/UniSpeech speaker verification)", approx_bytes=1_260_000_000,
                manual_url=SPEAKER_URL),
    ),
    check=check,
    load=load,
    terms="MeanVC is Apache-2.0. Use it only with the consent of the people whose voices you convert or imitate.",
)
