"""The base layer's file formats: atomic checkpoints loaded with weights_only, one model description,
and checkpoints written before block tables still loading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from segkit.formats import ModelDescription, ModelFileError
from segkit.formats.atomic import atomic_write
from segkit.formats.checkpoint import (
    CheckpointError,
    description_of,
    load_checkpoint,
    model_metadata,
    save_checkpoint,
)
from segkit.labels import CLASS_NAMES, PALETTE
from segkit.models import build_model_from_checkpoint, create_model
from segkit.models.encoders.mobilenetv3 import block_spec
from segkit.search.arch import encoder_blocks, residual_groups, shrink_group, shrink_model


def test_crash_during_save_leaves_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    good = {"format": "segkit-checkpoint", "model_config": {}, "model": {"w": torch.ones(3)}}
    good["class_names"] = []
    save_checkpoint(path, good)
    before = path.read_bytes()

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"partial checkpoint bytes")  # some bytes reach the file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    bad = dict(good, model={"w": torch.zeros(3)})
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, bad)
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a segkit checkpoint"):
        load_checkpoint(foreign)
    assert issubclass(CheckpointError, ModelFileError)  # inference catches one type for every model file


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask_like_any_other_file(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c.pt", {"model": {}})
        other = atomic_write(tmp_path / "x.bin", lambda tmp: tmp.write_bytes(b"x"))
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert plain.stat().st_mode & 0o777 == expected
    assert path.stat().st_mode & 0o777 == expected and other.stat().st_mode & 0o777 == expected


def test_the_description_round_trips_through_every_form() -> None:
    desc = ModelDescription.for_classes(
        CLASS_NAMES, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), input_size=(256, 512), model_name="m"
    )
    assert np.array_equal(desc.palette, PALETTE)
    exported = desc.replace(input_kind="uint8", output_kind="mask", dynamic=False, batch=1, precision="int8")
    back = ModelDescription.from_dict(exported.to_dict(), source="x.onnx")
    assert back == exported and back != desc
    ckpt = {**model_metadata({"name": "m"}, desc), "model": {}}
    from_ckpt = description_of(ckpt)
    assert (from_ckpt.mean, from_ckpt.std, from_ckpt.input_size, from_ckpt.model_name) == (
        (0.5, 0.4, 0.3),
        (0.2, 0.25, 0.3),
        (256, 512),
        "m",
    )
    other = ModelDescription.for_classes(["a", "b"])
    assert other.palette.shape == (2, 3) and not other.palette.any()  # no Cityscapes colours for others
    with pytest.raises(ModelFileError, match="model.onnx: palette has 3 colours for 2 classes"):
        ModelDescription.from_dict({"class_names": ["a", "b"], "palette": [[0] * 3] * 3}, source="model.onnx")
    with pytest.raises(ModelFileError, match="input_kind must be"):
        ModelDescription.from_dict({"input_kind": "bgr"}, source="m")


def _randomize_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_a_checkpoint_written_before_block_tables_loads_as_a_table(tmp_path: Path) -> None:
    """Earlier segkit saved a shrunk model as its base config plus a 'search' entry of per-block widths."""
    torch.manual_seed(0)
    base = _randomize_batchnorm(create_model("lraspp_mobilenetv3_small", encoder_params={"width_mult": 0.5}))
    shrunk, _ = shrink_model(base, 4, 48)
    group = residual_groups(shrunk)[0]
    shrunk, _ = shrink_group(shrunk, group, group.channels - 8)
    specs = [block_spec(b) for _, b in encoder_blocks(shrunk)]
    legacy = {
        **model_metadata(base.model_config),  # the base config: width_mult 0.5, the paper table
        "model": shrunk.state_dict(),
        "search": {
            "expanded_channels": [s.expanded_channels for s in specs],
            "out_channels": [s.out_channels for s in specs],
        },
    }
    path = tmp_path / "adapted_v1.pt"
    torch.save(legacy, path)
    loaded = build_model_from_checkpoint(path)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), shrunk.eval()(x))
    table = loaded.model_config["encoder_params"]
    assert [row[1] for row in table["blocks"]] == [s.expanded_channels for s in specs]
    assert table["width_mult"] == 1.0 and table["reduced_tail"] is False
