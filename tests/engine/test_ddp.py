"""Two-process DDP training on CPU (gloo) through torchrun: identical weights on both ranks, rank 0's
checkpoint holds them, and validation counts every val image exactly once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # subprocess commands, several processes or export fixtures

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(sample_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(REPO / "train_seg.py"),
        "experiment=smoke",
        f"dataset.root={sample_root}",
        f"hydra.run.dir={run}",
        "train.ema.enabled=true",
        "train.debug_dump_weights=true",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    w0 = torch.load(run / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(run / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4
    for name in w0:
        assert torch.equal(ckpt["model"][name], w0[name]), name
    # each rank saw its own half of the 4 training images per epoch: 2 steps x batch 2 = one epoch
    assert ckpt["sampler"] == {"epoch": 4, "position": 0}

    files = sorted((sample_root / "gtFine" / "val").glob("*/*_labelTrainIds.png"))
    labelled = sum(int((np.asarray(Image.open(f)) != 255).sum()) for f in files)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4]  # written once (rank 0), not once per rank
    for e in evals:
        assert e["num_images"] == len(files) == 2
        assert e["num_pixels"] == labelled
        assert "ema_miou" in e
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
