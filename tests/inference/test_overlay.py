"""Overlay rendering: the blend formula, ignore pixels, colour lookup and side-by-side layout."""

from __future__ import annotations

import numpy as np
import pytest

from segkit import labels
from segkit.inference.overlay import blend, colorize, render, side_by_side


def _frame_and_mask(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    mask = rng.integers(0, labels.NUM_CLASSES, (16, 24), dtype=np.uint8)
    return rgb, mask


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_blend_is_alpha_palette_plus_rest_frame(alpha: float) -> None:
    rgb, mask = _frame_and_mask()
    out = blend(rgb, mask, labels.PALETTE, alpha)
    expected = alpha * labels.PALETTE[mask].astype(np.float64) + (1 - alpha) * rgb.astype(np.float64)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0  # rounding only


def test_blend_leaves_ignore_pixels_untouched() -> None:
    rgb, mask = _frame_and_mask(1)
    mask[:4] = labels.IGNORE_INDEX
    out = blend(rgb, mask, labels.PALETTE, 0.7)
    np.testing.assert_array_equal(out[:4], rgb[:4])
    assert not np.array_equal(out[4:], rgb[4:])


def test_colorize_uses_the_given_palette_and_black_for_unknown_ids() -> None:
    palette = np.array([[10, 20, 30], [200, 100, 0]], dtype=np.uint8)
    mask = np.array([[0, 1], [1, 255]], dtype=np.uint8)
    out = colorize(mask, palette)
    np.testing.assert_array_equal(out, [[[10, 20, 30], [200, 100, 0]], [[200, 100, 0], [0, 0, 0]]])


def test_side_by_side_puts_frame_left_and_overlay_right() -> None:
    rgb, mask = _frame_and_mask(2)
    out = render("side_by_side", rgb, mask, labels.PALETTE, 0.5)
    assert out.shape == (16, 48, 3)
    np.testing.assert_array_equal(out[:, :24], rgb)
    np.testing.assert_array_equal(out[:, 24:], blend(rgb, mask, labels.PALETTE, 0.5))
    with pytest.raises(ValueError, match="equal heights"):
        side_by_side(rgb, rgb[:8])


def test_render_modes_and_errors() -> None:
    rgb, mask = _frame_and_mask(3)
    np.testing.assert_array_equal(render("mask", rgb, mask, labels.PALETTE), mask)
    np.testing.assert_array_equal(render("color", rgb, mask, labels.PALETTE), labels.colorize(mask))
    with pytest.raises(ValueError, match="unknown save='heatmap'"):
        render("heatmap", rgb, mask, labels.PALETTE)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        blend(rgb, mask, labels.PALETTE, 1.5)
    with pytest.raises(ValueError, match="differ in size"):
        blend(rgb, mask[:8], labels.PALETTE, 0.5)
