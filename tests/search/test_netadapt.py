"""NetAdapt: proposals meet each iteration's target, the selection criteria, budget decay, history, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from segkit.formats.description import IMAGENET_MEAN, IMAGENET_STD
from segkit.labels import CLASS_NAMES, PALETTE
from segkit.models import build_model, create_model
from segkit.models.summary import count_madds
from segkit.search.arch import expanded_channels, shrink_model
from segkit.search.latency import LatencyTable, TableLatency
from segkit.search.netadapt import (
    HISTORY_FORMAT,
    Proposal,
    accuracy_latency_ratio,
    candidate_sizes,
    largest_size_meeting,
    main,
    netadapt,
    select_proposal,
)
from segkit.search.reward import reward

SIZE = (64, 128)
ORIGINAL = [8, 24, 32, 32, 88, 88, 40, 48, 104, 104, 104]  # MobileNetV3-Small x0.35, reduced tail
OUTS = [8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16]


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("lraspp_mobilenetv3_small", encoder_params={"width_mult": 0.35}).eval()


def madds_timer(block: torch.nn.Module, shape: tuple[int, int, int, int]) -> float:
    """Deterministic block latency: its conv MAdds in millions (one "ms" per MMAdd)."""
    assert shape[0] == 1
    return count_madds(block, shape[2:], in_channels=shape[1])["total"] / 1e6


def fake_accuracy(model: torch.nn.Module) -> float:
    """Deterministic "accuracy": each block's relative shrink costs a different, block-specific amount."""
    cost = np.linspace(0.02, 0.2, len(ORIGINAL))[::-1]  # early blocks matter most
    rel = 1 - np.array(expanded_channels(model)) / np.array(ORIGINAL)
    return float(0.8 - (cost * rel).sum())


def test_ratio_and_selection_criteria() -> None:
    assert accuracy_latency_ratio(0.70, 8.0, 0.72, 10.0) == pytest.approx(-0.01)
    assert accuracy_latency_ratio(0.73, 9.0, 0.72, 10.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="same latency"):
        accuracy_latency_ratio(0.7, 10.0, 0.72, 10.0)
    props = [
        Proposal(0, 64, 48, latency=9.5, acc=0.715),  # ratio -0.010: small loss, small gain
        Proposal(1, 64, 32, latency=8.0, acc=0.700),  # ratio -0.010 too (a tie with 0)
        Proposal(2, 64, 40, latency=9.0, acc=0.712),  # ratio -0.008: the best trade
        Proposal(3, 64, 16, latency=6.0, acc=0.675),  # ratio -0.01125: most accuracy lost per ms
    ]
    ratios = [accuracy_latency_ratio(p.acc, p.latency, 0.72, 10.0) for p in props]
    assert int(np.argmax(ratios)) == 2
    assert select_proposal(props, prev_acc=0.72, prev_latency=10.0) == 2
    # neither the most accurate (0) nor the fastest (3): the paper's criterion is a trade-off
    assert max(range(4), key=lambda i: props[i].acc) == 0
    # ties go to the first proposal
    assert select_proposal(props[:2], prev_acc=0.72, prev_latency=10.0) == 0
    # the reward with a strict target prefers the fast one
    rewards = [reward(p.acc, p.latency, 5.0, -0.15) for p in props]
    k = select_proposal(props, prev_acc=0.72, prev_latency=10.0, criterion="reward", reward_target=5.0)
    assert k == int(np.argmax(rewards)) == 3
    with pytest.raises(ValueError, match="needs reward_target"):
        select_proposal(props, prev_acc=0.72, prev_latency=10.0, criterion="reward")
    with pytest.raises(ValueError, match="criterion must be"):
        select_proposal(props, prev_acc=0.72, prev_latency=10.0, criterion="acc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        select_proposal([], prev_acc=0.72, prev_latency=10.0)


def test_candidate_sizes() -> None:
    assert candidate_sizes(88, 16) == [80, 72, 64, 56, 48, 40, 32, 24, 8]  # never == input channels
    assert candidate_sizes(88, 16, divisor=16, min_channels=24) == [80, 64, 48, 32]
    assert candidate_sizes(8, 16) == []
    with pytest.raises(ValueError, match="multiple of 8"):
        candidate_sizes(88, 16, divisor=12)


def test_largest_size_meeting_is_largest_and_restores_model(tiny) -> None:
    est = TableLatency(LatencyTable(madds_timer), SIZE)
    base = est(tiny)
    size, lat = largest_size_meeting(tiny, 4, base - 0.01, est)
    assert lat <= base - 0.01
    bigger, _ = shrink_model(tiny, 4, size + 8)
    assert est(bigger) > base - 0.01  # one step larger misses the target
    assert expanded_channels(tiny) == ORIGINAL  # the probes left the model as it was
    assert largest_size_meeting(tiny, 0, base - 0.01, est) is None  # no expansion conv
    assert largest_size_meeting(tiny, 4, base - 100.0, est) is None  # unreachable


def test_netadapt_search_with_deterministic_latency(tiny, tmp_path) -> None:
    est = TableLatency(LatencyTable(madds_timer), SIZE, other_ms=1.0)
    calls: list[int] = []

    def fine_tune(model: torch.nn.Module, steps: int) -> None:
        calls.append(steps)
        assert model.encoder is not tiny.encoder  # proposals are copies

    start = est(tiny)
    result = netadapt(
        tiny,
        latency=est,
        fine_tune=fine_tune,
        evaluate=fake_accuracy,
        iterations=3,
        step=0.03,
        decay=0.5,
        fine_tune_steps=2,
        blocks=[1, 3, 4, 8, 9],
        history_path=tmp_path / "history.json",
        log=None,
    )
    hist = result.history
    its = hist["iterations"]
    assert len(its) == 3 and hist["final"]["stopped"] == "iterations done"
    assert hist["initial"] == {
        "latency": start,
        "acc": fake_accuracy(tiny),
        "expanded_channels": ORIGINAL,
        "out_channels": OUTS,
    }
    prev = start
    for i, it in enumerate(its):
        assert it["step"] == pytest.approx(0.03 * 0.5**i)  # the budget step decays
        assert it["target_latency"] == pytest.approx(prev - 0.03 * 0.5**i)
        assert it["previous_latency"] == pytest.approx(prev)
        for p in it["proposals"]:  # every proposal, the chosen one included, meets the target
            assert p["latency"] <= it["target_latency"] + 1e-12
            assert p["kind"] == "expansion" and p["blocks"] == [p["block"]]
            assert p["block"] in [1, 3, 4, 8, 9] and p["width"] < p["width_before"]
        ratios = [p["ratio"] for p in it["proposals"]]
        best = it["proposals"][int(np.argmax(ratios))]
        assert (it["chosen_block"], it["width"], it["latency"]) == (
            best["block"],
            best["width"],
            best["latency"],
        )
        assert ratios == pytest.approx(
            [
                (p["acc"] - it["previous_acc"]) / (it["previous_latency"] - p["latency"])
                for p in it["proposals"]
            ]
        )
        prev = it["latency"]
    assert calls and set(calls) == {2} and len(calls) == sum(len(it["proposals"]) for it in its)
    # the result: smaller, what the history says, the original untouched, latency consistent
    assert expanded_channels(tiny) == ORIGINAL
    assert result.expanded_channels == hist["final"]["expanded_channels"] == its[-1]["expanded_channels"]
    assert result.expanded_channels != ORIGINAL
    assert est(result.model) == pytest.approx(hist["final"]["latency"]) and hist["final"]["latency"] < start
    assert hist["final"]["acc"] == pytest.approx(fake_accuracy(result.model))
    # the history file holds the same record
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["format"] == HISTORY_FORMAT and saved["settings"]["criterion"] == "ratio"
    assert saved["iterations"] == json.loads(json.dumps(its)) and saved["final"] == hist["final"]
    blocks = saved["adapted_config"]["encoder_params"]["blocks"]
    assert [row[1] for row in blocks] == result.expanded_channels
    # the searched model is an ordinary model config: it rebuilds, loads its weights and runs
    rebuilt = build_model(**{k: v for k, v in saved["adapted_config"].items() if k != "_target_"})
    rebuilt.load_state_dict(result.model.state_dict())
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), result.model.eval()(x))


def test_netadapt_bottleneck_proposal_of_a_residual_group(tiny, tmp_path) -> None:
    from segkit.export import ExportWrapper, build_metadata, export_onnx
    from segkit.inference import Predictor
    from segkit.search.arch import out_channels, residual_groups

    (group,) = residual_groups(tiny)  # the reduced tail: block 8 makes 16 channels, 9 and 10 add to them
    assert (group.blocks, group.channels) == ((8, 9, 10), 16)
    est = TableLatency(LatencyTable(madds_timer), SIZE)
    res = netadapt(
        tiny, latency=est, fine_tune=lambda m, s: None, evaluate=fake_accuracy,
        iterations=1, step=0.02, blocks=[8, 9, 10], log=None,
    )  # fmt: skip
    (it,) = res.history["iterations"]
    kinds = [p["kind"] for p in it["proposals"]]
    assert kinds == ["expansion"] * 3 + ["bottleneck"]
    bott = it["proposals"][3]
    assert (bott["blocks"], bott["width_before"], bott["width"]) == ([8, 9, 10], 16, 8)
    assert bott["latency"] <= it["target_latency"]
    # fake_accuracy ignores bottleneck widths: ratio 0 beats every expansion proposal's negative ratio
    assert bott["ratio"] == 0 and all(p["ratio"] < 0 for p in it["proposals"][:3])
    assert (it["chosen_kind"], it["chosen_blocks"]) == ("bottleneck", [8, 9, 10])
    assert out_channels(res.model) == OUTS[:8] + [8, 8, 8] == res.history["final"]["out_channels"]
    assert est(res.model) == pytest.approx(bott["latency"])
    # the narrower model rebuilds from its adapted config and exports for the predictor
    cfg = res.history["adapted_config"]
    rebuilt = build_model(**{k: v for k, v in cfg.items() if k != "_target_"})
    rebuilt.load_state_dict(res.model.state_dict())
    meta = build_metadata(
        model_name="narrow", class_names=CLASS_NAMES, palette=PALETTE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        input_size=SIZE, dynamic=False, preprocess=False, argmax=False,
    )  # fmt: skip
    wrapper = ExportWrapper(rebuilt, IMAGENET_MEAN, IMAGENET_STD)
    path = export_onnx(wrapper, tmp_path / "narrow.onnx", input_size=SIZE, metadata=meta)
    pred = Predictor.from_file(path, threads=1)
    x = np.random.default_rng(0).integers(0, 255, (*SIZE, 3), dtype=np.uint8)
    probs = pred.probabilities(x)
    assert probs.shape[0] == 19 and np.allclose(probs.sum(0), 1.0, atol=1e-4)


def test_netadapt_stops_at_target_or_when_stuck(tiny) -> None:
    est = TableLatency(LatencyTable(madds_timer), SIZE)
    start = est(tiny)
    res = netadapt(
        tiny, latency=est, fine_tune=lambda m, s: None, evaluate=fake_accuracy,
        iterations=20, step=0.05, target=start - 0.08, log=None,
    )  # fmt: skip
    assert res.history["final"]["stopped"] == "target reached"
    assert res.history["final"]["latency"] <= start - 0.08
    assert len(res.history["iterations"]) < 20
    stuck = netadapt(
        tiny, latency=est, fine_tune=lambda m, s: None, evaluate=fake_accuracy,
        iterations=3, step=start, log=None,
    )  # fmt: skip
    assert stuck.history["iterations"] == [] and stuck.history["final"]["stopped"].startswith(
        "no block can reach"
    )
    assert stuck.expanded_channels == ORIGINAL


def test_netadapt_reward_criterion(tiny) -> None:
    est = TableLatency(LatencyTable(madds_timer), SIZE)
    res = netadapt(
        tiny, latency=est, fine_tune=lambda m, s: None, evaluate=fake_accuracy, iterations=1,
        step=0.02, criterion="reward", target=est(tiny) * 0.5, blocks=[1, 4, 8], log=None,
    )  # fmt: skip
    (it,) = res.history["iterations"]
    rewards = [p["reward"] for p in it["proposals"]]
    assert len(rewards) == 3 and it["chosen_block"] == it["proposals"][int(np.argmax(rewards))]["block"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": 0.0}, "step must be a positive"),
        ({"decay": 1.5}, r"decay must be in \(0, 1\]"),
        ({"target": -1.0}, "target must be a positive"),
        ({"blocks": [11]}, "not a block position"),
        ({"criterion": "best"}, "criterion must be"),
    ],
)
def test_netadapt_rejects_bad_arguments(tiny, kwargs, match) -> None:
    args = {"latency": lambda m: 1.0, "fine_tune": lambda m, s: None, "evaluate": lambda m: 0.5}
    with pytest.raises(ValueError, match=match):
        netadapt(tiny, iterations=1, **{"step": 0.1, **args, **kwargs})


@pytest.mark.slow
def test_cli_small_search_with_real_latency(tmp_path) -> None:
    out = tmp_path / "run"
    args = [
        f"out={out}",
        "model.encoder_params.width_mult=0.35",
        "input_size=[64,128]",
        "data.sample={train: 2, val: 1, height: 64, width: 128, seed: 0}",
        "train.pretrain_steps=2",
        "train.fine_tune_steps=1",
        "train.final_steps=1",
        "latency.warmup=1",
        "latency.runs=3",
        "search.iterations=1",
        "search.step=0.01",
        "search.blocks=[4,8]",
    ]
    assert main(args) == 0
    hist = json.loads((out / "history.json").read_text())
    run = hist["run"]
    assert run["latency"]["estimator"] == "table" and run["latency"]["block_timer"] == "onnx"
    cal = run["latency"]["calibration"]
    assert cal["measured_ms"] > 0 and math.isfinite(cal["measured_ms"]) and cal["other_ms"] >= 0
    assert hist["initial"]["latency"] == pytest.approx(cal["blocks_ms"] + cal["other_ms"])
    assert 0 <= hist["initial"]["acc"] <= 1 and 0 <= run["after_final_fine_tune"]["miou"] <= 1
    assert run["measured"]["start_ms"] > 0 and run["measured"]["adapted_ms"] > 0
    for it in hist["iterations"]:
        assert it["latency"] <= it["target_latency"] and it["chosen_block"] in (4, 8)
    table = json.loads((out / "latency_table.json").read_text())
    assert len(table["entries"]) >= 9  # every distinct block config of the start model, plus the probes
    from segkit.inference import Predictor
    from segkit.search.arch import load_adapted

    model = load_adapted(out / "adapted.pt")
    assert expanded_channels(model) == hist["final"]["expanded_channels"]
    # the outputs are ordinary files: the checkpoint's config is the block table, the YAML builds it
    from segkit.models import create_model

    from_yaml = create_model(out / "adapted.yaml")
    from_yaml.load_state_dict(model.state_dict())
    pred = Predictor.from_file(out / "adapted.onnx", threads=1)
    mask = pred.predict(np.zeros((64, 128, 3), np.uint8))
    assert mask.shape == (64, 128) and mask.dtype == np.uint8
    # a misspelt key fails with exit 2 before any work
    assert main([f"out={tmp_path / 'bad'}", "search.iteratons=1"]) == 2
    assert not (tmp_path / "bad").exists()
