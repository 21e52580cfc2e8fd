"""End-to-end training through the Hydra config: it learns, writes the promised outputs, fails clearly,
and sweeps with ``-m``. In-process with Hydra's compose API; the CLI only where Hydra's app matters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from segkit.config import CONF_DIR
from segkit.engine import train
from segkit.engine.checkpoint import CheckpointError, load_checkpoint
from segkit.engine.trainer import TrainStep
from segkit.labels import CLASS_NAMES

REPO = Path(__file__).resolve().parents[2]


def _cfg(root: Path | str, *overrides: str, experiment: str = "smoke"):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"experiment={experiment}", f"dataset.root={root}", *overrides])


def _val_pixels(root: Path) -> int:
    """Labelled (non-ignore) pixels of the val split, read straight from the trainId PNGs."""
    files = sorted((root / "gtFine" / "val").glob("*/*_labelTrainIds.png"))
    assert files
    return sum(int((np.asarray(Image.open(f)) != 255).sum()) for f in files)


@pytest.mark.slow
def test_training_learns_and_writes_outputs(sample_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        sample_root,
        "train.iters=100",
        "train.eval_every=25",
        "train.batch_size=4",
        "optim.lr=0.05",
        "train.ema.enabled=true",
        "train.ema.decay=0.99",
        "train.tensorboard=true",
    )
    summary = train(cfg, output_dir=tmp_path)
    assert summary["step"] == 100 and not summary["stopped"]

    steps = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 101))
    losses = np.array([s["loss"] for s in steps])
    assert losses[:3].mean() > 2.5  # about ln(19) at the start
    assert losses[-10:].mean() < 0.35 * losses[:3].mean()  # the loss falls a lot
    lrs = [s["lr"] for s in steps]
    assert lrs[0] == pytest.approx(0.05) and lrs == sorted(lrs, reverse=True)  # poly decay

    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [25, 50, 75, 100]
    first, last = evals[0], evals[-1]
    assert last["miou"] > first["miou"] + 0.1  # val mIoU rises
    assert last["miou"] > 0.3 and last["pixel_acc"] > 0.75  # far above chance (1/19, one class everywhere)
    assert set(last["iou"]) == set(CLASS_NAMES)
    assert last["num_images"] == 2 and last["num_pixels"] == _val_pixels(sample_root)
    assert 0.0 <= last["ema_miou"] <= 1.0 and set(last["ema_iou"]) == set(CLASS_NAMES)

    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["metrics"]["miou"] == pytest.approx(max(e["miou"] for e in evals))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 100
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert summary["best_miou"] == pytest.approx(best["metrics"]["miou"])


def test_missing_dataset_root_names_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_cityscapes"
    with pytest.raises(FileNotFoundError, match="dataset.root") as err:
        train(_cfg(missing), output_dir=tmp_path / "run")
    assert str(missing) in str(err.value)


def test_resume_from_other_model_or_classes_is_refused(sample_root: Path, tmp_path: Path) -> None:
    train(_cfg(sample_root, "train.iters=2", "train.stop_after=1"), output_dir=tmp_path)
    ckpt = str(tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError) as err:
        cfg = _cfg(sample_root, "model=lraspp_mobilenetv3_large", f"resume={ckpt}")
        train(cfg, output_dir=tmp_path / "b")
    assert "lraspp_mobilenetv3_small" in str(err.value) and "lraspp_mobilenetv3_large" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        train(_cfg(sample_root, "dataset.num_classes=7", f"resume={ckpt}"), output_dir=tmp_path / "c")
    assert "num_classes: checkpoint 19 vs config 7" in str(err.value)
    with pytest.raises(FileNotFoundError, match="resume=True: no checkpoint at .*hydra.run.dir"):
        train(_cfg(sample_root, "resume=true"), output_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nowhere.pt"):
        train(_cfg(sample_root, f"resume={tmp_path / 'nowhere.pt'}"), output_dir=tmp_path / "empty")


def test_cuda_oom_gets_a_hint(sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(self, batches):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TrainStep, "__call__", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError) as err:
        train(_cfg(sample_root), output_dir=tmp_path)
    message = str(err.value)
    assert "Tried to allocate 2.00 GiB" in message
    assert "train.batch_size" in message and "train.amp" in message and "crop" in message


@pytest.mark.parametrize("experiment", ["cityscapes_lraspp_large", "cityscapes_lraspp_small", "demo"])
def test_experiments_compose(experiment: str) -> None:
    cfg = _cfg("unused", experiment=experiment)
    expected_model = {"cityscapes_lraspp_large": "lraspp_mobilenetv3_large"}.get(
        experiment, "lraspp_mobilenetv3_small"
    )
    assert cfg.model.name == expected_model
    assert cfg.model.encoder_params.output_stride == 16
    assert cfg.optim.optimizer._target_ == "torch.optim.SGD" and cfg.optim.optimizer.momentum == 0.9
    assert cfg.optim.scheduler.power == 0.9
    if experiment.startswith("cityscapes"):
        assert cfg.train.batch_size * cfg.train.accum_steps == 16
        assert cfg.train.loss.name == "ohem" and cfg.train.loss.ohem_thresh == 0.7
        crops = [(t.height, t.width) for t in cfg.augment.train.transforms if "height" in t]
        assert crops == [(512, 1024)]
    else:
        assert cfg.dataset.root == "unused" and cfg.optim.optimizer.lr == 0.05


def test_adamw_option_builds_adamw(sample_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(sample_root, "optim=adamw", "optim.lr=0.001", "optim.scheduler.warmup_iters=1")
    train(cfg, output_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # no decay on norms and biases
    assert "betas" in groups[0] and groups[0]["initial_lr"] == 0.001
    assert ckpt["scheduler"]["last_epoch"] == 4 and ckpt["optimizer"]["state"]  # smoke: 4 steps


@pytest.mark.slow
def test_cli_multirun_sweeps_lr(sample_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    cmd = [
        sys.executable,
        str(REPO / "train_seg.py"),
        "-m",
        "experiment=smoke",
        f"dataset.root={sample_root}",
        "optim.lr=0.005,0.01",
        "train.iters=2",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [r.name for r in runs] == ["0", "1"]
    first_lrs = []
    for run in runs:
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [2] and 0.0 <= metrics[0]["miou"] <= 1.0
        assert (run / "checkpoints" / "last.pt").is_file() and (run / ".hydra" / "config.yaml").is_file()
        first_lrs.append(json.loads((run / "train_log.jsonl").read_text().splitlines()[0])["lr"])
    assert first_lrs == [pytest.approx(0.005), pytest.approx(0.01)]
    assert not (tmp_path / "outputs").exists()  # nothing written outside the sweep folder


def test_bf16_autocast_on_cpu(sample_root: Path, tmp_path: Path) -> None:
    """train.amp=bf16 runs the forward in bfloat16 on the CPU: losses close to fp32, not identical."""
    losses = {}
    for amp in ("none", "bf16"):
        train(_cfg(sample_root, f"train.amp={amp}", "train.iters=2"), output_dir=tmp_path / amp)
        lines = (tmp_path / amp / "train_log.jsonl").read_text().splitlines()
        losses[amp] = [json.loads(line)["loss"] for line in lines]
    assert losses["bf16"][0] == pytest.approx(losses["none"][0], rel=0.05)
    assert losses["bf16"] != losses["none"]


def test_the_augment_normalisation_reaches_the_pipeline_the_checkpoint_and_the_predictor(
    sample_root: Path, tmp_path: Path
) -> None:
    from segkit.data.transforms import FastNormalize, build_transforms
    from segkit.inference import Predictor

    mean, std = [0.5, 0.25, 0.75], [0.2, 0.3, 0.4]
    cfg = _cfg(sample_root, "train.iters=2", f"augment.mean={mean}", f"augment.std={std}")
    train_tf, val_tf = build_transforms(cfg.augment)
    for tf in (train_tf, val_tf):
        (norm,) = [t for t in tf.transforms if isinstance(t, FastNormalize)]
        assert list(norm.mean) == mean and list(norm.std) == std  # the pipeline reads the one value
    train(cfg, output_dir=tmp_path)
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["mean"] == mean and ckpt["std"] == std  # what training used, not ImageNet's
    pred = Predictor.from_file(path)
    assert list(pred.info.mean) == mean and list(pred.info.std) == std
    # the Predictor feeds the model exactly the tensor this normalisation gives
    rgb = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    from segkit.models import build_model_from_checkpoint

    model = build_model_from_checkpoint(path)
    x = (
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]
    ) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        expected = model(x[None])[0].numpy()
    np.testing.assert_allclose(pred.logits(rgb), expected, rtol=1e-4, atol=1e-4)


def test_a_pipeline_normalising_differently_from_augment_mean_is_refused(sample_root: Path) -> None:
    from segkit.data.transforms import build_transforms

    cfg = _cfg(sample_root, "augment.val.transforms.0.mean=[0.1,0.1,0.1]")
    with pytest.raises(ValueError, match=r"augment\.val\.transforms\[0\] normalises with mean=\[0\.1"):
        build_transforms(cfg.augment)


@pytest.mark.slow
def test_a_netadapt_checkpoint_predicts_exports_and_trains_without_search_code(
    sample_root: Path, tmp_path: Path
) -> None:
    """The search writes an ordinary checkpoint: a fresh process loads, exports and fine-tunes it (then
    resumes that run) and never imports segkit.search."""
    from segkit.formats import ModelDescription
    from segkit.models import create_model
    from segkit.search.arch import shrink_model
    from segkit.search.netadapt import save_adapted_model

    torch.manual_seed(0)
    model = create_model("lraspp_mobilenetv3_small", encoder_params={"width_mult": 0.5}).eval()
    shrunk, _ = shrink_model(model, 4, 48)
    out = tmp_path / "netadapt"
    out.mkdir()
    files = save_adapted_model(out, shrunk, ModelDescription(model_name="small"), [64, 128])
    onnx_path, run_dir = tmp_path / "m.onnx", tmp_path / "run"
    script = f"""
import sys, json, numpy as np
from segkit.inference import Predictor
from segkit.export import export_checkpoint
from segkit.export.__main__ import load_config
from segkit.engine import train
from segkit.cli import compose
ckpt = {files["checkpoint"]!r}
mask = Predictor.from_file(ckpt).predict(np.zeros((64, 128, 3), np.uint8))
args = ["checkpoint=" + ckpt, "output={onnx_path}", "verify.root={sample_root}", "verify.images=2"]
report = export_checkpoint(load_config(args), log=lambda m: None)
def run(*extra):
    base = ["experiment=smoke", "dataset.root={sample_root}", "init_checkpoint=" + ckpt, "train.iters=4"]
    return train(compose("config", [*base, *extra]), output_dir={str(run_dir)!r})
first = run("train.stop_after=2")
second = run("resume=true")
found = [m for m in sys.modules if m.startswith("segkit.search")]
result = dict(mask=list(mask.shape), passed=report["passed"], steps=[first["step"], second["step"]])
print(json.dumps(dict(result, search=found)))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"mask": [64, 128], "passed": True, "steps": [2, 4], "search": []}
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert resumed["model_config"]["encoder_params"]["blocks"][4][1] == 48  # the adapted table, trained on
