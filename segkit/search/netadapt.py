"""NetAdapt (Yang et al. 2018) as used by "Searching for MobileNetV3": shrink blocks against measured latency.

Each iteration ``i`` sets a latency target ``previous latency - step * decay**i``. For every candidate
block it proposes the *largest* expansion size (a multiple of ``divisor``) that brings the whole model's
latency under that target, keeps that many expansion filters (largest L1/L2 norm), transplants their
weights (BatchNorm statistics included), fine-tunes the proposal for a few steps and evaluates it. The
proposal kept is, as in the MobileNetV3 paper, the one that maximises ``ΔAcc / |ΔLatency|`` (NetAdapt
itself took the most accurate one); ``criterion="reward"`` takes the highest MnasNet-style reward
instead. The search stops after ``iterations`` or once ``target`` latency is reached; the result still
needs the usual long fine-tune.

As in the paper, there are two kinds of proposal: a block's expansion size (its input/output widths
stay, so nothing else changes), and the bottleneck width shared by a residual group (the same channels
are removed from every block of the group, so residual additions stay aligned, and from the inputs of
the layer reading the group). Groups whose output feeds the decoder keep their width.

    python -m segkit.search.netadapt [out=runs/netadapt] [iterations=3] [latency.estimator=table] ...

(defaults and every key: ``conf/netadapt.yaml``; ``key=value`` arguments override them).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segkit.cli import Command, compose
from segkit.export.onnx import ExportWrapper, export_onnx
from segkit.formats.checkpoint import description_of, load_checkpoint, model_metadata, save_checkpoint
from segkit.formats.description import ModelDescription
from segkit.models import architecture_config, build_model, build_model_from_checkpoint
from segkit.models.encoders.mobilenetv3 import block_spec, new_block
from segkit.search.arch import (
    ResidualGroup,
    apply_expansions,
    encoder_blocks,
    expanded_channels,
    group_forbidden_widths,
    out_channels,
    residual_groups,
    shrink_group,
    shrink_model,
)
from segkit.search.latency import latency_estimator, torch_threads
from segkit.search.proxy import ProxyTask, proxy_data, train_steps
from segkit.search.reward import MOBILENETV3_W, reward

HISTORY_FORMAT = "segkit-netadapt-history"

Criterion = Literal["ratio", "reward"]


@dataclass
class Proposal:
    """One shrink proposal of an iteration, after its short fine-tune.

    ``kind="expansion"``: block ``block``'s expansion goes from ``width_before`` to ``width``;
    ``kind="bottleneck"``: the residual group ``blocks`` (starting at ``block``) gets that output width.
    """

    block: int
    width_before: int
    width: int
    latency: float
    acc: float
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    kind: Literal["expansion", "bottleneck"] = "expansion"
    blocks: tuple[int, ...] = ()

    def record(self, prev_acc: float, prev_latency: float, reward_target: float, w: float) -> dict[str, Any]:
        """JSON-able summary with the quantities both criteria look at."""
        d: dict[str, Any] = {
            f: getattr(self, f) for f in ("kind", "block", "width_before", "width", "latency", "acc")
        }
        d["blocks"] = list(self.blocks) or [self.block]
        d["ratio"] = accuracy_latency_ratio(self.acc, self.latency, prev_acc, prev_latency)
        d["reward"] = reward(max(self.acc, 0.0), self.latency, reward_target, w)
        return d


def accuracy_latency_ratio(acc: float, latency: float, prev_acc: float, prev_latency: float) -> float:
    """``ΔAcc / |ΔLatency|`` of a proposal against the current model (accuracy per ms saved)."""
    d_lat = abs(latency - prev_latency)
    if d_lat == 0:
        raise ValueError(f"proposal has the same latency as the current model ({latency}): ratio undefined")
    return (acc - prev_acc) / d_lat


def select_proposal(
    proposals: Sequence[Proposal],
    *,
    prev_acc: float,
    prev_latency: float,
    criterion: Criterion = "ratio",
    reward_target: float | None = None,
    w: float = MOBILENETV3_W,
) -> int:
    """Index of the proposal to keep; the first wins ties.

    ``"ratio"``: maximal ``ΔAcc/|ΔLatency|`` (MobileNetV3's NetAdapt). ``"reward"``: maximal
    ``acc * (latency / reward_target) ** w``.
    """
    if not proposals:
        raise ValueError("select_proposal needs at least one proposal")
    if criterion == "ratio":
        scores = [accuracy_latency_ratio(p.acc, p.latency, prev_acc, prev_latency) for p in proposals]
    elif criterion == "reward":
        if reward_target is None:
            raise ValueError("criterion='reward' needs reward_target (a latency)")
        scores = [reward(max(p.acc, 0.0), p.latency, reward_target, w) for p in proposals]
    else:
        raise ValueError(f"criterion must be 'ratio' or 'reward', got {criterion!r}")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def candidate_sizes(
    expanded: int, input_channels: int, *, divisor: int = 8, min_channels: int = 8
) -> list[int]:
    """Smaller expansion sizes to try, largest first: multiples of ``divisor``, never ``input_channels``."""
    if divisor < 1 or divisor % 8:
        raise ValueError(f"divisor must be a positive multiple of 8 (torchvision's rounding), got {divisor}")
    start = (expanded - 1) // divisor * divisor
    lowest = max(min_channels, 8)
    return [e for e in range(start, lowest - 1, -divisor) if e != input_channels and e % 8 == 0]


def largest_size_meeting(
    model: nn.Module,
    block: int,
    target_latency: float,
    latency: Callable[[nn.Module], float],
    *,
    divisor: int = 8,
    min_channels: int = 8,
) -> tuple[int, float] | None:
    """The largest expansion of ``block`` whose model latency is <= ``target_latency``, and that latency.

    Probes swap an untrained block of the probed size into ``model`` (restored afterwards): latency
    depends on shapes only. Sizes are tried from the largest down, so the first hit is the answer.
    Returns None when even the smallest size misses the target.
    """
    index, old = encoder_blocks(model)[block]
    spec = block_spec(old)
    if not spec.shrinkable:
        return None
    features = model.encoder.features if hasattr(model, "encoder") else model.features
    try:
        for e in candidate_sizes(
            spec.expanded_channels, spec.input_channels, divisor=divisor, min_channels=min_channels
        ):
            features[index] = new_block(replace(spec, expanded_channels=e)).eval()
            lat = float(latency(model))
            if lat <= target_latency:
                return e, lat
    finally:
        features[index] = old
    return None


def largest_group_width_meeting(
    model: nn.Module,
    group: ResidualGroup,
    target_latency: float,
    latency: Callable[[nn.Module], float],
    *,
    divisor: int = 8,
    min_channels: int = 8,
) -> tuple[int, float] | None:
    """The largest bottleneck width of residual ``group`` meeting ``target_latency``, and that latency.

    Probes rebuild the group (and the layer reading it) untrained in ``model``, which is restored after.
    """
    if divisor < 1 or divisor % 8:
        raise ValueError(f"divisor must be a positive multiple of 8 (torchvision's rounding), got {divisor}")
    forbidden = group_forbidden_widths(model, group)
    start = (group.channels - 1) // divisor * divisor
    widths = [c for c in range(start, max(min_channels, 8) - 1, -divisor) if c not in forbidden]
    features = model.encoder.features if hasattr(model, "encoder") else model.features
    saved = list(features)
    exp = expanded_channels(model)
    try:
        for c in widths:
            outs = out_channels(model)
            for b in group.blocks:
                outs[b] = c
            apply_expansions(model, exp, outs)
            lat = float(latency(model))
            for i, m in enumerate(saved):
                features[i] = m
            if lat <= target_latency:
                return c, lat
    finally:
        for i, m in enumerate(saved):
            features[i] = m
    return None


@dataclass
class NetAdaptResult:
    """The adapted model (after its last short fine-tune), its expansions and the search history."""

    model: nn.Module
    expanded_channels: list[int]
    history: dict[str, Any]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


def netadapt(
    model: nn.Module,
    *,
    latency: Callable[[nn.Module], float],
    fine_tune: Callable[[nn.Module, int], Any],
    evaluate: Callable[[nn.Module], float],
    iterations: int,
    step: float,
    decay: float = 1.0,
    target: float | None = None,
    fine_tune_steps: int = 1,
    criterion: Criterion = "ratio",
    w: float = MOBILENETV3_W,
    norm: Literal["l1", "l2"] = "l1",
    blocks: Sequence[int] | None = None,
    bottlenecks: bool = True,
    divisor: int = 8,
    min_channels: int = 8,
    history_path: str | os.PathLike | None = None,
    log: Callable[[str], Any] | None = print,
) -> NetAdaptResult:
    """Run NetAdapt on a segkit MobileNetV3 model (see the module docstring).

    Args:
        model: the starting (trained) model; it is not modified.
        latency: model -> ms (a real meter, a :class:`~segkit.search.latency.TableLatency`, ...).
        fine_tune: ``fine_tune(model, steps)`` trains a proposal in place (short-term fine-tune).
        evaluate: model -> accuracy (higher is better, e.g. mIoU).
        iterations: maximum number of iterations.
        step: latency reduction asked for in the first iteration (ms); iteration ``i`` asks for
            ``step * decay**i`` less than the current model.
        target: stop once the latency is <= this (ms); also the reward's target. None: run all iterations.
        fine_tune_steps: steps passed to ``fine_tune`` per proposal.
        criterion: ``"ratio"`` (max ΔAcc/|ΔLat|, the paper) or ``"reward"`` (max MnasNet reward).
        w: the reward's exponent.
        norm: ``"l1"``/``"l2"`` filter norm deciding which expansion channels stay.
        blocks: block positions that may be shrunk (default: every block with an expansion conv).
        bottlenecks: also propose narrower residual groups (all their blocks must be in ``blocks``).
        divisor, min_channels: expansion sizes are multiples of ``divisor`` and at least ``min_channels``.
        history_path: JSON file rewritten after every iteration.
        log: progress messages (None: silent).
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not step > 0 or not math.isfinite(step):
        raise ValueError(f"step must be a positive latency (ms), got {step}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    if target is not None and not target > 0:
        raise ValueError(f"target must be a positive latency (ms), got {target}")
    if criterion not in ("ratio", "reward"):
        raise ValueError(f"criterion must be 'ratio' or 'reward', got {criterion!r}")
    say = log or (lambda msg: None)
    current = copy.deepcopy(model)
    n_blocks = len(encoder_blocks(current))
    allowed = list(range(n_blocks)) if blocks is None else [int(b) for b in blocks]
    for b in allowed:
        if not 0 <= b < n_blocks:
            raise ValueError(f"blocks: {b} is not a block position (0..{n_blocks - 1})")

    lat = float(latency(current))
    acc = float(evaluate(current))
    history: dict[str, Any] = {
        "format": HISTORY_FORMAT,
        "settings": {
            "iterations": iterations,
            "step": step,
            "decay": decay,
            "target": target,
            "fine_tune_steps": fine_tune_steps,
            "criterion": criterion,
            "w": w,
            "norm": norm,
            "blocks": allowed,
            "bottlenecks": bottlenecks,
            "divisor": divisor,
            "min_channels": min_channels,
        },
        "initial": {
            "latency": lat,
            "acc": acc,
            "expanded_channels": expanded_channels(current),
            "out_channels": out_channels(current),
        },
        "iterations": [],
    }
    say(f"netadapt: start latency {lat:.3f} ms, acc {acc:.4f}, expansions {expanded_channels(current)}")
    stopped = "iterations done"
    for it in range(iterations):
        if target is not None and lat <= target:
            stopped = "target reached"
            break
        t0 = time.perf_counter()
        it_step = step * decay**it
        it_target = lat - it_step
        reward_target = target if target is not None else it_target
        proposals: list[Proposal] = []
        for b in allowed:
            hit = largest_size_meeting(
                current, b, it_target, latency, divisor=divisor, min_channels=min_channels
            )
            if hit is None:
                continue
            size, p_lat = hit
            before = expanded_channels(current)[b]
            candidate, _ = shrink_model(current, b, size, norm)
            fine_tune(candidate, fine_tune_steps)
            p_acc = float(evaluate(candidate))
            proposals.append(Proposal(b, before, size, p_lat, p_acc, candidate))
            say(f"  iter {it}: block {b} expansion {before}->{size}: {p_lat:.3f} ms, acc {p_acc:.4f}")
        groups = residual_groups(current) if bottlenecks else []
        for g in (g for g in groups if all(b in allowed for b in g.blocks)):
            hit = largest_group_width_meeting(
                current, g, it_target, latency, divisor=divisor, min_channels=min_channels
            )
            if hit is None:
                continue
            width, p_lat = hit
            candidate, _ = shrink_group(current, g, width, norm)
            fine_tune(candidate, fine_tune_steps)
            p_acc = float(evaluate(candidate))
            proposals.append(
                Proposal(g.blocks[0], g.channels, width, p_lat, p_acc, candidate, "bottleneck", g.blocks)
            )
            grp = f"group {list(g.blocks)} width {g.channels}->{width}"
            say(f"  iter {it}: {grp}: {p_lat:.3f} ms, acc {p_acc:.4f}")
        if not proposals:
            stopped = f"no block can reach the iteration target {it_target:.4g} ms"
            say(f"netadapt: stop: {stopped}")
            break
        k = select_proposal(
            proposals, prev_acc=acc, prev_latency=lat, criterion=criterion, reward_target=reward_target, w=w
        )
        chosen = proposals[k]
        records = [p.record(acc, lat, reward_target, w) for p in proposals]
        history["iterations"].append(
            {
                "iteration": it,
                "step": it_step,
                "target_latency": it_target,
                "previous_latency": lat,
                "previous_acc": acc,
                "latency": chosen.latency,
                "acc": chosen.acc,
                "chosen_kind": chosen.kind,
                "chosen_block": chosen.block,
                "chosen_blocks": list(chosen.blocks) or [chosen.block],
                "width_before": chosen.width_before,
                "width": chosen.width,
                "expanded_channels": expanded_channels(chosen.model),
                "out_channels": out_channels(chosen.model),
                "proposals": records,
                "seconds": time.perf_counter() - t0,
            }
        )
        assert chosen.model is not None
        current, lat, acc = chosen.model, chosen.latency, chosen.acc
        for p in proposals:
            p.model = None
        what = f"{chosen.kind} of {list(chosen.blocks) or chosen.block} -> {chosen.width}"
        say(f"netadapt: iter {it}: keep {what}: {lat:.3f} ms, acc {acc:.4f}")
        if history_path is not None:
            _write_json(Path(history_path), history)
    else:
        if target is not None and lat <= target:
            stopped = "target reached"
    history["final"] = {
        "latency": lat,
        "acc": acc,
        "expanded_channels": expanded_channels(current),
        "out_channels": out_channels(current),
        "stopped": stopped,
    }
    if getattr(current, "model_config", None) is not None:
        history["adapted_config"] = architecture_config(current)
    if history_path is not None:
        _write_json(Path(history_path), history)
    return NetAdaptResult(current, expanded_channels(current), history)


# --------------------------------------------------------------------------- the command
def load_config(argv: list[str]) -> DictConfig:
    """``conf/netadapt.yaml`` composed with ``key=value`` overrides (an unknown key is a UsageError)."""
    return compose("netadapt", argv)


def _measure_pair(meter: Any, start: nn.Module, adapted: nn.Module, rounds: int = 3) -> dict[str, float]:
    """Whole-model latency of both models, measured alternately (shared-machine load hits both alike)."""
    a, b = [], []
    for _ in range(rounds):
        a.append(float(meter(start)))
        b.append(float(meter(adapted)))
    return {"start_ms": statistics.median(a), "adapted_ms": statistics.median(b), "rounds": rounds}


def save_adapted_model(
    out: Path, model: nn.Module, description: ModelDescription, input_size: list[int]
) -> dict[str, str]:
    """Write the adapted model as ordinary files: a checkpoint, its model config and an ONNX graph.

    ``adapted.pt`` is a segkit checkpoint like any other (its ``model_config`` holds the block table), so
    ``Predictor.from_file``, ``python -m segkit.export`` and ``train_seg.py init_checkpoint=`` take it;
    ``adapted.yaml`` is the model config alone (``segkit.create_model(path)``).
    """
    config = architecture_config(model)
    description = description.replace(input_size=tuple(input_size))
    ckpt = save_checkpoint(
        out / "adapted.pt", {**model_metadata(config, description), "model": model.state_dict()}
    )
    yaml_path = out / "adapted.yaml"
    yaml_config = OmegaConf.create({"_target_": "segkit.models.build_model", **config})
    yaml_path.write_text(OmegaConf.to_yaml(yaml_config))
    meta = description.replace(dynamic=False).to_dict()
    wrapper = ExportWrapper(model, description.mean, description.std)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        onnx_path = export_onnx(wrapper, out / "adapted.onnx", input_size=input_size, metadata=meta)
    return {"checkpoint": str(ckpt), "model_config": str(yaml_path), "onnx": str(onnx_path)}


def run_search(cfg: Mapping[str, Any], log: Any = print) -> dict[str, Any]:
    """Run the whole command for a resolved config; returns the summary also written to ``history.json``."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    input_size = [int(s) for s in cfg["input_size"]]
    if len(input_size) != 2:
        raise ValueError(f"input_size must be [H, W], got {cfg['input_size']}")
    torch.manual_seed(int(cfg["seed"]))
    tr = cfg["train"]
    with torch_threads(int(tr["threads"])):
        train_set, val_set = proxy_data(cfg["data"], out, log)
        if cfg.get("init_checkpoint"):
            ckpt = load_checkpoint(cfg["init_checkpoint"])
            model = build_model_from_checkpoint(ckpt)
            description = description_of(ckpt, source=cfg["init_checkpoint"])
        else:
            model = build_model(**{k: v for k, v in cfg["model"].items() if k != "_target_"})
            description = ModelDescription(model_name=model.model_config.get("name") or "")
        num_classes = int(model.model_config["num_classes"])
        bs, lr, seed = int(tr["batch_size"]), float(tr["lr"]), int(cfg["seed"])
        task = ProxyTask(train_set, val_set, lr=lr, batch_size=bs, seed=seed, num_classes=num_classes)
        t0 = time.perf_counter()
        loss = train_steps(model, train_set, int(tr["pretrain_steps"]), lr=lr, batch_size=bs, seed=seed)
        took = time.perf_counter() - t0
        log(f"pre-trained {tr['pretrain_steps']} steps (last loss {loss:.3f}) in {took:.1f} s")

        latency, lat_info = latency_estimator(cfg, model, input_size, out)
        whole = lat_info.pop("whole_model_meter", None)
        if "calibration" in lat_info:
            log(f"latency table calibration: {lat_info['calibration']}")
        start = float(latency(model))
        sc = cfg["search"]
        target = float(sc["target"]) * start if sc["target"] is not None else None

        t0 = time.perf_counter()
        result = netadapt(
            model,
            latency=latency,
            fine_tune=lambda m, steps: task.fine_tune(m, steps, seed_offset=1, lr_scale=0.5),
            evaluate=task.evaluate,
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
        task.fine_tune(adapted, int(tr["final_steps"]), seed_offset=2, lr_scale=0.5)
        final_miou = task.evaluate(adapted)
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
        history["run"]["outputs"] = save_adapted_model(out, adapted, description, input_size)
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    log(f"wrote {out / 'history.json'} and {', '.join(history['run']['outputs'].values())}")
    return history


COMMAND = Command(
    prog="python -m segkit.search.netadapt",
    config_name="netadapt",
    usage="[out=<dir>] [model=<name>] [init_checkpoint=<.pt>] [search.target=0.75] [key=value ...]",
    run=lambda cfg: run_search(cfg) and 0,
    user_errors=(ValueError, FileNotFoundError),
)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``key=value`` overrides of ``conf/netadapt.yaml``; a mistake is one line and exit 2."""
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
