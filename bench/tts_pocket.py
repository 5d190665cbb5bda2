"""Benchmark Pocket TTS served by causalcast against the pocket-tts package itself, in one run; JSON lines.

Run through ``bench/tts.py --weights DIR`` (a folder from ``causalcast weights download pocket-tts``, with
the voice-cloning variant: the voice is a synthetic clip on both sides) or ``--weights random`` (the release's
real shapes, random weights, no download; the text table is sized to a tokenizer trained on the spot, which
changes no compute). Both sides get the same weights, text and voice.

CPU (``--device cpu``), per core count in ``--cores`` (process pinned to that many cores, that many torch
threads; the package runs its generation and decoding threads as it always does):

- ``tts_pocket.latency``: first audio (text in -> first PCM out) and RTF of whole utterances, ours and the
  package's, with their ratio;
- ``tts_pocket.sessions``: ours, N sessions stepped together on one core: compute per 80 ms frame / 80 ms
  (< 1 = real time), beside the package's one stream per core (1 / its RTF).

GPU (``--device cuda``): streams per GPU (batch x 80 ms / step time, CUDA graphs per bucket as served) and
first audio at each batch size. ``--tiny`` runs the same code at toy sizes (the suite's dry run).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.base import ControlEvent, StepInput
from models.tts.pocket.checkpoint import PocketTTS
from models.tts.pocket.config import ENGLISH, PocketConfig
from models.tts.pocket.generator import PocketGenerator, load_generator

TEXTS = [
    "The old farmer quietly painted a tiny wooden boat.",
    "Our neighbor bought twelve fresh lemons at the market this morning.",
    "A strong wind moved the heavy clouds across the city.",
]
LONG_TEXT = " ".join(TEXTS * 3)
FRAME_S = 0.08


def emit(**fields) -> None:
    """One JSON line."""
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}), flush=True)


def _clip(seconds: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(int(24_000 * seconds)) / 24_000
    return 0.3 * torch.sin(2 * np.pi * 160 * t) * (0.5 + torch.rand(t.shape, generator=gen))


def random_release(tiny: bool, release: str | None = None) -> tuple[dict, PocketTTS, Path]:
    """(package-layout config, our model with default-initialised weights, tokenizer path).

    ``release``: another of the package's configs by name (e.g. ``english_2m_2026-10``); default: English.
    """
    from models.tts.pocket.random_release import tiny_config, train_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="pocket-bench-"))
    tok = train_tokenizer(folder)
    import sentencepiece

    vocab = sentencepiece.SentencePieceProcessor(model_file=str(tok)).vocab_size()
    if tiny:
        config = tiny_config(tok, vocab)
    elif release:
        import yaml
        from pocket_tts.utils.config import CONFIGS_DIR

        config = yaml.safe_load((CONFIGS_DIR / f"{release}.yaml").read_text())
        for key in ("weights_path", "weights_path_without_voice_cloning"):
            config.pop(key, None)
        config["flow_lm"]["lookup_table"].update(n_bins=vocab, tokenizer="sentencepiece", tokenizer_path=str(tok))
    else:
        config = json.loads(json.dumps(ENGLISH))
        config["flow_lm"]["lookup_table"].update(n_bins=vocab, tokenizer="sentencepiece", tokenizer_path=str(tok))
    torch.manual_seed(0)
    model = PocketTTS(PocketConfig.from_dict(config)).eval()
    with torch.no_grad():
        model.flow_lm.bos_emb.normal_()
        model.flow_lm.speaker_proj_weight.normal_(0, 0.02)
    return config, model, tok


def folder_release(folder: Path) -> tuple[dict, PocketTTS, Path]:
    """A downloaded release: its config (config.json or the English one, tokenizer pointed at the folder's)."""
    from models.tts.pocket.published import CLONING_FILE, MODEL_FILE, tokenizer_path
    from models.weights import read_tensors

    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else ENGLISH
    config = json.loads(json.dumps(config))
    tok = tokenizer_path(folder)
    config["flow_lm"]["lookup_table"].update(tokenizer_path=str(tok),
                                             tokenizer="tokenizers" if tok.suffix == ".json" else "sentencepiece")
    model = PocketTTS(PocketConfig.from_dict(config)).eval()
    path = folder / CLONING_FILE if (folder / CLONING_FILE).exists() else folder / MODEL_FILE
    model.load_release(read_tensors(path), source=str(path))
    return config, model, tok


def package_model(config: dict, model: PocketTTS, eos_threshold: float):
    """The package's TTSModel with exactly our weights."""
    from pocket_tts.models.tts_model import TTSModel
    from pocket_tts.utils.config import Config

    cfg = Config(**json.loads(json.dumps(config)))
    theirs = TTSModel._from_pydantic_config_with_weights(cfg, cfg.default_temperature, 1, None, eos_threshold)
    theirs.load_state_dict(model.state_dict(), strict=True)
    return theirs.eval()


def _pin(cores: int) -> None:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    torch.set_num_threads(cores)


def _threads(ours: bool, cores: int) -> None:
    """Torch threads for the side about to run: ours 1, the package every core.

    Ours runs one thread per engine worker (more cores serve more sessions, through more workers); the
    package gets every core for its generation and decoding threads. Ours with two intra-op threads on this
    shared VM was 4-8x slower than with one (small ops wait on a descheduled thread).
    """
    torch.set_num_threads(1 if ours else cores)


def _ours_utterance(gen: PocketGenerator, voice: str, text: str, seed: int) -> tuple[float, float, float]:
    """(first audio s, total s, audio s) of one utterance alone."""
    _threads(True, 0)
    state = gen.open_session({"voice": voice, "seed": seed, "text": ""})
    start = time.perf_counter()
    gen.handle_event(state, ControlEvent("text", {"text": text, "final": True}))
    first, samples = None, 0
    for _ in range(5000):
        out = gen.step([state], [StepInput()], 1)[0]
        if out.idle:
            break
        first = first or time.perf_counter() - start
        samples += len(out.audio)
    total = time.perf_counter() - start
    gen.close_session(state)
    return first or total, total, samples / gen.cfg.sample_rate_hz


def _ours_streamed(gen: PocketGenerator, voice: str, words: list[str], seed: int) -> tuple[float, int]:
    """Words pushed one at a time, as from an LLM.

    Returns (s from the push that completed a chunk to its first audio, words pushed by then).
    """
    _threads(True, 0)
    state = gen.open_session({"voice": voice, "seed": seed, "text": ""})
    try:
        for i, word in enumerate(words):
            start = time.perf_counter()
            gen.handle_event(state, ControlEvent("text", {"text": word + " "}))
            if state.queue:
                for _ in range(100):
                    out = gen.step([state], [StepInput()], 1)[0]
                    if not out.idle and out.audio.any():
                        return time.perf_counter() - start, i + 1
        return float("nan"), len(words)
    finally:
        gen.close_session(state)


def _package_utterance(theirs, voice_state, text: str, seed: int, cores: int) -> tuple[float, float, float]:
    _threads(False, cores)
    torch.manual_seed(seed)
    start = time.perf_counter()
    first, samples = None, 0
    for chunk in theirs.generate_audio_stream(voice_state, text):
        first = first or time.perf_counter() - start
        samples += chunk.shape[-1]
    total = time.perf_counter() - start
    return first or total, total, samples / theirs.sample_rate


def bench_cpu(args) -> None:
    import logging

    logging.getLogger("pocket_tts").setLevel(logging.ERROR)
    config, model, tok = (random_release(args.tiny, args.release) if args.weights == "random"
                          else folder_release(Path(args.weights)))
    # The package stops on EOS like we do; random weights would stop at random frames, so both run the
    # chunk's full length budget (the same frames on both sides).
    eos = 1e9
    theirs = package_model(config, model, eos)
    gen = load_generator(model, tok, {}, max_sessions=max(args.sessions) + 1, eos_threshold=eos)
    clip = _clip()
    gen.voices["clip"] = model.voice_from_audio(clip)
    voice_state = theirs.get_state_for_audio_prompt(clip[None])
    package_streams = None
    for cores in args.cores:
        _pin(cores)
        _ours_utterance(gen, "clip", TEXTS[0], 0)  # warm-up, both
        _package_utterance(theirs, voice_state, TEXTS[0], 0, cores)
        ours, pkg = [], []
        for rep in range(args.reps):  # alternated, so drift in the shared machine's load hits both
            for i, text in enumerate(TEXTS):
                ours.append(_ours_utterance(gen, "clip", text, rep * 10 + i))
                pkg.append(_package_utterance(theirs, voice_state, text, rep * 10 + i, cores))
        streamed = [_ours_streamed(gen, "clip", f"{a} {b}".split(), 50 + i)
                    for i, (a, b) in enumerate(zip(TEXTS, TEXTS[1:] + TEXTS[:1], strict=True))]
        first_ours = statistics.median(r[0] for r in ours) * 1000
        first_pkg = statistics.median(r[0] for r in pkg) * 1000
        rtf_ours = sum(r[1] for r in ours) / sum(r[2] for r in ours)
        rtf_pkg = sum(r[1] for r in pkg) / sum(r[2] for r in pkg)
        emit(bench="tts_pocket.latency", weights=args.weights, release=args.release or "english", tiny=args.tiny,
             cores=cores, threads_ours=1, threads_package=cores, utterances=len(ours),
             first_audio_ms_ours=first_ours, first_audio_ms_package=first_pkg,
             first_audio_ratio=first_ours / first_pkg, rtf_ours=rtf_ours, rtf_package=rtf_pkg,
             rtf_ratio=rtf_ours / rtf_pkg, audio_s=sum(r[2] for r in ours),
             # two sentences pushed word by word: from the word that completes the first to its first audio
             first_audio_ms_streamed_ours=statistics.median(r[0] for r in streamed) * 1000,
             words_before_speaking=statistics.median(r[1] for r in streamed),
             words_per_reply=statistics.median(len(f"{a} {b}".split()) for a, b in zip(TEXTS, TEXTS[1:], strict=False)))
        package_streams = 1.0 / rtf_pkg if cores == 1 else None
    _pin(1)
    for n in args.sessions:
        states = [gen.open_session({"voice": "clip", "seed": i, "text": ""}) for i in range(n)]
        for s in states:
            gen.handle_event(s, ControlEvent("text", {"text": LONG_TEXT, "final": True}))
        gen.step(states, [StepInput()] * n, n)  # the prefill step
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            gen.step(states, [StepInput()] * n, n)
            times.append(time.perf_counter() - t)
        for s in states:
            gen.close_session(s)
        step_s = statistics.median(times)
        emit(bench="tts_pocket.sessions", weights=args.weights, release=args.release or "english", tiny=args.tiny,
             cores=1, sessions=n,
             step_ms_p50=step_s * 1000, step_ms_max=max(times) * 1000, load=step_s / FRAME_S,
             real_time=step_s < FRAME_S, package_streams_per_core=package_streams)


def bench_gpu(args) -> None:
    device = torch.device(args.device)
    _, model, tok = random_release(args.tiny) if args.weights == "random" else folder_release(Path(args.weights))
    batches = args.batches
    gen = load_generator(model, tok, {}, device=args.device, max_sessions=max(batches), max_batch_size=max(batches),
                         window=256, eos_threshold=1e9)
    gen.voices["clip"] = gen.model.voice_from_audio(_clip().to(device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for batch in batches:
        states = [gen.open_session({"voice": "clip", "seed": i, "text": ""}) for i in range(batch)]
        for s in states:
            gen.handle_event(s, ControlEvent("text", {"text": TEXTS[1], "final": True}))
        sync()
        t = time.perf_counter()
        gen.step(states, [StepInput()] * batch, batch)  # prefill + first frame + decode: first audio
        sync()
        first_ms = (time.perf_counter() - t) * 1000
        for _ in range(3):  # capture the bucket's graphs
            gen.step(states, [StepInput()] * batch, batch)
        sync()
        reps = 20 if device.type == "cuda" else 3
        t = time.perf_counter()
        for _ in range(reps):
            gen.step(states, [StepInput()] * batch, batch)
        sync()
        step_ms = (time.perf_counter() - t) / reps * 1000
        for s in states:
            gen.close_session(s)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        emit(bench="tts_pocket.gpu", device=name, tiny=args.tiny, graphs=gen.use_graphs, batch=batch,
             first_audio_ms=first_ms, step_ms=step_ms, realtime_streams=int(batch * FRAME_S * 1000 / step_ms))


def main(args) -> None:
    """Entry from bench/tts.py (``--weights``)."""
    if args.device == "cpu" and not args.gpu_bench:
        bench_cpu(args)
    else:
        bench_gpu(args)
