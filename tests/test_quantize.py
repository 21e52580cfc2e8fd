"""int8 quantization and the export command end to end, on a briefly trained tiny model.

A random-init model predicts almost one class everywhere, which would make an mIoU comparison
meaningless, so the module first trains LR-ASPP MobileNetV3-Small for a few dozen steps on a generated
sample (mIoU ~0.4 on its val split) and then runs ``python -m segkit.export`` once as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import segkit
from segkit.config import load_group
from segkit.data import CityscapesDataset
from segkit.data.sample import generate_sample
from segkit.engine.checkpoint import IMAGENET_MEAN, IMAGENET_STD, model_metadata, save_checkpoint
from segkit.export.__main__ import main
from segkit.inference import Predictor
from segkit.inference.predictor import normalize_batch

MODEL = "lraspp_mobilenetv3_small"
SIZE = (64, 128)


def _train(root: Path, steps: int = 30) -> torch.nn.Module:
    """A few AdamW steps on the whole train split, then BN statistics recomputed on it ("precise BN")."""
    torch.manual_seed(0)
    ds = CityscapesDataset(root, "train", verbose=False)
    pairs = [ds.load(i) for i in range(len(ds))]
    x = torch.from_numpy(normalize_batch(np.stack([p[0] for p in pairs]), IMAGENET_MEAN, IMAGENET_STD))
    y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
    model = segkit.create_model(MODEL, num_classes=19).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (8,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass below
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train, save a checkpoint, and run the export command with int8 and ExecuTorch once."""
    base = tmp_path_factory.mktemp("quantize")
    root = generate_sample(base / "sample", train=16, val=6, height=SIZE[0], width=SIZE[1], seed=1)
    model = _train(root)
    ckpt = save_checkpoint(
        base / "last.pt",
        {"model": model.state_dict(), **model_metadata(load_group("model", MODEL), input_size=list(SIZE))},
    )
    out = base / "export" / "model.onnx"
    cmd = [
        sys.executable, "-m", "segkit.export", f"checkpoint={ckpt}", f"output={out}", f"verify.root={root}",
        "verify.images=null", "quantize=int8", f"calibration.root={root}", "calibration.images=8",
        "mobile=executorch", "threads=1",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out.parent / "model.report.json").read_text())
    return {"root": root, "ckpt": ckpt, "out": out, "report": report, "stdout": proc.stdout}


def test_cli_writes_verified_files_and_report(exported: dict) -> None:
    out, report = exported["out"], exported["report"]
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["model.int8.onnx", "model.onnx", "model.pte", "model.report.json"]
    assert report["passed"] is True and report["model_name"] == MODEL
    assert report["dataset"] == {
        "root": str(exported["root"]),
        "source": "verify.root",
        "split": "val",
        "images": 6,
    }
    ver = report["verification"]["64x128"]
    assert ver["argmax_agreement"] >= 0.999 and ver["max_abs_logit_diff"] < 1e-3
    assert len(ver["per_image"]) == 6
    assert "argmax agreement" in exported["stdout"] and "int8: mIoU" in exported["stdout"]


def test_int8_keeps_miou_and_shrinks_the_file(exported: dict) -> None:
    q = exported["report"]["int8"]
    assert q["miou_fp32"] > 0.25, "the test model must predict something for the mIoU check to mean anything"
    assert q["miou_drop_points"] <= 1.0
    assert abs(q["miou_drop_points"] - 100 * (q["miou_fp32"] - q["miou_int8"])) < 1e-9
    assert q["calibration"]["images"] == 8 and q["options"]["format"] == "qdq" and q["options"]["per_channel"]
    int8, fp32 = Path(q["path"]), exported["out"]
    assert q["bytes"] == int8.stat().st_size
    # 2 MB model: int8 weights are 1/4, the QDQ nodes and int32 biases add a fixed overhead
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    assert q["size_ratio"] == pytest.approx(int8.stat().st_size / fp32.stat().st_size)


def test_int8_report_lists_fp32_operators_with_reasons(exported: dict) -> None:
    ops = exported["report"]["int8"]["fp32_operators"]
    assert "HardSigmoid" in ops and "no int8 kernel" in ops["HardSigmoid"]["reason"]
    assert ops["HardSigmoid"]["count"] > 0
    assert "Conv" not in ops and "Add" not in ops  # these run as int8 kernels


def test_int8_and_executorch_files_load_in_the_predictor(exported: dict) -> None:
    ds = CityscapesDataset(exported["root"], "val", verbose=False)
    images = [ds.load(i)[0] for i in range(len(ds))]
    ref = Predictor.from_file(exported["ckpt"])
    int8 = Predictor.from_file(exported["report"]["int8"]["path"], threads=1)
    pte = Predictor.from_file(exported["report"]["mobile"]["path"])
    assert (int8.backend, pte.backend) == ("onnxruntime", "executorch")
    assert int8.info.input_size == pte.input_size == SIZE
    for img in images:
        want = ref.predict(img)
        assert (pte.predict(img) == want).mean() >= 0.999
        assert (int8.predict(img) == want).mean() >= 0.9
    assert exported["report"]["mobile"]["verification"]["argmax_agreement"] >= 0.999


def test_cli_failure_is_a_clear_nonzero_exit(tmp_path, capsys) -> None:
    assert main([f"checkpoint={tmp_path / 'missing.pt'}", f"output={tmp_path / 'm.onnx'}"]) == 1
    err = capsys.readouterr().err
    assert "export failed" in err and "missing.pt" in err
    assert main(["quantize=int8", "bogus=1"]) == 1
    assert "bogus" in capsys.readouterr().err
