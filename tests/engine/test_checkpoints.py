"""Training checkpoints: a crash mid-save never replaces last.pt, the full training state loads with
weights_only, and the model is rebuilt from the file alone (the format itself: tests/formats)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from segkit.config import CONF_DIR
from segkit.engine import train
from segkit.engine.checkpoint import (
    build_model_from_checkpoint,
    load_checkpoint,
    model_metadata,
    save_checkpoint,
)


def _cfg(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", f"dataset.root={root}", *overrides])


def test_training_checkpoint_is_complete_and_self_describing(sample_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(sample_root, "train.iters=2", "train.eval_every=2", "train.ema.enabled=true")
    train(cfg, output_dir=tmp_path)
    path = tmp_path / "checkpoints" / "last.pt"
    raw = torch.load(path, weights_only=True)  # everything is tensors and plain types
    ckpt = load_checkpoint(path)
    assert raw.keys() == ckpt.keys()
    for key in ("model", "ema", "optimizer", "scheduler", "rng", "sampler", "config", "metrics", "step"):
        assert ckpt[key] is not None, key
    assert ckpt["step"] == 2
    assert ckpt["model_config"]["name"] == "lraspp_mobilenetv3_small"
    assert ckpt["model_config"]["num_classes"] == 19
    assert ckpt["config"]["train"]["iters"] == 2 and ckpt["config"]["dataset"]["root"] == str(sample_root)
    assert ckpt["metrics"]["step"] == 2 and 0.0 <= ckpt["metrics"]["miou"] <= 1.0
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert ckpt["sampler"] == {"epoch": 1, "position": 0}  # 2 steps x 2 images of 4
    assert len(ckpt["class_names"]) == 19 and len(ckpt["palette"]) == 19
    assert ckpt["scheduler"]["last_epoch"] == 2
    model = build_model_from_checkpoint(ckpt)
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][name])
    ema_model = build_model_from_checkpoint(ckpt, use_ema=True)
    name = next(n for n, v in ckpt["ema"].items() if v.is_floating_point())
    assert torch.equal(ema_model.state_dict()[name], ckpt["ema"][name])
    assert not torch.equal(ckpt["ema"][name], ckpt["model"][name])
    # best.pt exists and is the same step (the only evaluation)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == 2


def test_training_save_crash_keeps_last_checkpoint(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while the training loop writes last.pt keeps the previous last.pt loadable."""
    train(_cfg(sample_root, "train.iters=4", "train.stop_after=2"), output_dir=tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["step"] == 2

    def killed_mid_write(obj, f, *args, **kwargs):
        f.write(b"\x80\x02 half a pickle")
        raise KeyboardInterrupt  # the process is interrupted while torch.save writes

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(sample_root, "train.iters=4", "resume=true"), output_dir=tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(last)["step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp file left


def test_rebuilding_an_imagenet_initialised_model_never_fetches_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint trained from ImageNet weights must load offline: its own state dict is complete."""
    import segkit.models.factory as factory
    from segkit.models import create_model

    model = create_model("lraspp_mobilenetv3_small")
    config = dict(model.model_config, encoder_weights="imagenet")
    path = save_checkpoint(tmp_path / "imagenet.pt", {**model_metadata(config), "model": model.state_dict()})

    load_encoder_weights = factory.load_encoder_weights

    def no_download(encoder: torch.nn.Module, name: str, weights: str | None) -> None:
        if weights is not None:
            raise AssertionError(f"rebuilding a checkpoint tried to load encoder weights {weights!r}")
        load_encoder_weights(encoder, name, weights)

    monkeypatch.setattr(factory, "load_encoder_weights", no_download)
    rebuilt = build_model_from_checkpoint(path)
    x = torch.randn(1, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
