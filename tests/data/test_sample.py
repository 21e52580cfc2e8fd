"""The procedural sample: official layout and names, labels identical to cityscapesscripts, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import name2label
from PIL import Image

from segkit._compat import patch_cityscapesscripts
from segkit.data.sample import CITIES, generate_sample, main

NAME = re.compile(r"^([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png$")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_official_layout_names_and_json(sample_root: Path) -> None:
    counts = {"train": 4, "val": 2, "test": 2}
    for split, n in counts.items():
        images = sorted((sample_root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(images) == n
        for img in images:
            m = NAME.match(img.name)
            assert m, img.name
            city = m.group(1)
            assert city == img.parent.name and city in CITIES[split]
            stem = img.name[: -len("_leftImg8bit.png")]
            gt = sample_root / "gtFine" / split / city
            for suffix in ("polygons.json", "labelIds.png", "labelTrainIds.png", "color.png"):
                assert (gt / f"{stem}_gtFine_{suffix}").is_file(), f"{stem}_gtFine_{suffix}"
            ann = json.loads((gt / f"{stem}_gtFine_polygons.json").read_text())
            assert (ann["imgHeight"], ann["imgWidth"]) == (64, 128)
            assert Image.open(img).size == (128, 64) and Image.open(img).mode == "RGB"
            for obj in ann["objects"]:
                assert obj["label"] in name2label
                assert len(obj["polygon"]) >= 3 and all(
                    len(p) == 2 and isinstance(p[0], int) for p in obj["polygon"]
                )
            if split == "test":  # withheld like the official test labels: void only
                assert {o["label"] for o in ann["objects"]} == {"ego vehicle"}
    # several cities per split
    assert len({p.name for p in (sample_root / "leftImg8bit" / "train").iterdir()}) == 3


def test_scenes_contain_the_street_classes(sample_root: Path) -> None:
    names: set[str] = set()
    for f in (sample_root / "gtFine" / "train").glob("*/*_polygons.json"):
        objects = json.loads(f.read_text())["objects"]
        names |= {o["label"] for o in objects}
        assert objects[-1]["label"] == "ego vehicle"  # drawn last: nearest to the camera
        assert objects[0]["label"] == "sky"  # drawn first: farthest
    expected = {"sky", "building", "road", "sidewalk", "vegetation", "car", "person", "pole", "ego vehicle"}
    assert expected <= names
    assert names & {"traffic sign", "traffic light"}


def test_labels_identical_to_cityscapesscripts_json2labelImg(sample_root: Path, tmp_path: Path) -> None:
    patch_cityscapesscripts()
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    jsons = sorted(sample_root.glob("gtFine/*/*/*_gtFine_polygons.json"))
    assert len(jsons) == 8
    for js in jsons:
        stem = js.name[: -len("_polygons.json")]
        for encoding, suffix in (("ids", "labelIds"), ("trainIds", "labelTrainIds"), ("color", "color")):
            ref = tmp_path / f"{stem}_{suffix}.png"
            json2labelImg(str(js), str(ref), encoding)
            ours = Image.open(js.with_name(f"{stem}_{suffix}.png"))
            theirs = Image.open(ref)
            assert ours.mode == theirs.mode, (js.name, encoding)
            np.testing.assert_array_equal(
                np.asarray(ours), np.asarray(theirs), err_msg=f"{js.name} {encoding}"
            )


def test_same_seed_byte_identical_other_seed_different(tmp_path: Path) -> None:
    kw = {"train": 2, "val": 1, "test": 1, "height": 32, "width": 64}
    a = _tree(generate_sample(tmp_path / "a", seed=7, **kw))
    b = _tree(generate_sample(tmp_path / "b", seed=7, **kw))
    c = _tree(generate_sample(tmp_path / "c", seed=8, **kw))
    assert len(a) == 4 * 5 and a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k]]
    assert any(k.endswith("_leftImg8bit.png") for k in differing)
    assert any(k.endswith("_labelIds.png") for k in differing)


def test_cli_any_size_and_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "--out",
            str(tmp_path / "s"),
            "--train",
            "5",
            "--val",
            "0",
            "--height",
            "40",
            "--width",
            "72",
            "--seed",
            "3",
        ]
    )
    images = sorted((tmp_path / "s" / "leftImg8bit" / "train").glob("*/*.png"))
    assert len(images) == 5 and not (tmp_path / "s" / "leftImg8bit" / "val").exists()
    assert {Image.open(p).size for p in images} == {(72, 40)}
    # 5 images over 3 cities: the 4th and 5th start a second sequence number
    assert images[1].name == "aachen_000001_000019_leftImg8bit.png"
    assert "wrote 5 train" in capsys.readouterr().out


def test_rgb_is_learnable_from_colour(sample_root: Path) -> None:
    """Class colours differ enough that a nearest-mean colour classifier fit on train works on val."""

    def pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for img in sorted((sample_root / "leftImg8bit" / split).glob("*/*.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            lab = sample_root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            xs.append(np.asarray(Image.open(img), dtype=np.float32).reshape(-1, 3))
            ys.append(np.asarray(Image.open(lab)).reshape(-1))
        return np.concatenate(xs), np.concatenate(ys)

    x, y = pixels("train")
    classes = [c for c in np.unique(y) if c != 255 and (y == c).sum() > 50]
    means = np.stack([x[y == c].mean(0) for c in classes])
    xv, yv = pixels("val")
    keep = np.isin(yv, classes)
    pred = np.asarray(classes)[np.argmin(((xv[keep, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    assert (pred == yv[keep]).mean() > 0.6


@pytest.mark.parametrize("kw", [{"height": 8}, {"width": 4}, {"train": -1}])
def test_rejects_bad_arguments(tmp_path: Path, kw: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        generate_sample(tmp_path, **kw)
