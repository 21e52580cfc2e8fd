"""CPU inference benchmark: torchvision eager vs segkit eager vs onnxruntime fp32/int8, side by side.

    python benchmarks/inference.py [--threads 2] [--sizes 512x1024,1024x2048] [--iters 8] [--json out.json]
    python benchmarks/inference.py --quick --iters 20   # first size, ONNX fp32/int8 of the torchvision arch

Batch 1, random weights (speed does not depend on them; denormals are flushed to zero in every runtime,
as trained weights do not produce them), network only (no resize/argmax around it); the ONNX files are
fixed-size, batch-1 builds, as ``python -m segkit.export ... batch=1`` writes them for a device.
Rows: torchvision's ``lraspp_mobilenet_v3_large`` eager; segkit's model of the same architecture
(``from_torchvision_lraspp``) eager, as ONNX fp32 and as int8 (QDQ, per-channel, calibrated on a
generated sample, quantized from the int8-friendly graph as the export command does); then the paper
configs ``lraspp_mobilenetv3_large``/``_small`` (RF2, paper pooling) as ONNX fp32 and int8. At the first
size, int8 variants of the torchvision-architecture model show what the quantization options change, and
a pair of rows exports it with ``argmax=true`` (uint8 mask output, the argmax in the graph). Each row
gives ms/frame (median), the ratio to the reference row, the file size, MAdds and the distance from the
compute floor (2 x MAdds / peak fp32 FLOP/s, the peak measured as a large fp32 matmul on the same
threads). The table's cases run round-robin (each starts with caches another case filled); the ONNX
fp32/int8 pair of the torchvision architecture is timed back to back as well (blocks of consecutive runs,
as a device running one model sees it), and the int8 target counts as met only when it is met both ways.
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import segkit
from segkit.data import CityscapesDataset
from segkit.data.sample import generate_sample
from segkit.engine.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from segkit.export.int8_friendly import export_quantization_source
from segkit.export.metadata import build_metadata
from segkit.export.onnx import ExportWrapper, export_onnx
from segkit.export.quantize import fp32_operators, quantize_int8
from segkit.export.verify import model_input
from segkit.models import from_torchvision_lraspp
from segkit.models.summary import count_madds

TV_ARCH = "segkit (torchvision arch)"


def peak_gflops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on ``threads`` threads: the practical compute ceiling."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def timeit(fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"ms": statistics.median(times), "min_ms": min(times), "runs": iters}


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle onnxruntime threads otherwise spin for a while after each run and slow the next case down
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")  # as torch below, see main()
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def back_to_back(paths: dict[str, Path], threads: int, feed: np.ndarray, runs: int, rounds: int = 3) -> dict:
    """Best ms/frame of each ONNX file timed in blocks of ``runs`` consecutive runs, blocks alternating.

    The round-robin table runs every case once in turn, so each starts with caches another case filled;
    back to back is how a device running one model sees it. Both are reported, and a target only counts
    as met when it is met both ways.
    """
    sessions = {k: ort_session(p, threads) for k, p in paths.items()}
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(rounds):
        for k, sess in sessions.items():
            sess.run(None, {"image": feed})
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(None, {"image": feed})
                best[k] = min(best[k], (time.perf_counter() - t) * 1e3)
    return best


def op_profile(path: Path, threads: int, feed: np.ndarray, runs: int = 5) -> dict[str, float]:
    """Milliseconds per run spent in each operator type (onnxruntime's profiler), largest first.

    The first run is left out: it allocates and first touches every buffer (the 40 MB logits alone
    take several ms of page faults), which later runs reuse.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as ort_session()
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        sess.run(None, {"image": feed})
    events = json.loads(Path(sess.end_profiling()).read_text())
    first = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm_from = first["ts"] + first["dur"]
    total: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > warm_from:
            op = e["args"]["op_name"]
            total[op] = total.get(op, 0.0) + e["dur"] / 1e3 / runs
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def metadata(name: str, size: tuple[int, int], argmax: bool = False) -> dict:
    from segkit import labels

    return build_metadata(
        model_name=name, class_names=labels.CLASS_NAMES, palette=labels.PALETTE, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, input_size=size, dynamic=False, preprocess=False, argmax=argmax, batch=1,
    )  # fmt: skip


class Bench:
    """Collects timing cases per size, times them round-robin, and keeps the rows of the table.

    Round-robin (every case once per round, several rounds) spreads disturbances from other processes
    over all cases alike; the best time of each case is the least disturbed one.
    """

    def __init__(self, peak: float, threads: int, tmp: Path) -> None:
        self.peak, self.threads, self.tmp = peak, threads, tmp
        self.rows: list[dict[str, Any]] = []
        self.cases: list[dict[str, Any]] = []

    def case(self, size, model, runtime, fn, *, madds, path=None, ref=None, **extra) -> dict:
        """Register ``fn`` (one batch-1 forward pass); ``ref`` is another case to compare against."""
        c = {"size": size, "model": model, "runtime": runtime, "fn": fn, "madds": madds, "path": path,
             "ref": ref, "extra": extra}  # fmt: skip
        self.cases.append(c)
        return c

    def ort_case(self, size, model, runtime, path, feed, **kw) -> dict:
        sess = ort_session(path, self.threads)
        return self.case(size, model, runtime, lambda: sess.run(None, {"image": feed}), path=path, **kw)

    def onnx_pair(
        self, name, model, size, feed, batches, *, madds, ref=None, argmax=False
    ) -> tuple[Path, dict]:
        """Export ``model`` at ``size`` and quantize it; registers both; returns the fp32 path and case.

        ``argmax``: the files output the uint8 mask (``argmax=true`` exports) instead of the logits.
        """
        stem = self.tmp / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}_{size[0]}x{size[1]}"
        wrapper = ExportWrapper(model, IMAGENET_MEAN, IMAGENET_STD, argmax=argmax)
        meta = metadata(name, size, argmax)
        # batch=1, as a device build (``python -m segkit.export ... batch=1``): both files take one image
        fp32 = export_onnx(wrapper, stem.with_suffix(".onnx"), input_size=size, metadata=meta, batch=1)
        f_case = self.ort_case(size, name, "onnxruntime fp32", fp32, feed, madds=madds, ref=ref)
        # as the export command does: quantize the int8-friendly form of the same network
        source = export_quantization_source(
            wrapper, stem.with_suffix(".int8src.onnx"), input_size=size, metadata=meta, batch=1
        )
        int8 = quantize_int8(source, stem.with_suffix(".int8.onnx"), batches)
        self.ort_case(size, name, "onnxruntime int8", int8, feed, madds=madds, ref=f_case,
                      calibration_images=len(batches), size_ratio=int8.stat().st_size / fp32.stat().st_size,
                      fp32_ops={k: v["count"] for k, v in fp32_operators(int8).items()})  # fmt: skip
        return fp32, f_case

    def measure(self, warm: int, iters: int) -> None:
        """Time the registered cases round-robin, print their rows, and clear them."""
        for c in self.cases:
            for _ in range(warm):
                c["fn"]()
            c["times"] = []
        for _ in range(iters):
            for c in self.cases:
                t = time.perf_counter()
                c["fn"]()
                c["times"].append((time.perf_counter() - t) * 1e3)
        for c in self.cases:
            best, median = min(c["times"]), statistics.median(c["times"])
            c["best"], c["median"] = best, median
            floor_ms = 2 * c["madds"] / (self.peak * 1e9) * 1e3
            size, path = c["size"], c["path"]
            row = {
                "size": f"{size[0]}x{size[1]}", "model": c["model"], "runtime": c["runtime"], "min_ms": best,
                "ms": median, "runs": iters, "madds_g": c["madds"] / 1e9, "floor_ms": floor_ms,
                "x_floor": best / floor_ms, "file_mb": path.stat().st_size / 1e6 if path else None,
                **c["extra"],
            }  # fmt: skip
            ref = c["ref"]
            if ref is not None:
                row["ref"] = f"{ref['model']} {ref['runtime']}"
                row["speedup"], row["speedup_median"] = ref["best"] / best, ref["median"] / median
            self.rows.append(row)
            speed = f"{row['speedup']:.2f}x vs {ref['runtime']}" if ref is not None else ""
            size_txt = f"{row['file_mb']:.1f} MB" if path else "-"
            print(f"{row['size']:>10}  {c['model']:<38} {c['runtime']:<28} {best:8.1f} {median:8.1f}  "
                  f"{size_txt:>8}  {row['x_floor']:5.1f}x  {speed}", flush=True)  # fmt: skip
        self.cases = []

    def find(self, size: str, model: str, runtime: str) -> dict:
        return next(r for r in self.rows if (r["size"], r["model"], r["runtime"]) == (size, model, runtime))


#: int8 options tried on the torchvision-architecture model at the first size: (source graph, options).
#: "plain" is the fp32 file as exported (HardSwish), "friendly" the int8-friendly graph the rows use,
#: "unpadded" the int8-friendly graph with MobileNetV3's own depthwise widths (72, 120, 184, 200).
VARIANTS = {
    "int8 friendly, SE gates not folded (as a free-batch export)": ("friendly", dict(fold_se=False)),
    "int8 friendly, final upsampling a Resize": ("friendly", dict(final_upsampling=False)),
    "int8 friendly, depthwise widths not padded": ("unpadded", {}),
    "int8 plain graph (HardSigmoid fp32)": ("plain", dict(fp32_head=False, fold_muls=False)),
    "int8 HardSwish kept one op": ("plain", dict(optimize_before=False, fp32_head=False)),
    "int8 friendly, int8 head, Q/DQ on logits": ("friendly", dict(fp32_head=False)),
    "int8 friendly, x/6 not folded": ("friendly", dict(fold_muls=False)),
    "int8 qoperator": ("friendly", dict(quant_format="qoperator")),
    "int8 activations int8 (S8S8)": ("friendly", dict(activation_type="int8")),
    "int8 Conv only": ("friendly", dict(op_types_to_quantize=["Conv"])),
    "int8 symmetric activations": ("friendly", dict(extra_options={"ActivationSymmetric": True})),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default="512x1024,1024x2048")
    p.add_argument(
        "--iters", type=int, default=8, help="timed runs at the first size (fewer at larger sizes)"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--calibration-images", type=int, default=8)
    p.add_argument("--no-variants", action="store_true", help="skip the int8 option variants")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="only the first size's torchvision-architecture ONNX fp32 and int8 rows: for iterating",
    )
    a = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    if a.quick:
        sizes = sizes[:1]
    torch.set_num_threads(a.threads)
    # Random-init weights shrink activations layer by layer into denormal floats, which x86 computes
    # 10x slower; trained weights do not. Flush them to zero in torch and onnxruntime alike.
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    peak = peak_gflops(a.threads)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs visible, {a.threads} threads; "
          f"torch {torch.__version__}; peak fp32 matmul {peak:.1f} GFLOP/s")  # fmt: skip
    print("# columns: best-of-N and median ms/frame, file, best / compute floor (2 x MAdds / peak); "
          "ratios use the best time (least disturbed by other processes)")  # fmt: skip

    import torchvision

    tv = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=19
    ).eval()
    same = from_torchvision_lraspp(tv.state_dict()).eval()
    paper = {
        n: segkit.create_model(n, num_classes=19).eval()
        for n in ("lraspp_mobilenetv3_large", "lraspp_mobilenetv3_small")
    }
    tmp = Path(tempfile.mkdtemp(prefix="segkit-bench-"))
    sample = generate_sample(
        tmp / "sample", train=a.calibration_images, val=0, height=512, width=1024, seed=0
    )
    ds = CityscapesDataset(sample, "train", verbose=False)
    calib_rgb = [ds.load(i)[0] for i in range(len(ds))]
    bench = Bench(peak, a.threads, tmp)
    profile: dict[str, dict[str, float]] = {}
    warm: dict[str, dict[str, float]] = {}

    for si, size in enumerate(sizes):
        x = torch.from_numpy(model_input(calib_rgb[0], size, IMAGENET_MEAN, IMAGENET_STD, False)[0])
        feed = x.numpy()
        # onnxruntime's calibrator keeps every activation of every image in memory (and its
        # CalibMaxIntermediateOutputs option drops data), so larger sizes calibrate on fewer images.
        n_calib = len(calib_rgb) if si == 0 else min(len(calib_rgb), 2)
        batches = [
            model_input(rgb, size, IMAGENET_MEAN, IMAGENET_STD, False)[0] for rgb in calib_rgb[:n_calib]
        ]
        madds_tv = count_madds(copy.deepcopy(same), size)["total"]

        def eager(model: torch.nn.Module, t: torch.Tensor = x) -> Callable[[], Any]:
            def fn() -> Any:
                with torch.inference_mode():
                    return model(t)

            return fn

        tv_case = None
        if not a.quick:
            tv_case = bench.case(size, "torchvision lraspp_mobilenet_v3_large", "torch eager fp32",
                                 eager(tv), madds=madds_tv)  # fmt: skip
            bench.case(size, TV_ARCH, "torch eager fp32", eager(same), madds=madds_tv, ref=tv_case)
        fp32_tv, f_tv = bench.onnx_pair(TV_ARCH, same, size, feed, batches, madds=madds_tv, ref=tv_case)
        if si == 0 and not a.no_variants and not a.quick:
            unpadded = export_quantization_source(
                ExportWrapper(same, IMAGENET_MEAN, IMAGENET_STD), tmp / "unpadded.int8src.onnx",
                input_size=size, metadata=metadata(TV_ARCH, size), pad_depthwise=False, batch=1,
            )  # fmt: skip
            friendly = fp32_tv.with_suffix(".int8src.onnx")
            plain = export_onnx(  # the fp32 file's graph with its final upsampling still a Resize
                ExportWrapper(same, IMAGENET_MEAN, IMAGENET_STD), tmp / "plain.onnx", input_size=size,
                metadata=metadata(TV_ARCH, size), batch=1, final_upsampling=False,
            )  # fmt: skip
            sources = {"friendly": friendly, "plain": plain, "unpadded": unpadded}
            bench.onnx_pair(f"{TV_ARCH}, mask output", same, size, feed, batches, madds=madds_tv, argmax=True)
            for label, (source, kw) in VARIANTS.items():
                src = sources[source]
                path = quantize_int8(src, tmp / f"variant_{len(bench.cases)}.onnx", batches, **kw)
                ops = {k: v["count"] for k, v in fp32_operators(path).items()}
                bench.ort_case(size, TV_ARCH, label, path, feed, madds=madds_tv, ref=f_tv, fp32_ops=ops)
        for name, model in paper.items() if not a.quick else ():
            madds = count_madds(copy.deepcopy(model), size)["total"]
            bench.onnx_pair(name, model, size, feed, batches, madds=madds)
        bench.measure(warm=a.warmup if si == 0 else 1, iters=a.iters if si == 0 else max(3, a.iters // 2))
        pair = {"fp32": fp32_tv, "int8": fp32_tv.with_suffix(".int8.onnx")}
        warm[f"{size[0]}x{size[1]}"] = w = back_to_back(pair, a.threads, feed, runs=10 if si == 0 else 4)
        print(f"# back to back (10 runs in a row, warm): {TV_ARCH} onnxruntime fp32 {w['fp32']:.1f} ms, "
              f"int8 {w['int8']:.1f} ms = {w['fp32'] / w['int8']:.2f}x")  # fmt: skip
        if si == 0 and not a.quick:
            for label, path in (
                ("onnxruntime fp32", fp32_tv),
                ("onnxruntime int8", fp32_tv.with_suffix(".int8.onnx")),
            ):
                profile[label] = op_profile(path, a.threads, feed)
                top = ", ".join(f"{k} {v:.1f}" for k, v in list(profile[label].items())[:8])
                print(f"# where the time goes, {TV_ARCH} {label} @ {size[0]}x{size[1]} (ms/run by op): {top}")

    targets = {}
    for size in sizes:
        s = f"{size[0]}x{size[1]}"
        f32, i8 = bench.find(s, TV_ARCH, "onnxruntime fp32"), bench.find(s, TV_ARCH, "onnxruntime int8")
        targets[s] = {} if a.quick else {
            "ort_fp32_vs_torchvision_eager": f32["speedup"],
            "ort_fp32_target_2.5x_met": f32["speedup"] >= 2.5,
        }  # fmt: skip
        int8_b2b = warm[s]["fp32"] / warm[s]["int8"]
        targets[s] |= {
            "int8_vs_ort_fp32": i8["speedup"],
            "int8_vs_ort_fp32_back_to_back": int8_b2b,
            "int8_target_1.5x_met": min(i8["speedup"], int8_b2b) >= 1.5,
            "int8_file_ratio": i8["size_ratio"],
            "int8_file_target_30pct_met": i8["size_ratio"] <= 0.30,
        }
        text = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in targets[s].items()
        )
        print(f"targets @ {s}: {text}")
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": platform.machine(),
        "cpus_visible": os.cpu_count(), "threads": a.threads, "peak_fp32_gflops": peak,
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "rows": bench.rows, "back_to_back_ms": warm, "targets": targets, "op_profile_ms": profile,
    }  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)  # the exported files and the generated sample
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
