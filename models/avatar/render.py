"""Fast anti-aliased CPU renderer: motion vectors (models/avatar/motion.py) -> RGB frames of a 2D face.

The face is a stack of analytic shapes (ellipses, lip curves, brow arcs) drawn back to front. Each shape is
evaluated only inside its own screen bounding box, as an approximate signed distance in pixels, and
composited with coverage ``clip(0.5 - d, 0, 1)``: one pixel of smooth edge, i.e. anti-aliasing without
supersampling. Head pose is a similarity transform (roll, scale, translation) of the face plane plus a
parallax shift per shape for yaw and pitch (the nose moves more than the ears), which reads as 3D turning
at this size. Everything is numpy float32 on small crops, so a 256x256 frame costs a few milliseconds on
one core; :meth:`FaceRenderer.render_batch` draws many sessions' frames in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.avatar.motion import IDX, clamp


@dataclass(frozen=True)
class FaceStyle:
    """Colours of the default face (RGB 0..255)."""

    background_top: tuple[int, int, int] = (190, 214, 236)
    background_bottom: tuple[int, int, int] = (120, 150, 190)
    skin: tuple[int, int, int] = (241, 196, 160)
    skin_shade: tuple[int, int, int] = (214, 160, 128)
    hair: tuple[int, int, int] = (74, 48, 36)
    iris: tuple[int, int, int] = (70, 110, 150)
    lips: tuple[int, int, int] = (196, 96, 96)
    mouth: tuple[int, int, int] = (78, 24, 30)
    shirt: tuple[int, int, int] = (60, 96, 140)
    blush: tuple[int, int, int] = (236, 130, 130)


STYLES = {
    "default": FaceStyle(),
    "dark": FaceStyle(skin=(150, 100, 70), skin_shade=(120, 78, 56), hair=(28, 22, 20), iris=(60, 40, 28),
                      lips=(130, 66, 62), blush=(170, 90, 80), shirt=(150, 70, 60)),  # fmt: skip
    "light": FaceStyle(skin=(250, 218, 196), skin_shade=(226, 182, 158), hair=(212, 170, 90), iris=(80, 140, 90),
                       lips=(214, 120, 120), shirt=(90, 140, 90)),  # fmt: skip
}


def ellipse_sd(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse with radii (a, b) (negative inside)."""
    k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2) + 1e-6
    return k0 * (k0 - 1.0) / k1


class FaceRenderer:
    """Draws frames of the default face for motion vectors; stateless apart from precomputed layers."""

    def __init__(self, width: int = 256, height: int = 256, style: str | FaceStyle = "default") -> None:
        if width < 64 or height < 64:
            raise ValueError("the face needs at least 64x64 pixels")
        self.width, self.height = width, height
        self.style = STYLES[style] if isinstance(style, str) else style
        self.unit = min(width, height) / 256.0  # pixels per face unit at scale 1
        ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        top, bottom = (np.array(c, np.float32) for c in (self.style.background_top, self.style.background_bottom))
        self._background = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).copy()
        self._colors = {k: np.array(v, np.float32) for k, v in self.style.__dict__.items()}
        self._shoulders(self._background)  # the body does not move: drawn once into the background

    # -- public ----------------------------------------------------------------------------------------
    def render_batch(self, motions: np.ndarray) -> np.ndarray:
        """Frames (B, H, W, 3) uint8 for motions (B, MOTION_DIM)."""
        return np.stack([self.render(m) for m in np.asarray(motions, np.float32)])

    def render(self, motion: np.ndarray) -> np.ndarray:
        """One frame (H, W, 3) uint8."""
        m = clamp(np.asarray(motion, np.float32))
        canvas = self._background.copy()
        pose = self._pose(m)
        self._hair_back(canvas, pose)
        for side in (-1, 1):
            self._shape(canvas, pose, (side * 60.0, 6.0), -0.6, (11, 17), self._colors["skin_shade"])  # ears
        self._head(canvas, pose)
        self._hair_front(canvas, pose)
        for side in (-1, 1):
            self._eye(canvas, pose, m, side)
            self._brow(canvas, pose, m, side)
            self._blush(canvas, pose, m, side)
        self._nose(canvas, pose)
        self._mouth(canvas, pose, m)
        return canvas.astype(np.uint8)

    # -- geometry --------------------------------------------------------------------------------------
    def _pose(self, m: np.ndarray) -> dict:
        scale = self.unit * (1.0 + m[IDX["lean"]])
        cx = self.width / 2 + (m[IDX["tx"]] * 160 + m[IDX["yaw"]] * 20) * self.unit
        cy = self.height * 0.46 + (m[IDX["ty"]] * 160 + m[IDX["pitch"]] * 24) * self.unit
        roll = float(m[IDX["roll"]])
        return {"scale": scale, "c": (cx, cy), "cos": np.cos(roll), "sin": np.sin(roll),
                "yaw": float(m[IDX["yaw"]]), "pitch": float(m[IDX["pitch"]])}  # fmt: skip

    def _region(self, pose: dict, center: tuple[float, float], depth: float, half: tuple[float, float]):
        """Screen slice around a face-plane point and local face coordinates (x, y) of its pixels."""
        s, (cx, cy), co, si = pose["scale"], pose["c"], pose["cos"], pose["sin"]
        fx = center[0] + pose["yaw"] * depth * 60.0  # parallax: nearer features move further
        fy = center[1] + pose["pitch"] * depth * 50.0
        sx, sy = cx + s * (co * fx - si * fy), cy + s * (si * fx + co * fy)
        r = s * max(half) * 1.05 + 2
        x0, x1 = max(0, int(sx - r)), min(self.width, int(sx + r) + 1)
        y0, y1 = max(0, int(sy - r)), min(self.height, int(sy + r) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        px = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        py = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        lx = (co * px + si * py) / s - fx  # inverse rotation and scale, relative to the feature
        ly = (-si * px + co * py) / s - fy
        return (slice(y0, y1), slice(x0, x1)), lx, ly

    @staticmethod
    def _blend(canvas: np.ndarray, where: tuple[slice, slice], alpha: np.ndarray, color: np.ndarray) -> None:
        region = canvas[where]
        a = alpha[..., None]
        region += a * (color - region)

    def _coverage(self, sd: np.ndarray, pose: dict) -> np.ndarray:
        return np.clip(0.5 - sd * pose["scale"], 0.0, 1.0)

    def _shape(self, canvas, pose, center, depth, radii, color, shade: float = 0.0) -> None:
        reg = self._region(pose, center, depth, radii)
        if reg is None:
            return
        where, x, y = reg
        alpha = self._coverage(ellipse_sd(x, y, *radii), pose)
        if shade:
            light = np.clip(1.0 - shade * (0.6 * x / radii[0] + y / radii[1] + 0.3), 0.85, 1.04)[..., None]
            region = canvas[where]
            region += alpha[..., None] * (color * light - region)
        else:
            self._blend(canvas, where, alpha, color)

    # -- parts -----------------------------------------------------------------------------------------
    def _shoulders(self, canvas: np.ndarray) -> None:
        u, h, w = self.unit, self.height, self.width
        cx = w / 2
        y0 = int(h * 0.70)
        x = np.arange(w, dtype=np.float32)[None, :] - cx
        y = np.arange(y0, h, dtype=np.float32)[:, None] - (h * 0.70 + 34 * u)
        neck = np.maximum(np.abs(x) - 22 * u, -(y + 40 * u))
        self._blend(canvas, (slice(y0, h), slice(0, w)), np.clip(0.5 - neck, 0, 1), self._colors["skin_shade"])
        body = ellipse_sd(x, y - 62 * u, 112 * u, 66 * u)
        self._blend(canvas, (slice(y0, h), slice(0, w)), np.clip(0.5 - body, 0, 1), self._colors["shirt"])

    def _head(self, canvas: np.ndarray, pose: dict) -> None:
        self._shape(canvas, pose, (0.0, 4.0), 0.0, (58, 74), self._colors["skin"], shade=0.12)

    def _hair_back(self, canvas: np.ndarray, pose: dict) -> None:
        self._shape(canvas, pose, (0.0, -8.0), -0.3, (70, 76), self._colors["hair"])

    def _hair_front(self, canvas: np.ndarray, pose: dict) -> None:
        reg = self._region(pose, (0.0, -44.0), 0.1, (64, 40))
        if reg is None:
            return
        where, x, y = reg
        cap = ellipse_sd(x, y + 4.0, 62.0, 38.0)
        hairline = -(y - (5.0 - 10.0 * np.cos(x / 14.0) * (np.abs(x) < 44) + 0.004 * x * x))  # fringe edge
        self._blend(canvas, where, self._coverage(np.maximum(cap, -hairline), pose), self._colors["hair"])

    def _eye(self, canvas: np.ndarray, pose: dict, m: np.ndarray, side: int) -> None:
        blink = float(m[IDX["blink_l" if side < 0 else "blink_r"]])
        squint = float(m[IDX["squint"]])
        a, b = 12.5, 8.0 * (1.0 - 0.25 * squint)
        reg = self._region(pose, (side * 23.0, -4.0), 0.5, (a + 3, b + 3))
        if reg is None:
            return
        where, x, y = reg
        white = ellipse_sd(x, y, a, b)
        lid_y = -b + 2.1 * b * blink  # upper lid edge moves down as the eye closes
        low_y = b * (1.0 - 0.6 * squint)
        open_sd = np.maximum(white, np.maximum(lid_y - y, y - low_y))
        alpha = self._coverage(open_sd, pose)
        self._blend(canvas, where, alpha, np.array([250, 250, 248], np.float32))
        gx, gy = float(m[IDX["gaze_x"]]) * 5.0, float(m[IDX["gaze_y"]]) * 3.0
        iris = np.maximum(ellipse_sd(x - gx, y - gy, 6.2, 6.2), open_sd)
        self._blend(canvas, where, self._coverage(iris, pose), self._colors["iris"])
        pupil = np.maximum(ellipse_sd(x - gx, y - gy, 2.8, 2.8), open_sd)
        self._blend(canvas, where, self._coverage(pupil, pose), np.array([20, 20, 24], np.float32))
        glint = ellipse_sd(x - gx - 2.0, y - gy + 2.2, 1.3, 1.3)
        self._blend(canvas, where, 0.9 * self._coverage(np.maximum(glint, open_sd), pose), np.full(3, 255, np.float32))
        lash = np.maximum(np.abs(y - lid_y) - 1.1 - 0.4 * (1 - blink), white - 1.2)  # a line along the lid
        self._blend(canvas, where, self._coverage(lash, pose), np.array([40, 28, 26], np.float32))

    def _brow(self, canvas: np.ndarray, pose: dict, m: np.ndarray, side: int) -> None:
        raise_ = float(m[IDX["brow_l" if side < 0 else "brow_r"]])
        furrow = float(m[IDX["brow_furrow"]])
        reg = self._region(pose, (side * 24.0, -17.5 - 4.0 * raise_), 0.5, (17, 9))
        if reg is None:
            return
        where, x, y = reg
        inner = -side * x  # > 0 toward the nose
        arc = -4.0 * (1.0 - (x / 15.0) ** 2) + np.clip(inner, 0, None) * 0.18 * furrow
        band = np.maximum(np.abs(y - arc) - 2.1 + 0.05 * np.abs(x), np.abs(x + side * 2.0 * furrow) - 15.0)
        self._blend(canvas, where, self._coverage(band, pose), self._colors["hair"] * 0.8)

    def _blush(self, canvas: np.ndarray, pose: dict, m: np.ndarray, side: int) -> None:
        reg = self._region(pose, (side * 34.0, 20.0), 0.4, (12, 12))
        if reg is None:
            return
        where, x, y = reg
        amount = 0.12 + 0.3 * float(m[IDX["cheek"]])
        self._blend(canvas, where, amount * np.exp(-(x * x + y * y) / 60.0), self._colors["blush"])

    def _nose(self, canvas: np.ndarray, pose: dict) -> None:
        reg = self._region(pose, (0.0, 16.0), 1.0, (9, 8))
        if reg is None:
            return
        where, x, y = reg
        curve = np.maximum(np.abs(np.sqrt(x * x + (y + 3.0) ** 2) - 6.0) - 1.0, -y)
        self._blend(canvas, where, 0.6 * self._coverage(curve, pose), self._colors["skin_shade"] * 0.85)

    def _mouth(self, canvas: np.ndarray, pose: dict, m: np.ndarray) -> None:
        jaw, width, press = float(m[IDX["jaw"]]), float(m[IDX["mouth_width"]]), float(m[IDX["lip_press"]])
        upper, smile = float(m[IDX["upper_lip"]]), float(m[IDX["smile"]])
        half_w = 19.0 * (1.0 + 0.22 * width - 0.25 * max(0.0, -width) * jaw) * (1.0 - 0.08 * press)
        opening = 20.0 * jaw * (1.0 - 0.8 * press)
        reg = self._region(pose, (0.0, 40.0), 0.6, (half_w + 3, 12 + opening))
        if reg is None:
            return
        where, x, y = reg
        u = x / half_w
        profile = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))
        bend = -smile * 5.0 * u * u  # corners up for a smile
        lip_t, lip_b = 3.2 * (1 - 0.4 * press), 3.8 * (1 - 0.4 * press)
        top_out = bend - (lip_t + 1.5 * upper) * profile - 1.0 * profile * (np.abs(u) < 0.25) * 0.5
        bot_in = bend + opening * profile
        bot_out = bot_in + lip_b * profile
        edge = (np.abs(x) - half_w) * 1.0
        lips = np.maximum(np.maximum(top_out - y, y - bot_out), edge)
        self._blend(canvas, where, self._coverage(lips, pose), self._colors["lips"])
        if opening > 0.4:
            top_in = bend - 0.8 * upper * profile
            inner = np.maximum(np.maximum(top_in - y, y - bot_in), np.abs(x) - 0.9 * half_w)
            inner_a = self._coverage(inner, pose)
            self._blend(canvas, where, inner_a, self._colors["mouth"])
            teeth = np.maximum(inner, y - (top_in + 2.0 + 2.0 * upper))
            self._blend(canvas, where, self._coverage(teeth, pose), np.array([244, 242, 236], np.float32))
            tongue = np.maximum(inner, ellipse_sd(x, y - bot_in, 0.55 * half_w, 0.45 * opening + 1.0))
            self._blend(canvas, where, self._coverage(tongue, pose), np.array([200, 90, 96], np.float32))
        else:  # closed: a thin dark line between the lips
            seam = np.maximum(np.abs(y - bend) - 0.5, edge + 1.0)
            self._blend(canvas, where, 0.8 * self._coverage(seam, pose), self._colors["mouth"])


def mouth_openness(frame: np.ndarray) -> float:
    """Share of dark mouth-interior pixels around a default-face mouth (robust to JPEG).

    Benches and tests measure lip sync on received pixels with it.
    """
    h, w = frame.shape[:2]
    box = frame[int(h * 0.52) : int(h * 0.78), int(w * 0.36) : int(w * 0.64)].astype(np.int32)
    dark = (box[..., 0] < 140) & (box[..., 1] < 80) & (box[..., 2] < 90) & (box[..., 0] > box[..., 2])
    return float(dark.mean())
