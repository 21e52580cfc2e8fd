"""Latency: lookup-table mechanics with an injected deterministic timer; real meters only for plausibility."""

from __future__ import annotations

import json
import math

import pytest
import torch

from segkit.models import create_model
from segkit.models.summary import count_madds
from segkit.search.arch import block_spec, encoder_blocks, shrink_model
from segkit.search.latency import (
    LatencyMeter,
    LatencyTable,
    MAddsLatency,
    OnnxRuntimeMeter,
    TableLatency,
    TorchMeter,
    block_input_sizes,
    median_ms,
    table_key,
)

SIZE = (64, 128)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("lraspp_mobilenetv3_small", encoder_params={"width_mult": 0.35}).eval()


class CountingTimer:
    """Deterministic block "latency": 1 ms per million MAdds of the block + 0.01 ms; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, block: torch.nn.Module, shape: tuple[int, int, int, int]) -> float:
        self.calls.append(tuple(shape))
        assert shape[0] == 1
        return count_madds(block, shape[2:], in_channels=shape[1])["total"] / 1e6 + 0.01


def test_block_input_sizes(tiny) -> None:
    sizes = block_input_sizes(tiny, SIZE)
    # stem /2, then C1 /4, C2 /8, C3 /16; the last stage is dilated (stays /16)
    assert sizes == [
        (32, 64),
        (16, 32),
        (8, 16),
        (8, 16),
        (4, 8),
        (4, 8),
        (4, 8),
        (4, 8),
        (4, 8),
        (4, 8),
        (4, 8),
    ]
    assert next(tiny.parameters()).device.type == "cpu"  # the meta pass worked on a copy


def test_table_caches_by_block_config_and_resolution(tiny, tmp_path) -> None:
    timer = CountingTimer()
    table = LatencyTable(timer)
    est = TableLatency(table, SIZE, other_ms=0.5)
    per_block = est.block_latencies(tiny)
    # blocks 5/6 and 9/10 (features 6/7, 10/11) have the same config and resolution: timed once
    assert len(timer.calls) == len(table) == 9 and (table.misses, table.hits) == (9, 2)
    assert per_block[9] == per_block[10] and per_block[4] == per_block[5]
    assert timer.calls[0] == (1, 8, 32, 64)  # first block: its input channels at its input resolution
    assert est(tiny) == pytest.approx(0.5 + sum(per_block))
    assert len(timer.calls) == 9 and table.hits == 13  # second estimate: only look-ups
    # a shrunk model needs exactly one new entry, and is predicted faster by exactly the block difference
    shrunk, _ = shrink_model(tiny, 4, 56)
    new = est.block_latencies(shrunk)
    assert len(timer.calls) == 10 and timer.calls[-1] == (1, 16, 4, 8)
    assert new[4] < per_block[4] and new[:4] + new[5:] == per_block[:4] + per_block[5:]
    spec, h, w = key = table_key(block_spec(encoder_blocks(shrunk)[4][1]), (4, 8))
    assert (spec.expanded_channels, h, w, spec.use_se, spec.activation) == (56, 4, 8, True, "HS")
    assert key in table.entries  # the table keys by the models' own BlockSpec plus the input size
    # save / reload: a fresh table with the same file needs no timing at all
    path = table.save(tmp_path / "table.json")
    data = json.loads(path.read_text())
    assert data["format"] == "segkit-latency-table" and len(data["entries"]) == 10
    assert {"input_channels", "expanded_channels", "height", "width", "ms"} <= set(data["entries"][0])
    timer2 = CountingTimer()
    reloaded = LatencyTable(timer2, path=path)
    assert TableLatency(reloaded, SIZE, other_ms=0.5)(shrunk) == pytest.approx(est(shrunk))
    assert timer2.calls == []
    # shrinking block 4 to 40 gives block 6's config (16 -> 40 -> 16, k5, SE, HS at 4x8): a cache hit
    again, _ = shrink_model(tiny, 4, 40)
    assert est.block_latencies(again)[4] == per_block[6] and len(timer.calls) == 10


def test_calibration_sets_the_non_block_part(tiny) -> None:
    est = TableLatency(LatencyTable(lambda block, shape: 1.0), SIZE)
    info = est.calibrate(tiny, lambda model: 20.0)
    assert info == {"measured_ms": 20.0, "blocks_ms": 11.0, "other_ms": 9.0}
    assert est(tiny) == pytest.approx(20.0)
    assert est.calibrate(tiny, lambda model: 5.0)["other_ms"] == 0.0  # floored


def test_table_rejects_bad_timer_and_files(tiny, tmp_path) -> None:
    with pytest.raises(ValueError, match="block timer returned nan"):
        TableLatency(LatencyTable(lambda b, s: math.nan), SIZE)(tiny)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable(path=bad)
    with pytest.raises(ValueError, match="other_ms must be >= 0"):
        TableLatency(LatencyTable(), SIZE, other_ms=-1)


def test_median_ms_with_fake_clock() -> None:
    ticks = iter([0.0, 0.001, 1.0, 1.005, 2.0, 2.003])  # 1 ms, 5 ms, 3 ms
    calls = []
    assert median_ms(lambda: calls.append(1), warmup=2, runs=3, clock=lambda: next(ticks)) == pytest.approx(
        3.0
    )
    assert len(calls) == 5
    with pytest.raises(ValueError, match="runs >= 1"):
        median_ms(lambda: None, warmup=0, runs=0)


def test_madds_latency_is_deterministic_and_monotone(tiny) -> None:
    meter = MAddsLatency(SIZE, ms_per_mmadd=1.0)
    assert isinstance(meter, LatencyMeter)
    a = meter(tiny)
    shrunk, _ = shrink_model(tiny, 5, 40)
    assert meter(tiny) == a and 0 < meter(shrunk) < a


@pytest.mark.parametrize("meter_cls", [OnnxRuntimeMeter, TorchMeter])
def test_real_meters_give_plausible_values(tiny, meter_cls) -> None:
    meter = meter_cls((1, 3, *SIZE), threads=1, warmup=1, runs=3)
    ms = meter(tiny)
    assert math.isfinite(ms) and 0 < ms < 5000
    assert not tiny.training  # mode restored
    # a single block timed in isolation too (how the lookup table's real timers work)
    _, block = encoder_blocks(tiny)[4]
    assert 0 < meter_cls((1, 16, 4, 8), threads=1, warmup=1, runs=3)(block) < 5000
