"""Platform-aware search of "Searching for MobileNetV3": reward, measured latency, NetAdapt.

* :mod:`segkit.search.reward`: MnasNet's ``acc * (latency / target) ** w`` with the paper's ``w = -0.15``.
* :mod:`segkit.search.latency`: onnxruntime / eager-torch latency meters and NetAdapt's per-block table.
* :mod:`segkit.search.arch`: shrink a block's expansion or a residual group's width with exact weight
  transplant; rebuild, save, load and export a model from its per-block widths.
* :mod:`segkit.search.netadapt`: the search loop and its command (``python -m segkit.search.netadapt``).
"""

from segkit.search.arch import (
    BlockSpec,
    adapted_config,
    block_spec,
    build_adapted_model,
    encoder_blocks,
    expanded_channels,
    export_adapted_onnx,
    load_adapted,
    out_channels,
    residual_groups,
    save_adapted,
    shrink_block,
    shrink_group,
    shrink_model,
)
from segkit.search.latency import (
    LatencyMeter,
    LatencyTable,
    MAddsLatency,
    OnnxRuntimeMeter,
    TableLatency,
    TorchMeter,
)
from segkit.search.netadapt import NetAdaptResult, Proposal, netadapt, select_proposal
from segkit.search.reward import MOBILENETV3_W, best_by_reward, reward

__all__ = [
    "MOBILENETV3_W",
    "BlockSpec",
    "LatencyMeter",
    "LatencyTable",
    "MAddsLatency",
    "NetAdaptResult",
    "OnnxRuntimeMeter",
    "Proposal",
    "TableLatency",
    "TorchMeter",
    "adapted_config",
    "best_by_reward",
    "block_spec",
    "build_adapted_model",
    "encoder_blocks",
    "expanded_channels",
    "export_adapted_onnx",
    "load_adapted",
    "netadapt",
    "out_channels",
    "residual_groups",
    "reward",
    "save_adapted",
    "select_proposal",
    "shrink_block",
    "shrink_group",
    "shrink_model",
]
