"""The shipped video checkpoint: it loads, fits the size budget, and its output follows prompts and switches
(measured by the procedural-attribute detector, not by eye)."""

import numpy as np
import pytest

from models.base import StepInput
from models.video.checkpoint import DEFAULT_CHECKPOINT
from models.video.generator import VideoGenerator, default_checkpoint_exists
from models.video.scenes import Scene, detect

pytestmark = pytest.mark.skipif(not default_checkpoint_exists(), reason="shipped video checkpoint missing")

SCENES = [
    Scene("red", "circle", "large", "right", "black"),
    Scene("green", "square", "large", "left", "gray"),
    Scene("yellow", "circle", "large", "down", "navy"),
    Scene("white", "square", "large", "still", "black"),
]


@pytest.fixture(scope="module")
def generator(one_torch_thread):  # noqa: ARG001 - the fixture sets the threads for the module
    return VideoGenerator(max_sessions=len(SCENES))


def _detect_blocks(gen, states, num_blocks):
    s = gen.cfg.display_scale
    found = [[] for _ in states]
    prev = [None] * len(states)
    for _ in range(num_blocks):
        outs = gen.step(states, [StepInput()] * len(states), len(states))
        for i, o in enumerate(outs):
            frames = o.video[:, ::s, ::s]
            found[i].append(detect(frames, prev[i]))
            prev[i] = frames[-1]
    return found


def test_checkpoint_fits_the_budget_and_loads(generator):
    assert DEFAULT_CHECKPOINT.stat().st_size <= 20 * 2**20
    assert generator.spec.output_video.width == 128 and generator.spec.chunk_ms == 250.0


def test_output_follows_the_prompt_and_a_switch(generator):
    states = [generator.open_session({"prompt": s.prompt(), "seed": i}) for i, s in enumerate(SCENES)]
    before = _detect_blocks(generator, states, 6)
    switched = [Scene(s.colour, s.shape, s.size, s.motion, s.background) for s in SCENES[1:] + SCENES[:1]]
    for st, sc in zip(states, switched, strict=True):
        generator.apply_switch(st, sc.prompt(), "recache")
    after = _detect_blocks(generator, states, 6)
    for st in states:
        generator.close_session(st)

    def share(found, scenes, attr):
        hits = [d[attr] == getattr(sc, attr) for f, sc in zip(found, scenes, strict=True) for d in f[2:]]
        return float(np.mean(hits))

    for attr in ("colour", "background"):
        assert share(before, SCENES, attr) >= 0.75, attr
        assert share(after, switched, attr) >= 0.75, attr
    # the object moves the way the prompt says (chance is 0.2; the first release held it still: ~0.25)
    assert share(before, SCENES, "motion") >= 0.5
    assert share(after, switched, "motion") >= 0.5
