"""Procedural scenes for the video family: a prompt grammar, a renderer with ground truth, and a detector.

A scene is one object (colour, shape, size, motion) on a plain background. Clips are rendered frame by
frame from a *scene timeline* (the prompt may switch at block boundaries); the object keeps its position
across a switch, so a switch is local in pixels (what KV-recache should reproduce). Positions wrap around
the frame (the object leaves on one side and enters on the other), so "moving left" holds forever.

The same module measures generated video: :func:`detect` reads colour, shape, size, motion and background
back from frames with plain image statistics (no learned model), so the bench and tests score prompt
adherence against the attributes a prompt asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 255),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (170, 60, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (10, 10, 10), "gray": (110, 110, 110), "navy": (15, 20, 80)}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.11, "large": 0.2}  # object radius as a fraction of the frame side
MOTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) in frame sides per second
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
SPEED_SIDES_PER_S = 0.35
ATTRIBUTES = ("colour", "shape", "size", "motion", "background")

# Phrasings, so the prompt encoder sees more than one template (unknown words must not break anything).
_MOTION_WORDS = {
    "left": ("moving left", "drifting to the left", "sliding left", "going left"),
    "right": ("moving right", "drifting to the right", "sliding right", "going right"),
    "up": ("moving up", "rising", "floating upward", "going up"),
    "down": ("moving down", "falling", "sinking downward", "going down"),
    "still": ("standing still", "not moving", "resting in place", "motionless"),
}
_TEMPLATES = (
    "a {size} {colour} {shape} {motion} on a {background} background",
    "{size} {colour} {shape}, {motion}, {background} backdrop",
    "on a {background} background a {size} {colour} {shape} is {motion}",
    "a {colour} {shape} {motion}, {size}, over {background}",
    "the {background} scene shows a {size} {colour} {shape} {motion}",
)


@dataclass(frozen=True)
class Scene:
    """The attributes a prompt describes (and the renderer draws)."""

    colour: str
    shape: str
    size: str
    motion: str
    background: str

    def prompt(self, rng: np.random.Generator | None = None) -> str:
        """A text prompt for this scene; random phrasing when ``rng`` is given, else the canonical one."""
        if rng is None:
            template, motion = _TEMPLATES[0], _MOTION_WORDS[self.motion][0]
        else:
            template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
            motion = _MOTION_WORDS[self.motion][rng.integers(len(_MOTION_WORDS[self.motion]))]
        return template.format(**{**asdict(self), "motion": motion})


def random_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random scene."""
    return Scene(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        size=str(rng.choice(list(SIZES))),
        motion=str(rng.choice(list(MOTIONS))),
        background=str(rng.choice(list(BACKGROUNDS))),
    )


def switch_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene after a prompt switch: one to three attributes change (the user edits the prompt)."""
    names = rng.choice(ATTRIBUTES, size=int(rng.integers(1, 4)), replace=False)
    pools = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES), "motion": list(MOTIONS),
             "background": list(BACKGROUNDS)}
    changes = {}
    for name in names:
        options = [v for v in pools[str(name)] if v != getattr(scene, str(name))]
        changes[str(name)] = str(rng.choice(options))
    return replace(scene, **changes)


def next_scene(scene: Scene, rng: np.random.Generator, p_switch: float, p_motion: float = 0.0) -> Scene | None:
    """The scene after a block boundary, or None when the prompt stays.

    A switch of 1-3 attributes with chance ``p_switch``, else a motion-only switch with chance ``p_motion``.
    """
    if rng.random() < p_switch:
        return switch_scene(scene, rng)
    if p_motion and rng.random() < p_motion:
        return replace(scene, motion=str(rng.choice([m for m in MOTIONS if m != scene.motion])))
    return None


# -- rendering ---------------------------------------------------------------------------------------
def _object_mask(shape: str, radius: float, cx: float, cy: float, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of a shape centred at (cx, cy), wrapping at the edges."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    dx = (coords[None, :] - cx + size / 2) % size - size / 2  # wrapped offsets
    dy = (coords[:, None] - cy + size / 2) % size - size / 2
    dx, dy = np.broadcast_arrays(dx, dy)
    if shape == "circle":
        dist = np.sqrt(dx * dx + dy * dy) - radius
    elif shape == "square":
        dist = np.maximum(np.abs(dx), np.abs(dy)) - radius * 0.85
    else:  # upward triangle: inside all three half-planes
        r = radius * 1.1
        edges = [dy - r * 0.5, (math.sqrt(3) * dx - dy) / 2 - r * 0.5, (-math.sqrt(3) * dx - dy) / 2 - r * 0.5]
        dist = np.maximum.reduce(edges)
    return np.clip(0.5 - dist, 0.0, 1.0)


def render_frame(scene: Scene, cx: float, cy: float, size: int) -> np.ndarray:
    """One frame (size, size, 3) uint8."""
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    fg = np.array(COLOURS[scene.colour], dtype=np.float32)
    mask = _object_mask(scene.shape, SIZES[scene.size] * size, cx, cy, size)[..., None]
    return (bg * (1 - mask) + fg * mask).round().astype(np.uint8)


@dataclass
class Clip:
    """A rendered clip: frames, the scene of every frame, and the prompt text of every frame."""

    frames: np.ndarray  # (N, size, size, 3) uint8
    scenes: list[Scene]  # per frame
    prompts: list[str]  # per frame


def render_clip(
    rng: np.random.Generator,
    num_frames: int,
    size: int = 64,
    fps: float = 16.0,
    switch_every_frames: int = 4,
    mean_switch_s: float = 3.0,
    mean_motion_switch_s: float | None = None,
) -> Clip:
    """A clip with prompt switches at multiples of ``switch_every_frames`` (the model's block).

    ``mean_motion_switch_s`` adds switches that change only the motion (mean seconds apart): with them the
    motion of the history often disagrees with the prompt, so a model must read the motion from the text
    (without them, copying the history's motion is right in ~97% of blocks and the text's motion is ignored).
    """
    scene = random_scene(rng)
    prompt = scene.prompt(rng)
    start = rng.uniform(0, size, 2)
    p_switch = switch_every_frames / (mean_switch_s * fps)  # chance of a switch at each block boundary
    p_motion = switch_every_frames / (mean_motion_switch_s * fps) if mean_motion_switch_s else 0.0
    scenes, prompts = [], []
    for i in range(num_frames):
        if i > 0 and i % switch_every_frames == 0:
            changed = next_scene(scene, rng, p_switch, p_motion)
            if changed is not None:
                scene = changed
                prompt = scene.prompt(rng)
        scenes.append(scene)
        prompts.append(prompt)
    return Clip(render_timeline(scenes, start, size, fps), scenes, prompts)


def render_timeline(scenes: list[Scene], start: np.ndarray, size: int = 64, fps: float = 16.0) -> np.ndarray:
    """Frames (N, size, size, 3) of one object following a scene per frame from position ``start`` (x, y)."""
    cx, cy = float(start[0]), float(start[1])
    step = SPEED_SIDES_PER_S * size / fps
    frames = []
    for scene in scenes:
        frames.append(render_frame(scene, cx, cy, size))
        dx, dy = MOTIONS[scene.motion]
        cx, cy = (cx + dx * step) % size, (cy + dy * step) % size
    return np.stack(frames)


# -- detection ---------------------------------------------------------------------------------------
def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dists = [float(np.sum((rgb - np.array(palette[n], dtype=np.float32)) ** 2)) for n in names]
    return names[int(np.argmin(dists))]


def detect_frame(frame: np.ndarray) -> dict[str, str | None]:
    """Background, colour, shape and size of one frame (None where no object is visible)."""
    img = frame.astype(np.float32)
    size = frame.shape[0]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_rgb = np.median(border, axis=0)
    fg = np.sqrt(((img - bg_rgb) ** 2).sum(-1)) > 60.0  # (H, W) object pixels
    out: dict[str, str | None] = {"background": _nearest(bg_rgb, BACKGROUNDS), "colour": None, "shape": None,
                                  "size": None}
    area = int(fg.sum())
    if area < 0.2 * (SIZES["small"] * size) ** 2:  # nothing object-sized
        return out
    out["colour"] = _nearest(np.median(img[fg], axis=0), COLOURS)
    # roll the object away from the edges (positions wrap) before measuring its bounding box
    rows, cols = fg.any(1), fg.any(0)
    fg = np.roll(fg, (size // 2 - _circular_centre(rows), size // 2 - _circular_centre(cols)), axis=(0, 1))
    ys, xs = np.nonzero(fg)
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = area / float(box_h * box_w)
    out["shape"] = "square" if fill > 0.9 else "circle" if fill > 0.66 else "triangle"
    extent = math.sqrt(box_h * box_w) / size
    out["size"] = "small" if extent < (SIZES["small"] + SIZES["large"]) else "large"
    return out


def object_centre(frame: np.ndarray) -> tuple[float, float] | None:
    """Sub-pixel centre (x, y) of the object in one frame (H, W, 3) on a wrapping canvas; None when absent.

    The circular mean of the object pixels' coordinates, so an object split across an edge is found whole
    (it is the renderer's (cx, cy) for all three shapes: each is symmetric about its centroid).
    """
    img = frame.astype(np.float32)
    size = frame.shape[0]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    fg = np.sqrt(((img - np.median(border, axis=0)) ** 2).sum(-1)) > 60.0
    if fg.sum() < 0.2 * (SIZES["small"] * size) ** 2:
        return None
    ys, xs = np.nonzero(fg)
    centre = []
    for coord in (xs, ys):
        ang = 2 * np.pi * (coord + 0.5) / size
        centre.append((math.atan2(np.sin(ang).mean(), np.cos(ang).mean()) % (2 * np.pi)) * size / (2 * np.pi))
    return centre[0], centre[1]


def _circular_centre(occupied: np.ndarray) -> int:
    """Centre index of the occupied run of a wrapped 1-D occupancy vector."""
    n = len(occupied)
    ang = 2 * np.pi * np.arange(n) / n
    c, s = (np.cos(ang) * occupied).sum(), (np.sin(ang) * occupied).sum()
    return int(round((math.atan2(s, c) % (2 * np.pi)) * n / (2 * np.pi))) % n


def detect_motion(prev: np.ndarray, frames: np.ndarray, max_shift: int = 4) -> str | None:
    """Motion direction over a run of frames: the wrapped shift that best maps each frame to the next."""
    stack = np.concatenate([prev[None], frames]).astype(np.float32).mean(-1)  # (N+1, H, W) grey
    total = np.zeros(2)
    for a, b in zip(stack[:-1], stack[1:], strict=True):
        if np.abs(a - b).mean() < 1e-3 and a.std() < 1.0:
            continue
        best, best_err = (0, 0), float("inf")
        for sy in range(-max_shift, max_shift + 1):
            for sx in range(-max_shift, max_shift + 1):
                err = float(np.abs(np.roll(a, (sy, sx), axis=(0, 1)) - b).mean())
                if err < best_err:
                    best, best_err = (sy, sx), err
        total += best
    speed = SPEED_SIDES_PER_S * prev.shape[0] / 16.0 * len(frames)
    if np.abs(total).max() < 0.4 * speed:
        return "still"
    if abs(total[1]) >= abs(total[0]):
        return "right" if total[1] > 0 else "left"
    return "down" if total[0] > 0 else "up"


def detect(frames: np.ndarray, prev: np.ndarray | None = None) -> dict[str, str | None]:
    """Attributes of a short run of frames (N, H, W, 3): per-frame majority, plus motion across the run."""
    per_frame = [detect_frame(f) for f in frames]
    out: dict[str, str | None] = {}
    for name in ("colour", "shape", "size", "background"):
        votes = [d[name] for d in per_frame if d[name] is not None]
        out[name] = max(set(votes), key=votes.count) if votes else None
    first, rest = (prev, frames) if prev is not None else (frames[0], frames[1:])
    out["motion"] = detect_motion(first, rest) if len(rest) else None
    return out


def adherence(detected: dict[str, str | None], scene: Scene) -> dict[str, float]:
    """1.0/0.0 per attribute (detected == asked) and their mean under "all"."""
    scores = {name: float(detected.get(name) == getattr(scene, name)) for name in ATTRIBUTES}
    scores["all"] = float(np.mean(list(scores.values())))
    return scores


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key means (3 decimals) of score dicts such as :func:`adherence`'s; {} for no rows."""
    return {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0]} if rows else {}
