"""Parameter and multiply-add counts of a model config.

    python -m segkit.models.summary model=lraspp_mobilenetv3_large [input_size=[512,1024]] \
        [model.encoder_params.width_mult=0.75 ...]

MAdds are counted with forward hooks on every ``Conv2d`` (output elements x kernel area x input
channels per group) and ``Linear`` (batch x in x out): the convention of the MobileNet papers, which
leaves out pooling, normalisation, activations and resizing. The pass runs on the ``meta`` device, so a
full-resolution count takes no compute. Prints a table, then one JSON line.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from segkit.cli import Command
from segkit.models.encoders import MobileNetV3Encoder
from segkit.models.factory import build_model, create_model


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not), as the papers and torchvision's ``num_params`` count them."""
    return sum(p.numel() for p in model.parameters())


def count_madds(
    model: nn.Module, input_size: tuple[int, int] | list[int], *, in_channels: int = 3
) -> dict[str, int]:
    """Multiply-adds of one 1 x ``in_channels`` x H x W forward pass, per top-level child and ``"total"``.

    ``in_channels`` lets a single block (e.g. one NetAdapt proposal) be counted at its own input.
    """
    per_child: dict[str, int] = defaultdict(int)
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
                per_child[name] += output.numel() * k
            else:  # Linear
                per_child[name] += output.numel() * module.in_features

        return fn

    for full_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(full_name.split(".")[0])))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = _meta_copy_device(model)
            model.to(device)(torch.zeros(1, in_channels, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    result = dict(per_child)
    result["total"] = sum(per_child.values())
    return result


def _meta_copy_device(model: nn.Module) -> torch.device:
    """The meta device when the model is already there (shapes only), else the model's own device."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def summarize(
    model: str | Mapping[str, Any], input_size: list[int] | tuple[int, int] = (512, 1024), **overrides: Any
) -> dict[str, Any]:
    """Params and MAdds of a model config (a ``conf/model`` name, a model YAML path or the config itself),
    built on the meta device, at ``input_size``; with a MobileNetV3 encoder also its block table."""
    overrides["encoder_weights"] = None  # counts do not depend on weights; never download for them
    with torch.device("meta"):
        if isinstance(model, Mapping):
            config = {k: v for k, v in model.items() if k != "_target_"}
            built = build_model(**{**config, **overrides})
        else:
            built = create_model(model, **overrides)
    madds = count_madds(built, input_size)
    params = {name: count_params(child) for name, child in built.named_children()}
    summary: dict[str, Any] = {
        "model": built.model_config.get("name") or str(model),
        "input_size": [int(s) for s in input_size],
        "params": count_params(built),
        "madds": madds["total"],
        "params_by_part": params,
        "madds_by_part": {k: v for k, v in madds.items() if k != "total"},
    }
    encoder = getattr(built, "encoder", None)
    if isinstance(encoder, MobileNetV3Encoder):
        summary["architecture"] = encoder.architecture()
    return summary


def format_blocks(architecture: Mapping[str, Any]) -> str:
    """The block table of a MobileNetV3 encoder, as ``encoder_params.blocks`` takes it."""
    lines = [
        f"stem_channels: {architecture['stem_channels']}",
        "blocks:  # [kernel, expanded, out, use_se, activation, stride]",
    ]
    for row in architecture["blocks"]:
        k, e, o, se, act, stride = row
        lines.append(f"  - [{k}, {e}, {o}, {str(se).lower()}, {act}, {stride}]")
    lines.append(f"last_channels: {architecture['last_channels']}")
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    """A plain-text table: parameters and MAdds per model part and in total."""
    rows = [("part", "params", "MAdds")]
    for part, n in summary["params_by_part"].items():
        rows.append((part, f"{n:,}", f"{summary['madds_by_part'].get(part, 0) / 1e9:.3f} B"))
    rows.append(("total", f"{summary['params']:,}", f"{summary['madds'] / 1e9:.3f} B"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    h, w = summary["input_size"]
    lines = [f"{summary['model']} at {h}x{w}"]
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}")
        if i == 0 or i == len(rows) - 2:
            lines.append("-" * (sum(widths) + 4))
    return "\n".join(lines)


def _run(cfg: Any) -> int:
    input_size = list(cfg.input_size)
    if len(input_size) != 2:
        raise ValueError(f"input_size must be [H, W], got {input_size}")
    summary = summarize(OmegaConf.to_container(cfg.model, resolve=True), input_size)
    print(format_table(summary))
    if "architecture" in summary:
        print("\nencoder block table (encoder_params):")
        print(format_blocks(summary["architecture"]))
    print(json.dumps({k: summary[k] for k in ("model", "input_size", "params", "madds")}))
    return 0


COMMAND = Command(
    prog="python -m segkit.models.summary",
    config_name="summary",
    usage="model=<name or model.yaml> [input_size=[H,W]] [model.<key>=<value> ...]",
    run=_run,
    user_errors=(ValueError, FileNotFoundError),
)


def main(argv: list[str] | None = None) -> int:
    """CLI: Hydra-style ``model=<name>``, ``input_size=[H,W]`` and ``model.<key>=<value>`` overrides."""
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
