"""The multi-objective reward of MnasNet, with the weight "Searching for MobileNetV3" uses for small models.

``reward = acc * (latency / target) ** w``. MnasNet (Tan et al. 2019) uses ``w = -0.07``; Howard et al.
found that for small mobile models accuracy changes much more steeply with latency, and use
``w = -0.15`` so the search trades more accuracy for speed. With ``w`` the reward is unchanged when
latency is multiplied by ``r`` and accuracy by ``r ** -w``: doubling the latency must be paid for with
``2 ** 0.15 ~= 1.11x`` the accuracy.

    python -m segkit.search.reward acc=0.70 latency=12.5 target=10 [w=-0.15]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

import numpy as np
from omegaconf.errors import MissingMandatoryValue

from segkit.cli import Command

#: the weight of "Searching for MobileNetV3" (Sec. 4) for its small mobile models
MOBILENETV3_W = -0.15
#: MnasNet's original weight
MNASNET_W = -0.07

T = TypeVar("T")


def _check_positive(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        first = float(arr.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])])
        raise ValueError(f"{name} must be positive and finite, got {first!r}")
    return arr


@overload
def reward(acc: float, latency: float, target: float, w: float = MOBILENETV3_W) -> float: ...
@overload
def reward(acc: Any, latency: Any, target: Any, w: float = MOBILENETV3_W) -> np.ndarray: ...
def reward(acc: Any, latency: Any, target: Any, w: float = MOBILENETV3_W) -> float | np.ndarray:
    """``acc * (latency / target) ** w``; scalars give a float, arrays broadcast to an array.

    Args:
        acc: accuracy (e.g. mIoU in 0..1); must be finite and >= 0.
        latency: measured latency, same unit as ``target``; must be > 0.
        target: the latency target; must be > 0.
        w: the exponent; negative rewards being faster (the paper: -0.15, MnasNet: -0.07).
    """
    if not math.isfinite(w):
        raise ValueError(f"w must be finite, got {w!r}")
    acc_arr = np.asarray(acc, dtype=np.float64)
    if (~np.isfinite(acc_arr) | (acc_arr < 0)).any():
        raise ValueError(f"acc must be finite and >= 0, got {acc!r}")
    lat = _check_positive("latency", latency)
    tgt = _check_positive("target", target)
    out = acc_arr * (lat / tgt) ** w
    if np.ndim(out) == 0:
        return float(out)
    return out


def accuracy_to_compensate(latency_ratio: float, w: float = MOBILENETV3_W) -> float:
    """The accuracy factor that keeps the reward equal when latency is multiplied by ``latency_ratio``."""
    _check_positive("latency_ratio", latency_ratio)
    return float(latency_ratio ** (-w))


def best_by_reward(
    candidates: Sequence[T],
    target: float,
    *,
    w: float = MOBILENETV3_W,
    acc: Callable[[T], float] = lambda c: c["acc"],  # type: ignore[index]
    latency: Callable[[T], float] = lambda c: c["latency"],  # type: ignore[index]
) -> tuple[int, T, float]:
    """The candidate with the highest reward: ``(index, candidate, reward)``; the first one wins ties.

    Candidates are mappings with ``acc`` and ``latency`` keys by default; pass ``acc``/``latency``
    getters for other types.
    """
    if not candidates:
        raise ValueError("best_by_reward needs at least one candidate")
    rewards = reward([acc(c) for c in candidates], [latency(c) for c in candidates], target, w)
    i = int(np.argmax(rewards))
    return i, candidates[i], float(rewards[i])


def _run(cfg: Any) -> int:
    args = {k: float(cfg[k]) for k in ("acc", "latency", "target", "w")}
    print(json.dumps({**args, "reward": reward(args["acc"], args["latency"], args["target"], args["w"])}))
    return 0


COMMAND = Command(
    prog="python -m segkit.search.reward",
    config_name="reward",
    usage="acc=<float> latency=<float> target=<float> [w=-0.15]",
    run=_run,
    user_errors=(ValueError, MissingMandatoryValue),
)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``acc=... latency=... target=... [w=...]``; prints the reward and its inputs as JSON."""
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
