"""Platform-aware search of "Searching for MobileNetV3": reward, measured latency, NetAdapt.

* :mod:`segkit.search.reward`: MnasNet's ``acc * (latency / target) ** w`` with the paper's ``w = -0.15``.
* :mod:`segkit.search.latency`: onnxruntime / eager-torch latency meters and NetAdapt's per-block table.
* :mod:`segkit.search.arch`: shrink a block's expansion or a residual group's width with exact weight
  transplant; the result's ``model_config`` is its block table, an ordinary model config.
* :mod:`segkit.search.proxy`: the proxy task (short fine-tunes, val mIoU) with the engine's step and
  evaluator.
* :mod:`segkit.search.netadapt`: the search loop and its command (``python -m segkit.search.netadapt``).

Names load on first use (PEP 562), so ``python -m segkit.search.<command>`` runs its module once.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MOBILENETV3_W": "reward",
    "best_by_reward": "reward",
    "reward": "reward",
    "LatencyMeter": "latency",
    "LatencyTable": "latency",
    "MAddsLatency": "latency",
    "OnnxRuntimeMeter": "latency",
    "TableLatency": "latency",
    "TorchMeter": "latency",
    "encoder_blocks": "arch",
    "expanded_channels": "arch",
    "load_adapted": "arch",
    "out_channels": "arch",
    "residual_groups": "arch",
    "shrink_block": "arch",
    "shrink_group": "arch",
    "shrink_model": "arch",
    "NetAdaptResult": "netadapt",
    "Proposal": "netadapt",
    "netadapt": "netadapt",
    "select_proposal": "netadapt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'segkit.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"segkit.search.{_EXPORTS[name]}"), name)
    globals()[name] = value  # the function wins over a submodule of the same name (netadapt)
    return value
