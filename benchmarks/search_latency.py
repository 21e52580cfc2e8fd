"""How good is NetAdapt's per-block lookup table? Predicted vs measured latency of random shrunk models.

Builds a MobileNetV3 LR-ASPP model, calibrates a per-block latency table (blocks timed alone in
onnxruntime, the rest = whole model - blocks), then draws ``--models`` random expansion vectors (each
block shrunk to a random 25-100 % of its width, multiples of 8) and, for each, compares the table's
prediction with a measurement of the whole exported model (onnxruntime, ``--threads`` threads, medians;
models are measured round-robin so load changes hit all alike). Prints a table and, last, one JSON line
with the mean absolute error and the rank correlation (what the search relies on: ordering proposals).

    python benchmarks/search_latency.py [--model lraspp_mobilenetv3_small] [--width-mult 1.0] \
        [--size 128 256] [--models 8] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

import numpy as np
import torch

from segkit.models import create_model
from segkit.search.arch import apply_expansions, block_spec, encoder_blocks, expanded_channels
from segkit.search.latency import LatencyTable, OnnxRuntimeMeter, TableLatency, onnx_block_timer
from segkit.search.netadapt import candidate_sizes


def random_expansions(model: torch.nn.Module, rng: random.Random) -> list[int]:
    """Each shrinkable block at a random allowed size between 25 % and 100 % of its width."""
    out = []
    for _, block in encoder_blocks(model):
        spec = block_spec(block)
        sizes = [spec.expanded_channels] + [
            e
            for e in candidate_sizes(spec.expanded_channels, spec.input_channels)
            if e >= spec.expanded_channels // 4
        ]
        out.append(rng.choice(sizes) if spec.shrinkable else spec.expanded_channels)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lraspp_mobilenetv3_small")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--size", type=int, nargs=2, default=[128, 256])
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    base = create_model(args.model, encoder_params={"width_mult": args.width_mult}).eval()
    shape = (1, 3, *args.size)
    meter = OnnxRuntimeMeter(shape, threads=args.threads, warmup=3, runs=args.runs)
    table = LatencyTable(onnx_block_timer(threads=args.threads, warmup=3, runs=args.runs))
    est = TableLatency(table, args.size)
    t0 = time.perf_counter()
    calibration = est.calibrate(base, meter)
    models = [base]
    for _ in range(args.models):
        m = create_model(args.model, encoder_params={"width_mult": args.width_mult})
        models.append(apply_expansions(m, random_expansions(base, rng)).eval())
    predicted = [est(m) for m in models]
    measured: list[list[float]] = [[] for _ in models]
    for _ in range(args.rounds):
        for i, m in enumerate(models):
            measured[i].append(meter(m))
    med = [statistics.median(v) for v in measured]
    seconds = time.perf_counter() - t0

    print(f"{args.model} x{args.width_mult} at {args.size[0]}x{args.size[1]}, ORT {args.threads} thread(s)")
    print(f"calibration: whole {calibration['measured_ms']:.3f} ms = blocks {calibration['blocks_ms']:.3f} "
          f"+ rest {calibration['other_ms']:.3f}")  # fmt: skip
    print(f"{'model':>5}  {'sum(exp)':>8}  {'predicted ms':>12}  {'measured ms':>11}  {'error':>7}")
    errors = []
    for i, m in enumerate(models):
        err = (predicted[i] - med[i]) / med[i]
        errors.append(err)
        name = "base" if i == 0 else str(i)
        print(
            f"{name:>5}  {sum(expanded_channels(m)):>8}  {predicted[i]:>12.3f}  {med[i]:>11.3f}  {err:>+7.1%}"
        )
    result = {
        "model": args.model,
        "width_mult": args.width_mult,
        "input_size": args.size,
        "threads": args.threads,
        "models": len(models),
        "table_entries": len(table),
        "calibration": calibration,
        "mean_abs_error": float(np.mean(np.abs(errors[1:]))) if len(errors) > 1 else None,
        "spearman": spearman(predicted, med),
        "predicted_ms": predicted,
        "measured_ms": med,
        "seconds": seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
        "load_average": list(os.getloadavg()),
    }
    print(f"mean |error| {result['mean_abs_error']:.1%}, Spearman rank correlation {result['spearman']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
