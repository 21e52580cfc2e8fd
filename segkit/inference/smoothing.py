"""Temporal smoothing of class probabilities, so per-frame predictions on video do not flicker.

An exponential moving average over the predictor's probabilities (``C x h x w`` at the model's working
size, before upsampling): ``state = alpha * current + (1 - alpha) * state``. ``alpha`` is the weight of
the newest frame, so 1.0 means no smoothing and small values mean long memory (more lag on motion).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

SMOOTHING_KINDS = ("none", "ema")


class EmaSmoother:
    """Running EMA of probability maps; restarts when the map's shape changes (a new image size)."""

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the history (e.g. at a scene cut or a new clip)."""
        self._state = None

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float32)
        if self._state is None or self._state.shape != probs.shape:
            self._state = probs.copy()
        else:
            self._state *= 1.0 - self.alpha
            self._state += self.alpha * probs
        return self._state

    def __repr__(self) -> str:
        return f"EmaSmoother(alpha={self.alpha})"


def build_smoother(smoothing: Any = None, alpha: float | None = None) -> EmaSmoother | None:
    """Smoother from the ``smoothing=`` setting: None/'none'/false, 'ema', or ``{kind: ema, alpha: 0.5}``.

    ``alpha`` (the ``smoothing_alpha`` key) is used when the setting itself gives none.
    """
    kind: Any = smoothing
    if isinstance(smoothing, Mapping):
        unknown = set(smoothing) - {"kind", "alpha"}
        if unknown:
            raise ValueError(f"unknown smoothing key(s) {sorted(unknown)}: expected 'kind' and 'alpha'")
        kind = smoothing.get("kind", "ema")
        if smoothing.get("alpha") is not None:
            alpha = smoothing["alpha"]
    if (
        kind is None
        or kind is False
        or (isinstance(kind, str) and kind.lower() in ("none", "off", "false", ""))
    ):
        return None
    if isinstance(kind, str) and kind.lower() == "ema":
        return EmaSmoother(0.5 if alpha is None else float(alpha))
    raise ValueError(f"unknown smoothing '{kind}': expected one of {', '.join(SMOOTHING_KINDS)}")
