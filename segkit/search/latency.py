"""Latency of a model on *this* platform: measured, or predicted from a per-block lookup table.

"Searching for MobileNetV3" optimises measured on-device latency, not MAdds. Two ways are offered:

* :class:`OnnxRuntimeMeter` / :class:`TorchMeter` time a whole model (or any single-input module): export
  to ONNX in a temporary folder and time onnxruntime, or time eager PyTorch; warm-up runs, then the
  median of ``runs`` timed runs with a fixed thread count.
* :class:`LatencyTable` + :class:`TableLatency` follow NetAdapt: every inverted-residual block
  configuration is timed once, in isolation, at its input resolution, and cached under its
  :class:`~segkit.models.BlockSpec` and input ``(H, W)``. A candidate's latency is then the sum of its
  blocks' entries plus a constant for everything else (stem, last conv, decoder, head). *Approximation:*
  it ignores effects between layers (cache reuse, operator fusion across blocks, scheduling); it is
  calibrated once against a measurement of the whole model so the absolute value is right for the
  starting point, and the search only changes block expansions so the constant part stays constant.

All latencies are in milliseconds. :class:`MAddsLatency` is a deterministic stand-in (MAdds x a
constant) for tests and for platform-independent searches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from segkit.inference.backends import OnnxBackend
from segkit.models.encoders.mobilenetv3 import BlockSpec, block_spec, new_block
from segkit.models.summary import count_madds
from segkit.search.arch import encoder_blocks


@runtime_checkable
class LatencyMeter(Protocol):
    """Anything that maps a model to its latency in milliseconds."""

    def __call__(self, model: nn.Module) -> float: ...


def _shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be N x C x H x W positive ints, got {list(input_shape)}")
    return shape


def median_ms(
    fn: Callable[[], Any], *, warmup: int, runs: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median wall time of ``fn()`` in ms over ``runs`` calls after ``warmup`` untimed ones."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1000.0)
    return float(statistics.median(times))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` intra-op torch threads (restored afterwards); None leaves it alone."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class TorchMeter:
    """Eager PyTorch latency on the CPU: ``input_shape`` N x C x H x W, ``threads`` intra-op threads."""

    input_shape: Sequence[int]
    threads: int | None = 1
    warmup: int = 3
    runs: int = 10

    def __call__(self, model: nn.Module) -> float:
        x = torch.randn(_shape(self.input_shape))
        was_training = model.training
        model.eval()
        try:
            with torch_threads(self.threads), torch.inference_mode():
                return median_ms(lambda: model(x), warmup=self.warmup, runs=self.runs)
        finally:
            model.train(was_training)


@dataclass
class OnnxRuntimeMeter:
    """onnxruntime CPU latency: export to ONNX in a temp folder, then time a session with fixed threads.

    Uses segkit's :class:`~segkit.inference.backends.OnnxBackend` (the deployed code path) with
    ``threads`` intra-op threads and full graph optimisation.
    """

    input_shape: Sequence[int]
    threads: int = 1
    warmup: int = 3
    runs: int = 10
    opset: int = 17

    def __call__(self, model: nn.Module) -> float:
        shape = _shape(self.input_shape)
        x = torch.randn(shape)
        was_training = model.training
        model.eval()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    torch.onnx.export(
                        model, (x,), str(path), dynamo=False, opset_version=self.opset,
                        input_names=["input"], output_names=["output"],
                    )  # fmt: skip
                backend = OnnxBackend(path, threads=self.threads)
                batch = x.numpy()
                return median_ms(lambda: backend.run(batch), warmup=self.warmup, runs=self.runs)
        finally:
            model.train(was_training)


@dataclass
class MAddsLatency:
    """Deterministic "latency": multiply-adds at ``input_size`` times ``ms_per_mmadd`` plus ``offset_ms``."""

    input_size: Sequence[int]
    ms_per_mmadd: float = 0.01
    offset_ms: float = 0.0

    def __call__(self, model: nn.Module) -> float:
        return self.offset_ms + count_madds(model, list(self.input_size))["total"] / 1e6 * self.ms_per_mmadd


#: a latency-table key: the block's :class:`~segkit.models.BlockSpec` and its input (height, width)
TableKey = tuple[BlockSpec, int, int]


def table_key(spec: BlockSpec, hw: Sequence[int]) -> TableKey:
    """The key of block ``spec`` run at input resolution ``hw``."""
    return spec, int(hw[0]), int(hw[1])


#: times one block: ``timer(block, input_shape) -> ms``
BlockTimer = Callable[[nn.Module, tuple[int, int, int, int]], float]


def torch_block_timer(threads: int | None = 1, warmup: int = 3, runs: int = 10) -> BlockTimer:
    """A :data:`BlockTimer` timing eager PyTorch."""
    return lambda block, shape: TorchMeter(shape, threads=threads, warmup=warmup, runs=runs)(block)


def onnx_block_timer(threads: int = 1, warmup: int = 3, runs: int = 10) -> BlockTimer:
    """A :data:`BlockTimer` timing onnxruntime on the block exported alone."""
    return lambda block, shape: OnnxRuntimeMeter(shape, threads=threads, warmup=warmup, runs=runs)(block)


class LatencyTable:
    """NetAdapt's empirical per-layer latency table: each block configuration timed once, then cached.

    Args:
        timer: times a freshly built block on a random input of its input shape (see
            :func:`torch_block_timer`, :func:`onnx_block_timer`; inject a deterministic one in tests).
        path: JSON file to load the table from (if it exists) and :meth:`save` to.
    """

    FORMAT = "segkit-latency-table"

    def __init__(self, timer: BlockTimer | None = None, path: str | os.PathLike | None = None) -> None:
        self.timer = timer or torch_block_timer()
        self.path = Path(path) if path is not None else None
        self.entries: dict[TableKey, float] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.is_file():
            self.load(self.path)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, spec: BlockSpec, hw: Sequence[int]) -> float:
        """The latency of block ``spec`` at input resolution ``hw``; timed (once) when not cached."""
        key = table_key(spec, hw)
        if key in self.entries:
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        block = new_block(spec).eval()
        ms = float(self.timer(block, (1, spec.input_channels, key[1], key[2])))
        if not np.isfinite(ms) or ms < 0:
            raise ValueError(f"block timer returned {ms!r} ms for {key}")
        self.entries[key] = ms
        return ms

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the table as JSON (one object per entry) to ``path`` or the table's own path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("LatencyTable.save needs a path (none given at construction)")
        target.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {**asdict(spec), "height": h, "width": w, "ms": ms} for (spec, h, w), ms in self.entries.items()
        ]
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps({"format": self.FORMAT, "entries": rows}, indent=1) + "\n")
        os.replace(tmp, target)
        return target

    def load(self, path: str | os.PathLike) -> None:
        """Add the entries of a saved table (clear error for anything else)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable latency table ({exc})") from None
        if not isinstance(data, Mapping) or data.get("format") != self.FORMAT:
            raise ValueError(f"{path}: not a latency table (no 'format: {self.FORMAT}')")
        names = [f.name for f in fields(BlockSpec)]
        for i, row in enumerate(data.get("entries", [])):
            try:
                spec = BlockSpec(**{n: row[n] for n in names})
                self.entries[table_key(spec, (row["height"], row["width"]))] = float(row["ms"])
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{path}: entry {i} is malformed ({exc})") from None


def block_input_sizes(model: nn.Module, input_size: Sequence[int]) -> list[tuple[int, int]]:
    """The input H x W of every inverted-residual block for a 1 x 3 x H x W image (a meta-device pass)."""
    sizes: dict[int, tuple[int, int]] = {}
    meta = copy.deepcopy(model).to("meta").eval()
    hooks = [
        block.register_forward_pre_hook(lambda m, a, k=k: sizes.__setitem__(k, tuple(a[0].shape[-2:])))
        for k, (_, block) in enumerate(encoder_blocks(meta))
    ]
    try:
        with torch.no_grad():
            meta(torch.zeros(1, 3, *[int(s) for s in input_size], device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return [(int(sizes[k][0]), int(sizes[k][1])) for k in range(len(hooks))]


class TableLatency:
    """Predicted model latency: sum of the blocks' table entries + ``other_ms`` (the non-block part).

    The input resolution of each block is fixed by ``input_size`` (expansion changes do not move it), so
    it is computed once, on the first model seen.
    """

    def __init__(self, table: LatencyTable, input_size: Sequence[int], other_ms: float = 0.0) -> None:
        if other_ms < 0:
            raise ValueError(f"other_ms must be >= 0, got {other_ms}")
        self.table = table
        self.input_size = tuple(int(s) for s in input_size)
        self.other_ms = float(other_ms)
        self._sizes: list[tuple[int, int]] | None = None

    def block_latencies(self, model: nn.Module) -> list[float]:
        """Each block's table latency, in order."""
        if self._sizes is None:
            self._sizes = block_input_sizes(model, self.input_size)
        blocks = encoder_blocks(model)
        if len(blocks) != len(self._sizes):
            raise ValueError(f"model has {len(blocks)} blocks, the table was set up for {len(self._sizes)}")
        return [self.table.lookup(block_spec(b), hw) for (_, b), hw in zip(blocks, self._sizes)]

    def __call__(self, model: nn.Module) -> float:
        return self.other_ms + sum(self.block_latencies(model))

    def calibrate(self, model: nn.Module, meter: LatencyMeter) -> dict[str, float]:
        """Set ``other_ms`` = measured whole-model latency - sum of block entries (floored at 0).

        Returns ``{"measured_ms", "blocks_ms", "other_ms"}``. A negative difference (blocks timed alone
        costing more than inside the network) is floored at 0 and the prediction then overestimates.
        """
        measured = float(meter(model))
        blocks = sum(self.block_latencies(model))
        self.other_ms = max(0.0, measured - blocks)
        return {"measured_ms": measured, "blocks_ms": blocks, "other_ms": self.other_ms}


#: ``latency.estimator`` values of the search commands
ESTIMATORS = ("table", "onnx", "torch", "madds")


def latency_estimator(
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
