"""Training throughput (images/s) of segkit's train step against a plain hand-written PyTorch loop.

Both sides do the same work per step: forward of a batch of ``--batch`` images at ``--height`` x ``--width``,
cross-entropy with ignore index 255, backward, SGD (momentum 0.9, weight decay 4e-5) step. The data are
fixed random tensors, so only the training step is timed (data loading is the loader's business).

Rows:
* ``segkit``: :class:`segkit.engine.trainer.TrainStep` (the engine's step function) on segkit's
  ``lraspp_mobilenetv3_large`` (the paper's LR-ASPP: reduced tail, output stride 16, 49x49 pooling);
* ``segkit-loop/tv-model``: the same step function around torchvision's model (isolates loop overhead);
* ``reference``: a plain loop around torchvision's ``lraspp_mobilenet_v3_large(num_classes=19,
  weights=None, weights_backbone=None)``.
Each is measured in fp32 NCHW (``fp32``), fp32 NHWC (``channels_last``) and bf16 autocast in NHWC (``bf16``).
segkit's default on CPU is ``channels_last`` (``train.channels_last=auto``), so the headline ratio is
segkit ``channels_last`` over the plain loop in plain fp32 NCHW (``default_vs_plain``).

    python benchmarks/train_throughput.py --steps 2 --warmup 1
Prints a table and, last, one JSON line with every number and the segkit / reference ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from segkit.engine.losses import SegCrossEntropy
from segkit.engine.trainer import TrainStep
from segkit.models import create_model


def _batch(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=g)
    targets = torch.randint(0, 19, (batch, height, width), generator=g)
    targets[:, : height // 8] = 255  # some ignored pixels, as in Cityscapes
    return images, targets


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)


def segkit_step(model: nn.Module, channels_last: bool, amp: torch.dtype | None) -> Callable[[Any], Any]:
    """The engine's own step function, as ``train_seg.py`` builds it."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = TrainStep(
        model=model,
        criterion=SegCrossEntropy(ignore_index=255),
        optimizer=_sgd(model),
        device=torch.device("cpu"),
        amp_dtype=amp,
        channels_last=channels_last,
    )
    return lambda batch: step([batch])


def reference_step(model: nn.Module, channels_last: bool, amp: torch.dtype | None) -> Callable[[Any], Any]:
    """The textbook loop: zero_grad, forward, loss, backward, step."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = _sgd(model)

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, targets = batch
        images = images.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = model(images)["out"]
        loss = F.cross_entropy(out.float(), targets, ignore_index=255)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def measure(
    step: Callable[[Any], Any], batch: tuple[torch.Tensor, torch.Tensor], steps: int, warmup: int
) -> float:
    """Images per second over ``steps`` timed steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(batch)
    t0 = time.perf_counter()
    for _ in range(steps):
        float(step(batch))
    return steps * batch[0].shape[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per row")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--variants", default="fp32,channels_last,bf16", help="comma list of fp32, channels_last, bf16"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = _batch(args.batch, args.height, args.width)

    def segkit_model() -> nn.Module:
        torch.manual_seed(0)
        return create_model("lraspp_mobilenetv3_large", num_classes=19).train()

    def tv_model() -> nn.Module:
        torch.manual_seed(0)
        return lraspp_mobilenet_v3_large(num_classes=19, weights=None, weights_backbone=None).train()

    rows: list[dict[str, Any]] = []
    for variant in args.variants.split(","):
        channels_last = variant in ("channels_last", "bf16")  # bf16 autocast is measured in NHWC
        amp = torch.bfloat16 if variant == "bf16" else None
        cases = [("segkit", segkit_step, segkit_model), ("reference", reference_step, tv_model)]
        if variant == "fp32":
            cases.insert(1, ("segkit-loop/tv-model", segkit_step, tv_model))
        for name, make_step, make_model in cases:
            ips = measure(make_step(make_model(), channels_last, amp), batch, args.steps, args.warmup)
            rows.append({"variant": variant, "loop": name, "img_per_s": round(ips, 3)})
            print(f"{variant:<14} {name:<22} {ips:8.3f} img/s", flush=True)

    by = {(r["variant"], r["loop"]): r["img_per_s"] for r in rows}
    ratios = {
        v: round(by[(v, "segkit")] / by[(v, "reference")], 3)
        for v in args.variants.split(",")
        if (v, "reference") in by
    }
    if ("channels_last", "segkit") in by and ("fp32", "reference") in by:
        ratios["default_vs_plain"] = round(by[("channels_last", "segkit")] / by[("fp32", "reference")], 3)
    if ("fp32", "segkit-loop/tv-model") in by:
        ratios["loop_only_fp32"] = round(by[("fp32", "segkit-loop/tv-model")] / by[("fp32", "reference")], 3)
    print()
    print(f"{'variant':<14} {'segkit img/s':>13} {'reference img/s':>16} {'ratio':>7}")
    for v in args.variants.split(","):
        print(f"{v:<14} {by[(v, 'segkit')]:13.3f} {by[(v, 'reference')]:16.3f} {ratios[v]:7.3f}")
    result = {
        "benchmark": "train_throughput",
        "model": "lraspp_mobilenetv3_large",
        "batch": args.batch,
        "size": [args.height, args.width],
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "rows": rows,
        "ratio_segkit_over_reference": ratios,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
