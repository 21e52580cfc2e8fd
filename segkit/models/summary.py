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
import sys
from collections import defaultdict
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from torch import nn


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
    model_name: str, input_size: list[int] | tuple[int, int] = (512, 1024), **overrides: Any
) -> dict[str, Any]:
    """Params and MAdds of ``conf/model/<model_name>.yaml`` (built on the meta device) at ``input_size``."""
    from segkit.models import create_model

    overrides["encoder_weights"] = None  # counts do not depend on weights; never download for them
    with torch.device("meta"):
        model = create_model(model_name, **overrides)
    madds = count_madds(model, input_size)
    params = {name: count_params(child) for name, child in model.named_children()}
    return {
        "model": model_name,
        "input_size": [int(s) for s in input_size],
        "params": count_params(model),
        "madds": madds["total"],
        "params_by_part": params,
        "madds_by_part": {k: v for k, v in madds.items() if k != "total"},
    }


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


def main(argv: list[str] | None = None) -> int:
    """CLI: Hydra-style ``model=<name>``, ``input_size=[H,W]`` and ``model.<key>=<value>`` overrides."""
    from segkit.config import group_options

    usage = "usage: python -m segkit.models.summary model=<name> [input_size=[H,W]] [model.<key>=<value> ...]"
    name, input_size, dotlist = None, [512, 1024], []
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"{usage}\nnot a key=value argument: {arg!r}")
        if key == "model":
            name = value
        elif key == "input_size":
            input_size = list(yaml.safe_load(value))
        elif key.startswith("model."):
            dotlist.append(f"{key[len('model.') :]}={value}")
        else:
            raise SystemExit(f"{usage}\nunknown argument {key!r}")
    if name is None:
        raise SystemExit(f"{usage}\nmodel names: {group_options('model')}")
    if len(input_size) != 2:
        raise SystemExit(f"input_size must be [H, W], got {input_size}")
    overrides = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist), resolve=True)
    assert isinstance(overrides, dict)
    summary = summarize(name, input_size, **overrides)
    print(format_table(summary))
    print(json.dumps({k: summary[k] for k in ("model", "input_size", "params", "madds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
