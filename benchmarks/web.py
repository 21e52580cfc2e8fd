"""In-browser latency: the web app's ONNX Runtime Web (WASM) next to native onnxruntime, same files, one run.

    python benchmarks/web.py [--model lraspp_mobilenetv3_large] [--size 512x1024] [--runs 10] [--threads 2]

Exports a random-weight model as the export command does for the web (preprocess=true argmax=true batch=1,
fp32 and int8, calibrated on a generated sample), builds the app
(segkit.web.write_web_app) and times ``session.run`` on one fixed 512x1024 uint8 picture:
- native onnxruntime in this process, ``--threads`` intra-op threads;
- headless Chromium, WASM SIMD with ``--threads`` threads (page served with the cross-origin isolation
  headers);
- headless Chromium, WASM SIMD on one thread (the same page served without them: no SharedArrayBuffer).
Each figure is the median of ``--runs`` runs after ``--warmup`` runs. The random model's BatchNorm
statistics are measured on the sample, so its activations have the scale of a trained model's: with
default statistics they shrink into denormal floats, which WebAssembly (no flush-to-zero) runs many
times slower. Prints a table and, last, one JSON
line. Needs Chromium (SEGKIT_CHROMIUM, default /usr/bin/chromium) and `make web-runtime`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def native_times(path: Path, threads: int, runs: int, warmup: int) -> list[float]:
    """ms per session.run of native onnxruntime on a fixed random picture."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    feed = {inp.name: np.random.default_rng(0).integers(0, 256, inp.shape, dtype=np.uint8)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(1000 * (time.perf_counter() - t))
    return times


def export_models(out: Path, name: str, size: tuple[int, int], log: Any) -> dict[str, Path]:
    """fp32 + int8 web exports (preprocess, argmax, batch 1) of a random-weight ``name``."""
    import cv2
    import torch

    import segkit
    from segkit.config import load_group
    from segkit.data import CityscapesDataset
    from segkit.data.sample import generate_sample
    from segkit.engine.checkpoint import IMAGENET_MEAN, IMAGENET_STD, model_metadata, save_checkpoint
    from segkit.export import export_checkpoint, int8_path
    from segkit.export.__main__ import load_config

    sample = generate_sample(out / "sample", train=8, val=2, test=0, height=256, width=512, seed=0)
    torch.manual_seed(0)
    model = segkit.create_model(name, num_classes=19)
    train = CityscapesDataset(sample, "train", verbose=False)
    pics = [cv2.resize(train.load(i)[0], size[::-1]) for i in range(4)]
    x = (torch.from_numpy(np.stack(pics)).float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()(x.permute(0, 3, 1, 2).contiguous())
    model.eval()
    meta = model_metadata(load_group("model", name), input_size=list(size))
    ckpt = save_checkpoint(out / "model.pt", {"model": model.state_dict(), **meta})
    onnx_path = out / "model.onnx"
    cfg = load_config(
        [
            f"checkpoint={ckpt}",
            f"output={onnx_path}",
            f"input_size=[{size[0]},{size[1]}]",
            "preprocess=true",
            "argmax=true",
            "batch=1",
            "quantize=int8",
            f"verify.root={sample}",
            "verify.images=1",
            "calibration.images=8",
            "quantization.max_miou_drop=100",  # random weights: mIoU means nothing here
        ]
    )
    export_checkpoint(cfg, log=log)
    return {"fp32": onnx_path, "int8": int8_path(onnx_path)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lraspp_mobilenetv3_large")
    ap.add_argument("--size", default="512x1024")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="write the exports and the app here")
    args = ap.parse_args(argv)
    size = tuple(int(s) for s in args.size.lower().split("x"))
    from segkit.web import make_server, write_web_app
    from segkit.web.headless import BrowserUnavailable, launch_chromium, start_playwright

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(args.keep or tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        models = export_models(tmp, args.model, size, log=lambda *a: print(*a, file=sys.stderr))
        print(f"exported in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        app = write_web_app(tmp / "app", [models["fp32"], models["int8"]], webgpu=False)
        servers = {iso: make_server(app, 0, isolate=iso, quiet=True) for iso in (True, False)}
        for srv in servers.values():
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        rows: list[dict[str, Any]] = []
        ua_version = ""
        try:
            pw = start_playwright()
        except BrowserUnavailable as exc:
            print(exc, file=sys.stderr)
            return 2
        try:
            ctx = launch_chromium(pw, tmp / "profile")
            try:
                for precision, path in models.items():
                    times = native_times(path, args.threads, args.runs, args.warmup)
                    rows.append(
                        {
                            "precision": precision,
                            "runtime": f"native onnxruntime, {args.threads} threads",
                            "times": times,
                        }
                    )
                    for srv in servers.values():
                        page = ctx.new_page()
                        url = f"http://127.0.0.1:{srv.server_port}/?model=models/{path.name}&threads={args.threads}"
                        page.goto(url)
                        page.wait_for_function("() => window.segkit && segkit.loads >= 1", timeout=300_000)
                        if page.evaluate("() => segkit.error"):
                            raise RuntimeError(page.evaluate("() => segkit.error"))
                        ua_version = page.evaluate(
                            "() => navigator.userAgent.match(/Chrome\\/[0-9.]+/)?.[0] ?? ''"
                        )
                        res = page.evaluate(
                            f"() => segkit.benchmark({{runs: {args.runs}, warmup: {args.warmup}}})"
                        )
                        page.close()
                        rows.append(
                            {
                                "precision": precision,
                                "runtime": f"browser, {res['backend']}",
                                "times": res["times"],
                                "threads": res["threads"],
                                "cross_origin_isolated": res["crossOriginIsolated"],
                            }
                        )
            finally:
                ctx.close()
        finally:
            pw.stop()
            for srv in servers.values():
                srv.shutdown()
                srv.server_close()
        sizes = {k: p.stat().st_size for k, p in models.items()}
    native = {
        r["precision"]: statistics.median(r["times"]) for r in rows if r["runtime"].startswith("native")
    }
    print(
        f"\n{args.model} at {size[0]}x{size[1]}, batch 1, uint8 RGB in, mask out; ms per session.run, "
        f"median (min) of {args.runs} after {args.warmup} warm-up runs\n"
    )
    print("| model | runtime | ms | x native |")
    print("|---|---|---|---|")
    for r in rows:
        med, lo = statistics.median(r["times"]), min(r["times"])
        r["median_ms"], r["min_ms"] = med, lo
        r["x_native"] = med / native[r["precision"]]
        print(
            f"| {r['precision']} ({sizes[r['precision']] / 1e6:.1f} MB) | {r['runtime']} "
            f"| {med:.1f} ({lo:.1f}) | {r['x_native']:.2f} |"
        )
    summary = {
        "benchmark": "web",
        "model": args.model,
        "size": list(size),
        "runs": args.runs,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "browser": ua_version,
        "rows": [{k: v for k, v in r.items() if k != "times"} for r in rows],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
