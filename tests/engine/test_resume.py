"""Exact resume: N steps + resume + N steps == 2N steps straight (per-step losses and final weights)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from segkit.config import CONF_DIR
from segkit.engine import train
from segkit.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # subprocess commands, several processes or export fixtures

REPO = Path(__file__).resolve().parents[2]


def _cfg(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", f"dataset.root={root}", *overrides])


def _losses(run: Path) -> dict[int, float]:
    """step -> loss from train_log.jsonl (a later line for the same step wins)."""
    out = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        out[rec["step"]] = rec["loss"]
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(sample_root: Path, tmp_path: Path, workers: int) -> None:
    common = [f"train.num_workers={workers}", "train.iters=6", "train.eval_every=6", "train.ema.enabled=true"]
    straight = tmp_path / "straight"
    train(_cfg(sample_root, *common), output_dir=straight)

    split = tmp_path / "split"
    first = train(_cfg(sample_root, *common, "train.stop_after=3"), output_dir=split)
    assert first["stopped"] and first["step"] == 3
    mid = load_checkpoint(split / "checkpoints" / "last.pt")
    assert mid["step"] == 3 and mid["sampler"] == {"epoch": 1, "position": 2}  # 4 images, batch 2
    assert not (split / "metrics.jsonl").exists()  # no evaluation happened before the stop
    second = train(_cfg(sample_root, *common, "resume=true"), output_dir=split)
    assert second["step"] == 6 and not second["stopped"]

    a, b = _losses(straight), _losses(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert torch.allclose(torch.tensor([a[s] for s in a]), torch.tensor([b[s] for s in a]), atol=1e-6, rtol=0)
    assert len(set(a.values())) == 6  # the losses really change step to step

    ca = load_checkpoint(straight / "checkpoints" / "last.pt")
    cb = load_checkpoint(split / "checkpoints" / "last.pt")
    assert ca["step"] == cb["step"] == 6
    for key in ("model", "ema"):
        for name, tensor in ca[key].items():
            assert torch.allclose(tensor.float(), cb[key][name].float(), atol=1e-6, rtol=0), (key, name)
    momentum_a = [s["momentum_buffer"] for s in ca["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in cb["optimizer"]["state"].values()]
    assert all(torch.allclose(x, y, atol=1e-6, rtol=0) for x, y in zip(momentum_a, momentum_b))
    # the resumed weights differ from the mid-run ones: training really continued
    name = next(iter(mid["model"]))
    assert not torch.equal(mid["model"][name], cb["model"][name])


def test_resume_after_kill(sample_root: Path, tmp_path: Path) -> None:
    """A process killed mid-run is resumed from its last checkpoint and replays the same losses."""
    run = tmp_path / "run"
    args = [
        sys.executable,
        str(REPO / "train_seg.py"),
        "experiment=smoke",
        f"dataset.root={sample_root}",
        f"hydra.run.dir={run}",
        "train.iters=400",
        "train.eval_every=400",
        "train.checkpoint_every=2",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if last.is_file() and (run / "train_log.jsonl").is_file():
                if len((run / "train_log.jsonl").read_text().splitlines()) >= 5:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_losses = _losses(run)
    ckpt_step = load_checkpoint(last)["step"]
    assert ckpt_step >= 2 and ckpt_step % 2 == 0
    assert max(killed_losses) < 400  # it really was interrupted

    end = ckpt_step + 4
    # resume in-process (faster than a second interpreter); same run dir, same config as the killed run
    overrides = ("train.iters=400", "train.eval_every=400", f"train.stop_after={end}", "resume=true")
    summary = train(_cfg(sample_root, *overrides), output_dir=run)
    assert summary["step"] == end
    after = _losses(run)
    assert max(after) == end
    # steps the killed process ran after its checkpoint are replayed with identical losses
    replayed = [s for s in killed_losses if s > ckpt_step]
    for s in replayed:
        assert after[s] == pytest.approx(killed_losses[s], abs=1e-6)
    assert load_checkpoint(last)["step"] == end


def test_resume_with_other_batch_size_continues_from_step_count(
    sample_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Changing the per-process batch (or process count) on resume cannot be exact; it warns and places the
    sampler where this configuration would be after the checkpoint's step count."""
    train(_cfg(sample_root, "train.iters=4", "train.stop_after=1"), output_dir=tmp_path)
    with caplog.at_level("WARNING", logger="segkit.train"):
        train(_cfg(sample_root, "train.iters=4", "train.batch_size=1", "resume=true"), output_dir=tmp_path)
    assert "does not fit this run's batch size" in caplog.text
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["sampler"] == {"epoch": 1, "position": 0}  # 4 steps x 1 image
