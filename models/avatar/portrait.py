"""Animate a user-supplied portrait by warping it with the avatar's motion (an optional renderer).

No landmark detector ships here, so the portrait is assumed frontal with the face roughly centred; the
caller may give the mouth position (``mouth`` in 0..1 image coordinates, default (0.5, 0.68)), from which
the face centre, eyes and scale are placed by typical proportions. Each frame is one backward warp with
bilinear sampling of the whole image:

- head pose: a similarity transform (roll about the neck, translation, lean) with yaw/pitch as a shift,
  weighted by a smooth face mask so the background stays put;
- jaw: the chin below the mouth line is pulled down by the jaw opening, and the gap is filled with an
  anti-aliased dark mouth interior (width from mouth_width, teeth hint from upper_lip);
- blinks: eyelids of the skin colour sampled below each eye (the cheek) slide down over the eyes.

It is deliberately simple (a 2D warp, not a learned portrait animator) and costs a few ms per frame.
"""

from __future__ import annotations

import numpy as np

from models.avatar.motion import IDX, clamp
from models.avatar.render import ellipse_sd

MAX_PORTRAIT_BYTES = 1_500_000
MAX_PORTRAIT_PIXELS = 4096 * 4096  # read from the header before decoding (a 16000x16000 PNG would take GBs)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class PortraitRenderer:
    """Warps one RGB portrait (H, W, 3) uint8, already at the output size, per motion vector."""

    def __init__(self, image: np.ndarray, mouth: tuple[float, float] = (0.5, 0.68)) -> None:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("portrait must be an (H, W, 3) RGB image")
        self.height, self.width = image.shape[:2]
        h, w = self.height, self.width
        self.image = np.pad(image.astype(np.float32), ((0, 1), (0, 1), (0, 0)), mode="edge")
        self.mx, self.my = mouth[0] * w, mouth[1] * h
        self.radius = 0.34 * min(w, h)  # face half-width
        r = self.radius
        self.cx, self.cy = self.mx, self.my - 0.55 * r  # face centre
        self.pivot = (self.cx, self.cy + 1.3 * r)  # the neck: roll turns about it
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self.xs, self.ys = xs, ys
        d = np.sqrt(((xs - self.cx) / (1.1 * r)) ** 2 + ((ys - self.cy) / (1.25 * r)) ** 2)
        self.head_w = _smoothstep((1.35 - d) / 0.35)  # 1 on the head, 0 on the shoulders and background
        below = (ys - self.my) / (0.9 * r)
        across = np.abs(xs - self.mx) / (0.75 * r)
        self.jaw_w = _smoothstep(below * 6) * _smoothstep(1.2 - below) * _smoothstep(1 - across)
        self.eyes = [(self.cx + side * 0.36 * r, self.cy - 0.02 * r) for side in (-1, 1)]
        self.lid_colors = [self.image[int(min(h - 1, ey + 0.4 * r)), int(ex)].copy() for ex, ey in self.eyes]  # cheek

    def render_batch(self, motions: np.ndarray) -> np.ndarray:
        """Frames (B, H, W, 3) uint8."""
        return np.stack([self.render(m) for m in np.asarray(motions, np.float32)])

    def render(self, motion: np.ndarray) -> np.ndarray:
        """One warped frame (H, W, 3) uint8."""
        m = clamp(np.asarray(motion, np.float32))
        r = self.radius
        roll, scale = float(m[IDX["roll"]]), 1.0 + float(m[IDX["lean"]])
        tx = (m[IDX["tx"]] * 1.2 + m[IDX["yaw"]] * 0.35) * r
        ty = (m[IDX["ty"]] * 1.2 + m[IDX["pitch"]] * 0.4) * r
        px, py = self.pivot
        co, si = np.cos(roll), np.sin(roll)
        # backward map of the head: undo translation, then rotation/scale about the neck
        ux, uy = (self.xs - px - tx) / scale, (self.ys - py - ty) / scale
        sx, sy = px + co * ux + si * uy, py - si * ux + co * uy
        opening = float(m[IDX["jaw"]]) * 0.22 * r * (1 - 0.7 * float(m[IDX["lip_press"]]))
        sy = sy - opening * self.jaw_w
        w = self.head_w
        frame = self._sample(self.xs + w * (sx - self.xs), self.ys + w * (sy - self.ys))

        def forward(x: float, y: float) -> tuple[float, float]:  # where a face point lands on screen
            dx, dy = x - px, y - py
            return px + tx + scale * (co * dx - si * dy), py + ty + scale * (si * dx + co * dy)

        if opening > 0.5:
            cx, cy = forward(self.mx, self.my + 0.5 * opening)
            half_w = 0.24 * r * (1 + 0.25 * float(m[IDX["mouth_width"]])) * scale
            self._ellipse(frame, cx, cy, half_w, 0.5 * opening * scale, np.array([70, 20, 26], np.float32))
            teeth_h = (0.15 + 0.25 * float(m[IDX["upper_lip"]])) * opening * scale
            self._ellipse(frame, cx, cy - 0.5 * opening * scale + 0.5 * teeth_h, 0.8 * half_w, 0.5 * teeth_h,
                          np.array([236, 232, 224], np.float32))  # fmt: skip
        for (ex, ey), color, name in zip(self.eyes, self.lid_colors, ("blink_l", "blink_r"), strict=True):
            blink = float(m[IDX[name]])
            if blink > 0.1:
                cx, cy = forward(ex, ey)
                eh = 0.13 * r * scale
                self._ellipse(frame, cx, cy - eh * (1 - blink), 0.24 * r * scale, eh * blink + 1, color)
        return frame.astype(np.uint8)

    def _sample(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0, self.width - 1)
        y = np.clip(y, 0, self.height - 1)
        x0, y0 = x.astype(np.int32), y.astype(np.int32)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        img = self.image
        top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
        bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
        return top * (1 - fy) + bottom * fy

    def _ellipse(self, frame: np.ndarray, cx: float, cy: float, a: float, b: float, color: np.ndarray) -> None:
        """Anti-aliased filled ellipse, evaluated in its bounding box only."""
        x0, x1 = max(0, int(cx - a - 2)), min(self.width, int(cx + a + 3))
        y0, y1 = max(0, int(cy - b - 2)), min(self.height, int(cy + b + 3))
        if x0 >= x1 or y0 >= y1 or a < 0.5 or b < 0.5:
            return
        x = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        y = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        alpha = np.clip(0.5 - ellipse_sd(x, y, a, b), 0, 1)[..., None]
        region = frame[y0:y1, x0:x1]
        region += alpha * (color - region)


def fit_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop an RGB image to the output aspect ratio and resize it (FFmpeg's scaler)."""
    import av

    h, w = image.shape[:2]
    if w * height > h * width:
        crop = round(h * width / height)
        image = image[:, (w - crop) // 2 : (w - crop) // 2 + crop]
    else:
        crop = round(w * height / width)
        image = image[(h - crop) // 2 : (h - crop) // 2 + crop]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()


