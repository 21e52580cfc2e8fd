"""Temporal EMA smoothing of class probabilities and the ``smoothing=`` setting's parsing."""

from __future__ import annotations

import numpy as np
import pytest

from segkit.inference.smoothing import EmaSmoother, build_smoother


def test_ema_follows_the_recurrence() -> None:
    ema = EmaSmoother(alpha=0.25)
    a = np.full((2, 3, 4), 1.0, dtype=np.float32)
    b = np.zeros((2, 3, 4), dtype=np.float32)
    np.testing.assert_allclose(ema(a), 1.0)  # the first frame starts the average
    np.testing.assert_allclose(ema(b), 0.75)  # 0.25 * 0 + 0.75 * 1
    np.testing.assert_allclose(ema(b), 0.5625)
    ema.reset()
    np.testing.assert_allclose(ema(b), 0.0)


def test_ema_does_not_alias_its_input_and_restarts_on_new_shape() -> None:
    ema = EmaSmoother(alpha=0.5)
    a = np.ones((2, 2, 2), dtype=np.float32)
    out = ema(a)
    a[:] = 7.0
    np.testing.assert_allclose(out, 1.0)
    np.testing.assert_allclose(ema(np.full((2, 4, 4), 3.0, dtype=np.float32)), 3.0)


def test_ema_removes_flicker_of_noisy_probabilities() -> None:
    rng = np.random.default_rng(0)
    base = np.stack([np.full((32, 32), 0.5), np.full((32, 32), 0.5)]).astype(np.float32)
    changes = {}
    for name, smoother in {"none": None, "ema": EmaSmoother(0.2)}.items():
        prev, changed = None, 0
        for _ in range(20):
            probs = base + rng.normal(0, 0.1, base.shape).astype(np.float32)
            if smoother is not None:
                probs = smoother(probs)
            mask = probs.argmax(0)
            if prev is not None:
                changed += int((mask != prev).sum())
            prev = mask
        changes[name] = changed
    assert changes["ema"] < 0.5 * changes["none"]


@pytest.mark.parametrize(
    ("setting", "alpha", "expected"),
    [
        (None, None, None),
        ("none", 0.3, None),
        (False, None, None),
        ("ema", None, 0.5),
        ("EMA", 0.3, 0.3),
        ({"kind": "ema", "alpha": 0.2}, 0.9, 0.2),
        ({"kind": "ema"}, 0.7, 0.7),
        ({"kind": "none"}, None, None),
    ],
)
def test_build_smoother_settings(setting: object, alpha: float | None, expected: float | None) -> None:
    smoother = build_smoother(setting, alpha)
    if expected is None:
        assert smoother is None
    else:
        assert isinstance(smoother, EmaSmoother) and smoother.alpha == pytest.approx(expected)


def test_build_smoother_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown smoothing 'median'"):
        build_smoother("median")
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        build_smoother("ema", 0.0)
    with pytest.raises(ValueError, match="unknown smoothing key"):
        build_smoother({"kind": "ema", "beta": 0.1})
