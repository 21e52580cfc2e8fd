"""The NetAdapt command: data, short fine-tunes, mIoU and the latency estimator around :func:`netadapt`.

Used by ``python -m segkit.search.netadapt key=value ...`` (defaults: ``conf/search/netadapt.yaml``).
Accuracy is the Cityscapes mIoU on the validation split (``SegmentationMetrics``); latency is measured on
this machine (onnxruntime by default) through a calibrated per-block lookup table.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segkit.search.arch import export_adapted_onnx, save_adapted
from segkit.search.latency import (
    LatencyTable,
    MAddsLatency,
    OnnxRuntimeMeter,
    TableLatency,
    TorchMeter,
    onnx_block_timer,
    torch_block_timer,
    torch_threads,
)
from segkit.search.netadapt import netadapt

ESTIMATORS = ("table", "onnx", "torch", "madds")


def load_config(argv: list[str]) -> DictConfig:
    """``conf/search/netadapt.yaml`` merged with ``key=value`` command-line overrides (unknown keys fail)."""
    from segkit.config import load_group

    base = load_group("search", "netadapt")
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"not a key=value argument: {arg!r}")
    cli = OmegaConf.from_dotlist(argv)
    OmegaConf.set_struct(base, True)
    OmegaConf.set_struct(base.model_overrides, False)  # takes any model key
    try:
        cfg = OmegaConf.merge(base, cli)
    except Exception as exc:  # omegaconf's ConfigKeyError & co.
        raise ValueError(f"bad override: {exc}".splitlines()[0]) from None
    assert isinstance(cfg, DictConfig)
    return cfg


def _endless(dataset: torch.utils.data.Dataset, batch_size: int, seed: int) -> Iterator[Any]:
    g = torch.Generator().manual_seed(seed)
    while True:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, generator=g, drop_last=True
        )
        yield from loader


def train_steps(
    model: nn.Module, dataset: torch.utils.data.Dataset, steps: int, *, lr: float, batch_size: int, seed: int
) -> float:
    """``steps`` SGD steps (momentum 0.9) of pixel cross-entropy (ignore 255); returns the last loss.

    The batch order depends on ``seed`` only, so proposals fine-tuned with the same seed see the same data.
    """
    if steps <= 0:
        return float("nan")
    if len(dataset) < batch_size:
        raise ValueError(f"the training split has {len(dataset)} images, fewer than batch_size={batch_size}")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)
    batches = _endless(dataset, batch_size, seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def miou(model: nn.Module, dataset: torch.utils.data.Dataset, num_classes: int = 19) -> float:
    """Cityscapes mIoU of ``model`` over ``dataset`` (0..1)."""
    from segkit.evaluation import SegmentationMetrics

    metrics = SegmentationMetrics(num_classes=num_classes)
    model.eval()
    for i in range(len(dataset)):
        x, y = dataset[i]
        metrics.update(model(x[None]).argmax(1), y[None])
    value = metrics.compute()["miou"]
    if value != value:  # NaN: no labelled pixel at all
        raise ValueError("the validation split has no labelled pixels: mIoU undefined")
    return float(value)


def build_latency(
    cfg: Mapping[str, Any], model: nn.Module, input_size: list[int], out: Path
) -> tuple[Any, dict]:
    """The latency estimator the config asks for, and a description of it (with the calibration)."""
    lat = cfg["latency"]
    kind = lat["estimator"]
    shape = (1, 3, *input_size)
    threads, warmup, runs = int(lat["threads"]), int(lat["warmup"]), int(lat["runs"])
    meters = {
        "onnx": lambda: OnnxRuntimeMeter(shape, threads=threads, warmup=warmup, runs=runs),
        "torch": lambda: TorchMeter(shape, threads=threads, warmup=warmup, runs=runs),
    }
    info: dict[str, Any] = {"estimator": kind, "threads": threads, "warmup": warmup, "runs": runs}
    if kind == "madds":
        info["unit"] = "million multiply-adds (not ms)"
        return MAddsLatency(input_size, ms_per_mmadd=1.0), info
    if kind in meters:
        return meters[kind](), info
    if kind != "table":
        raise ValueError(f"latency.estimator must be one of {list(ESTIMATORS)}, got {kind!r}")
    timer_kind = lat["block_timer"]
    timers = {"onnx": onnx_block_timer, "torch": torch_block_timer}
    if timer_kind not in timers:
        raise ValueError(f"latency.block_timer must be 'onnx' or 'torch', got {timer_kind!r}")
    table_path = Path(lat["table"]) if lat["table"] else out / "latency_table.json"
    table = LatencyTable(timers[timer_kind](threads=threads, warmup=warmup, runs=runs), path=table_path)
    est = TableLatency(table, input_size)
    info.update(
        block_timer=timer_kind, table=str(table_path), calibration=est.calibrate(model, meters[timer_kind]())
    )
    info["whole_model_meter"] = meters[timer_kind]()
    return est, info


def _measure_pair(meter: Any, start: nn.Module, adapted: nn.Module, rounds: int = 3) -> dict[str, float]:
    """Whole-model latency of both models, measured alternately (shared-machine load hits both alike)."""
    a, b = [], []
    for _ in range(rounds):
        a.append(float(meter(start)))
        b.append(float(meter(adapted)))
    return {"start_ms": statistics.median(a), "adapted_ms": statistics.median(b), "rounds": rounds}


def run_search(cfg: Mapping[str, Any], log: Any = print) -> dict[str, Any]:
    """Run the whole command for a resolved config; returns the summary also written to ``history.json``."""
    from segkit.data import CityscapesDataset
    from segkit.data.sample import generate_sample
    from segkit.models import create_model

    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    input_size = [int(s) for s in cfg["input_size"]]
    if len(input_size) != 2:
        raise ValueError(f"input_size must be [H, W], got {cfg['input_size']}")
    torch.manual_seed(int(cfg["seed"]))
    tr = cfg["train"]
    with torch_threads(int(tr["threads"])):
        data = cfg["data"]
        root = data["root"]
        if root is None:
            s = data["sample"]
            root = generate_sample(out / "sample", train=s["train"], val=s["val"], height=s["height"],
                                   width=s["width"], seed=s["seed"])  # fmt: skip
            log(f"generated sample dataset: {root}")
        train_set = CityscapesDataset(root, data["train_split"], verbose=False)
        val_set = CityscapesDataset(root, data["val_split"], verbose=False)

        if cfg.get("init_checkpoint"):
            from segkit.engine.checkpoint import build_model_from_checkpoint

            model = build_model_from_checkpoint(cfg["init_checkpoint"])
        else:
            model = create_model(cfg["model"], **(cfg.get("model_overrides") or {}))
        num_classes = int(model.model_config["num_classes"])
        bs, lr, seed = int(tr["batch_size"]), float(tr["lr"]), int(cfg["seed"])
        t0 = time.perf_counter()
        loss = train_steps(model, train_set, int(tr["pretrain_steps"]), lr=lr, batch_size=bs, seed=seed)
        took = time.perf_counter() - t0
        log(f"pre-trained {tr['pretrain_steps']} steps (last loss {loss:.3f}) in {took:.1f} s")

        latency, lat_info = build_latency(cfg, model, input_size, out)
        whole = lat_info.pop("whole_model_meter", None)
        if "calibration" in lat_info:
            log(f"latency table calibration: {lat_info['calibration']}")
        start = float(latency(model))
        sc = cfg["search"]
        target = float(sc["target"]) * start if sc["target"] is not None else None

        def fine_tune(m: nn.Module, steps: int) -> None:
            train_steps(m, train_set, steps, lr=lr * 0.5, batch_size=bs, seed=seed + 1)

        t0 = time.perf_counter()
        result = netadapt(
            model,
            latency=latency,
            fine_tune=fine_tune,
            evaluate=lambda m: miou(m, val_set, num_classes),
            iterations=int(sc["iterations"]),
            step=float(sc["step"]) * start,
            decay=float(sc["decay"]),
            target=target,
            fine_tune_steps=int(tr["fine_tune_steps"]),
            criterion=sc["criterion"],
            w=float(sc["w"]),
            norm=sc["norm"],
            blocks=sc["blocks"],
            bottlenecks=bool(sc["bottlenecks"]),
            divisor=int(sc["divisor"]),
            min_channels=int(sc["min_channels"]),
            history_path=out / "history.json",
            log=log,
        )
        search_s = time.perf_counter() - t0
        adapted = result.model
        train_steps(adapted, train_set, int(tr["final_steps"]), lr=lr * 0.5, batch_size=bs, seed=seed + 2)
        final_miou = miou(adapted, val_set, num_classes)
        if hasattr(latency, "table"):
            latency.table.save()
        history = result.history
        history["run"] = {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
            "processor": platform.processor() or platform.machine(),
            "config": cfg,
            "latency": lat_info,
            "search_seconds": search_s,
            "after_final_fine_tune": {"steps": int(tr["final_steps"]), "miou": final_miou},
        }
        if whole is not None:  # the table's prediction checked against a real measurement
            history["run"]["measured"] = _measure_pair(whole, model, adapted)
        ckpt = save_adapted(out / "adapted.pt", adapted, input_size=input_size)
        onnx_path = export_adapted_onnx(adapted, out / "adapted.onnx", input_size=input_size)
        history["run"]["outputs"] = {"checkpoint": str(ckpt), "onnx": str(onnx_path)}
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    log(f"wrote {out / 'history.json'}, {ckpt}, {onnx_path}")
    return history
