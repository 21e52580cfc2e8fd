"""Turning a trainId mask into what ``save=`` asks for: a palette overlay, a side-by-side view, colours.

All images are RGB uint8. The blend is ``alpha * palette[class] + (1 - alpha) * frame`` per pixel,
rounded; pixels whose id is outside the palette (255 = ignore) keep the frame's colour.
"""

from __future__ import annotations

import cv2
import numpy as np

from segkit.labels import colorize

#: Output kinds of ``save=``; 'mask' and 'labelIds' are single-channel PNGs (lossless only).
SAVE_MODES = ("overlay", "side_by_side", "mask", "labelIds", "color")
IMAGE_ONLY_MODES = ("mask", "labelIds")


def blend(rgb: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Palette colours of ``mask`` blended over ``rgb`` with weight ``alpha`` (0 = frame, 1 = colours)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if rgb.shape[:2] != mask.shape[:2]:
        raise ValueError(f"frame {rgb.shape[:2]} and mask {mask.shape[:2]} differ in size")
    color = colorize(mask, palette)
    out = cv2.addWeighted(color, float(alpha), rgb, 1.0 - float(alpha), 0.0)
    unpainted = np.asarray(mask) >= len(palette)
    if unpainted.any():
        np.copyto(out, rgb, where=unpainted[..., None])
    return out


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two equally tall RGB images next to each other (frame | overlay)."""
    if left.shape[0] != right.shape[0]:
        raise ValueError(f"side_by_side needs equal heights, got {left.shape[0]} and {right.shape[0]}")
    return np.ascontiguousarray(np.concatenate([left, right], axis=1))


def render(
    save: str, rgb: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """The image ``save=`` writes for one frame: RGB for overlay/side_by_side/color, ids for mask."""
    if save == "overlay":
        return blend(rgb, mask, palette, alpha)
    if save == "side_by_side":
        return side_by_side(rgb, blend(rgb, mask, palette, alpha))
    if save == "color":
        return colorize(mask, palette)
    if save == "mask":
        return np.asarray(mask, dtype=np.uint8)
    if save == "labelIds":
        raise ValueError("save=labelIds is written by segkit.evaluation.save_benchmark_pngs, not rendered")
    raise ValueError(f"unknown save='{save}': expected one of {', '.join(SAVE_MODES)}")
