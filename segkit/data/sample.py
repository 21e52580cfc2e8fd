"""A procedural Cityscapes look-alike in the official folder layout, for tests, demos and CI.

Each image is a random street scene (sky, buildings, trees, road, sidewalk, poles with traffic signs and
lights, cars, persons, and the void ego-vehicle bonnet) described as polygons in the official
``_gtFine_polygons.json`` format. The label PNGs are rasterised from those polygons exactly as
``cityscapesscripts.preparation.json2labelImg`` does (PIL polygons drawn back to front over 'unlabeled'),
and the RGB image is painted from the same polygons with class-dependent colours, textures and noise, so
a model can learn it. Everything is a pure function of the seed: same seed, byte-identical files.

Usage (``conf/sample.yaml``; the older ``--out <dir> --train 24`` flags work too)::

    python -m segkit.data.sample out=datasets/cityscapes_sample train=24 val=8 height=256 width=512

Test-split labels are void-only, like the official release (its test annotations are withheld).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image, ImageDraw

from segkit.cli import Command

#: Real Cityscapes city names per split (the sample uses the first few of each).
CITIES: dict[str, tuple[str, ...]] = {
    "train": (
        "aachen",
        "bochum",
        "bremen",
        "cologne",
        "darmstadt",
        "dusseldorf",
        "erfurt",
        "hamburg",
        "hanover",
        "jena",
        "krefeld",
        "monchengladbach",
        "strasbourg",
        "stuttgart",
        "tubingen",
        "ulm",
        "weimar",
        "zurich",
    ),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_CITIES_PER_SPLIT = 3
_FRAME = 19  # the official annotated frame of every snippet is _000019

Point = tuple[int, int]


@dataclass
class _Obj:
    """One annotated polygon plus paint-only details (windows, wheels) that stay inside it."""

    label: str
    polygon: list[Point]
    color: tuple[int, int, int]
    decor: list[tuple[list[Point], tuple[int, int, int]]] = field(default_factory=list)


class _Canvas:
    """Maps normalised scene coordinates (u, v in [0, 1]) to integer pixel coordinates inside the image."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width

    def p(self, u: float, v: float) -> Point:
        return (
            int(round(min(max(u, 0.0), 1.0) * (self.w - 1))),
            int(round(min(max(v, 0.0), 1.0) * (self.h - 1))),
        )

    def poly(self, pts: list[tuple[float, float]]) -> list[Point]:
        return [self.p(u, v) for u, v in pts]


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    c = np.asarray(rgb, dtype=np.int64) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(x) for x in np.clip(c, 0, 255))  # type: ignore[return-value]


# Appearance of each class in the painted image (not a label table: the labels come from cityscapesscripts).
_LOOK = {
    "sky": (150, 190, 235),
    "building": (120, 105, 95),
    "vegetation": (60, 120, 45),
    "sidewalk": (175, 160, 165),
    "road": (85, 85, 90),
    "pole": (60, 60, 65),
    "traffic sign": (230, 200, 30),
    "traffic light": (30, 30, 30),
    "person": (150, 40, 60),
    "car": (40, 70, 150),
    "ego vehicle": (25, 25, 30),
}


def _ellipse(cx: float, cy: float, rx: float, ry: float, rng: np.random.Generator, n: int = 12) -> list:
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = rng.uniform(0.85, 1.15, size=n)
    return [(cx + rx * r[i] * np.cos(a), cy + ry * r[i] * np.sin(a)) for i, a in enumerate(ang)]


def _scene(rng: np.random.Generator, cv: _Canvas) -> list[_Obj]:
    """Random street scene as back-to-front polygons (the order json2labelImg draws them in)."""
    aspect = cv.w / cv.h
    hz = rng.uniform(0.38, 0.5)  # horizon
    vp = rng.uniform(0.4, 0.6)  # vanishing point (u)
    road_l, road_r = rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)
    objs: list[_Obj] = [
        _Obj("sky", cv.poly([(0, 0), (1, 0), (1, hz), (0, hz)]), _jitter(rng, _LOOK["sky"], 20))
    ]

    # buildings along the skyline, with gaps where trees or sky show through
    u = -rng.uniform(0, 0.05)
    while u < 1.0:
        bw = rng.uniform(0.07, 0.2)
        if abs(u + bw / 2 - vp) > 0.08 and rng.random() < 0.85:
            top = rng.uniform(0.05, hz - 0.08)
            b = _Obj(
                "building",
                cv.poly([(u, top), (u + bw, top), (u + bw, hz + 0.02), (u, hz + 0.02)]),
                _jitter(rng, _LOOK["building"], 30),
            )
            win = _jitter(rng, (45, 50, 60), 10)
            rows, cols = int(rng.integers(2, 5)), int(rng.integers(2, 5))
            for r in range(rows):
                for c in range(cols):
                    wu = u + bw * (c + 0.3) / cols
                    wv = top + (hz - top) * (r + 0.25) / (rows + 0.5)
                    b.decor.append(
                        (
                            cv.poly(
                                [
                                    (wu, wv),
                                    (wu + bw * 0.35 / cols, wv),
                                    (wu + bw * 0.35 / cols, wv + (hz - top) * 0.3 / (rows + 0.5)),
                                    (wu, wv + (hz - top) * 0.3 / (rows + 0.5)),
                                ]
                            ),
                            win,
                        )
                    )
            objs.append(b)
        u += bw
    for _ in range(int(rng.integers(1, 4))):  # trees: crown and trunk are both 'vegetation'
        tu = rng.choice([rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)])
        rv = rng.uniform(0.06, 0.12)
        color = _jitter(rng, _LOOK["vegetation"], 20)
        objs.append(
            _Obj(
                "vegetation",
                cv.poly(
                    [
                        (tu - 0.006, hz - rv),
                        (tu + 0.006, hz - rv),
                        (tu + 0.006, hz + 0.03),
                        (tu - 0.006, hz + 0.03),
                    ]
                ),
                color,
            )
        )
        objs.append(_Obj("vegetation", cv.poly(_ellipse(tu, hz - rv, rv / aspect * 1.4, rv, rng)), color))

    # ground: sidewalk everywhere below the horizon, the road trapezoid on top of it
    objs.append(
        _Obj("sidewalk", cv.poly([(0, hz), (1, hz), (1, 1), (0, 1)]), _jitter(rng, _LOOK["sidewalk"], 20))
    )
    objs.append(
        _Obj(
            "road",
            cv.poly([(vp - 0.03, hz), (vp + 0.03, hz), (road_r, 1), (road_l, 1)]),
            _jitter(rng, _LOOK["road"], 15),
        )
    )

    # things standing on the ground, sorted far (near the horizon) to near
    things: list[tuple[float, list[_Obj]]] = []

    def road_edges(v: float) -> tuple[float, float]:
        t = (v - hz) / (1 - hz)
        return vp - 0.03 + t * (road_l - vp + 0.03), vp + 0.03 + t * (road_r - vp - 0.03)

    for _ in range(int(rng.integers(1, 4))):  # poles with a sign or a traffic light
        v = rng.uniform(hz + 0.05, 0.8)
        s = (v - hz) / (1 - hz)
        left, right = road_edges(v)
        pu = left - rng.uniform(0.01, 0.04) if rng.random() < 0.5 else right + rng.uniform(0.01, 0.04)
        ph = 0.9 * s + 0.15
        pw = max(0.004, 0.01 * s)
        pole = _Obj(
            "pole",
            cv.poly([(pu, v - ph), (pu + pw, v - ph), (pu + pw, v), (pu, v)]),
            _jitter(rng, _LOOK["pole"], 10),
        )
        group = [pole]
        sw = max(0.015, 0.06 * s)
        if rng.random() < 0.6:
            group.append(
                _Obj(
                    "traffic sign",
                    cv.poly(_ellipse(pu + pw / 2, v - ph, sw / 2, sw * aspect / 2, rng, 8)),
                    _jitter(rng, _LOOK["traffic sign"], 25),
                )
            )
        else:
            tl = _Obj(
                "traffic light",
                cv.poly(
                    [
                        (pu - sw / 3, v - ph - sw * 1.5),
                        (pu + pw + sw / 3, v - ph - sw * 1.5),
                        (pu + pw + sw / 3, v - ph + sw),
                        (pu - sw / 3, v - ph + sw),
                    ]
                ),
                _jitter(rng, _LOOK["traffic light"], 8),
            )
            lamp = [(0, 200, 40), (240, 170, 0), (220, 30, 20)][int(rng.integers(0, 3))]
            tl.decor.append(
                (cv.poly(_ellipse(pu + pw / 2, v - ph - sw * 0.8, sw / 5, sw * aspect / 5, rng, 8)), lamp)
            )
            group.append(tl)
        things.append((v, group))
    for _ in range(int(rng.integers(1, 5))):  # cars on the road
        v = rng.uniform(hz + 0.04, 0.92)
        s = (v - hz) / (1 - hz)
        left, right = road_edges(v)
        cw = 0.3 * s + 0.03
        cu = rng.uniform(left, max(left, right - cw))
        chh = cw * aspect * 0.55
        body = [
            (cu, v),
            (cu + cw, v),
            (cu + cw, v - chh * 0.55),
            (cu + cw * 0.8, v - chh),
            (cu + cw * 0.2, v - chh),
            (cu, v - chh * 0.55),
        ]
        car = _Obj("car", cv.poly(body), _jitter(rng, _LOOK["car"], 60))
        car.decor.append(
            (
                cv.poly(
                    [
                        (cu + cw * 0.24, v - chh * 0.93),
                        (cu + cw * 0.76, v - chh * 0.93),
                        (cu + cw * 0.86, v - chh * 0.58),
                        (cu + cw * 0.14, v - chh * 0.58),
                    ]
                ),
                (30, 35, 45),
            )
        )
        for wu in (cu + cw * 0.08, cu + cw * 0.74):
            car.decor.append(
                (
                    cv.poly(
                        [(wu, v), (wu + cw * 0.18, v), (wu + cw * 0.18, v - chh * 0.2), (wu, v - chh * 0.2)]
                    ),
                    (15, 15, 15),
                )
            )
        things.append((v, [car]))
    for _ in range(int(rng.integers(1, 4))):  # persons on the sidewalk
        v = rng.uniform(hz + 0.04, 0.9)
        s = (v - hz) / (1 - hz)
        left, right = road_edges(v)
        ph = 0.55 * s + 0.06
        pw = ph / aspect * 0.35
        pu = (
            rng.uniform(0.0, max(0.0, left - pw)) if rng.random() < 0.5 else rng.uniform(min(1.0, right), 1.0)
        )
        color = _jitter(rng, _LOOK["person"], 50)
        body = [
            (pu, v),
            (pu + pw * 0.4, v),
            (pu + pw * 0.5, v - ph * 0.4),
            (pu + pw * 0.6, v),
            (pu + pw, v),
            (pu + pw * 0.9, v - ph * 0.75),
            (pu + pw * 0.1, v - ph * 0.75),
        ]
        head = _ellipse(pu + pw / 2, v - ph * 0.85, pw * 0.3, ph * 0.12, rng, 8)
        things.append(
            (
                v,
                [
                    _Obj("person", cv.poly(body), color),
                    _Obj("person", cv.poly(head), _jitter(rng, (200, 160, 130), 20)),
                ],
            )
        )
    for _, group in sorted(things, key=lambda t: t[0]):
        objs.extend(group)

    # the car's own bonnet at the bottom: void ('ego vehicle', trainId 255) like in every Cityscapes frame
    ev = rng.uniform(0.86, 0.93)
    objs.append(
        _Obj(
            "ego vehicle",
            cv.poly([(0, 1), (0, ev + 0.04), (0.25, ev), (0.75, ev), (1, ev + 0.04), (1, 1)]),
            _jitter(rng, _LOOK["ego vehicle"], 8),
        )
    )
    return objs


def polygons_json(objs: list[_Obj], height: int, width: int) -> dict:
    """The official ``_gtFine_polygons.json`` structure for a list of objects."""
    return {
        "imgHeight": height,
        "imgWidth": width,
        "objects": [{"label": o.label, "polygon": [[x, y] for x, y in o.polygon]} for o in objs],
    }


def rasterize(annotation: dict, encoding: str = "ids") -> Image.Image:
    """Label image of a polygons dict: 'ids'/'trainIds' (mode L) or 'color' (RGBA), as json2labelImg does.

    Objects are filled in list order over the 'unlabeled' background; negative-id labels are not drawn.
    """
    size = (int(annotation["imgWidth"]), int(annotation["imgHeight"]))
    attr = {"ids": "id", "trainIds": "trainId", "color": "color"}[encoding]
    img = Image.new("RGBA" if encoding == "color" else "L", size, getattr(name2label["unlabeled"], attr))
    draw = ImageDraw.Draw(img)
    for obj in annotation["objects"]:
        if obj.get("deleted"):
            continue
        name = obj["label"]
        if name not in name2label and name.endswith("group"):
            name = name[: -len("group")]
        if name not in name2label:
            raise ValueError(f"unknown Cityscapes label {obj['label']!r} in polygon annotation")
        label = name2label[name]
        if label.id < 0:
            continue
        draw.polygon([tuple(p) for p in obj["polygon"]], fill=getattr(label, attr))
    return img


def _paint(objs: list[_Obj], label_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB image from the same polygons: flat colours, then class textures, illumination and sensor noise."""
    h, w = label_ids.shape
    img = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for o in objs:
        draw.polygon(o.polygon, fill=o.color)
        for poly, color in o.decor:
            draw.polygon(poly, fill=color)
    rgb = np.asarray(img, dtype=np.float32)

    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    sky = label_ids == name2label["sky"].id
    rgb += np.where(sky[..., None], 40.0 * yy, 0.0)  # sky brightens towards the horizon
    # low-frequency blotches (foliage, stains), strongest on vegetation and road
    blot = rng.standard_normal((max(2, h // 8), max(2, w // 8))).astype(np.float32)
    blot = cv2.resize(blot, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    gain = np.full(256, 4.0, dtype=np.float32)
    gain[name2label["vegetation"].id] = 22.0
    gain[name2label["road"].id] = 8.0
    gain[name2label["sky"].id] = 2.0
    rgb += blot * gain[label_ids][..., None]
    # global illumination and sensor noise
    rgb = rgb * rng.uniform(0.8, 1.2) + rng.uniform(-15, 15, size=3).astype(np.float32)
    rgb += rng.normal(0.0, 6.0, size=rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _write_png(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def generate_sample(
    out: str | Path,
    *,
    train: int = 24,
    val: int = 8,
    test: int = 0,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
) -> Path:
    """Write a procedural Cityscapes-format dataset to ``out`` and return its path.

    Creates ``leftImg8bit/<split>/<city>/<city>_<seq>_000019_leftImg8bit.png`` and, next to it in
    ``gtFine/<split>/<city>/``, ``_gtFine_polygons.json``, ``_gtFine_labelIds.png``,
    ``_gtFine_labelTrainIds.png`` and ``_gtFine_color.png``. Existing files of the same names are replaced.
    """
    if height < 16 or width < 16:
        raise ValueError(f"sample images must be at least 16x16 pixels, got height={height} width={width}")
    counts = {"train": train, "val": val, "test": test}
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"number of {split} images must be >= 0, got {n}")
    out = Path(out)
    canvas = _Canvas(height, width)
    for split, n in counts.items():
        cities = CITIES[split][:_CITIES_PER_SPLIT]
        for i in range(n):
            city, seq = cities[i % len(cities)], i // len(cities)
            stem = f"{city}_{seq:06d}_{_FRAME:06d}"
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
            objs = _scene(rng, canvas)
            full = polygons_json(objs, height, width)
            label_ids = np.asarray(rasterize(full, "ids"))
            rgb = _paint(objs, label_ids, rng)
            # the test split ships void-only annotations, as the official one does
            ann = (
                full
                if split != "test"
                else polygons_json([o for o in objs if o.label == "ego vehicle"], height, width)
            )
            gt_dir = out / "gtFine" / split / city
            gt_dir.mkdir(parents=True, exist_ok=True)
            (gt_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps(ann, indent=4) + "\n")
            _write_png(gt_dir / f"{stem}_gtFine_labelIds.png", rasterize(ann, "ids"))
            _write_png(gt_dir / f"{stem}_gtFine_labelTrainIds.png", rasterize(ann, "trainIds"))
            _write_png(gt_dir / f"{stem}_gtFine_color.png", rasterize(ann, "color"))
            _write_png(out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", Image.fromarray(rgb))
    return out


def _run(cfg: Any) -> int:
    sizes = {k: int(cfg[k]) for k in ("train", "val", "test", "height", "width", "seed")}
    root = generate_sample(cfg.out, **sizes)
    counts = f"{cfg.train} train, {cfg.val} val, {cfg.test} test images ({cfg.height}x{cfg.width})"
    print(f"wrote {counts} to {root}")
    return 0


COMMAND = Command(
    prog="python -m segkit.data.sample",
    config_name="sample",
    usage="[out=<dir>] [train=24] [val=8] [test=0] [height=256] [width=512] [seed=0]",
    run=_run,
    user_errors=(ValueError, OSError),
    legacy_flags={f"--{k}": k for k in ("out", "train", "val", "test", "height", "width", "seed")},
)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``key=value`` overrides of ``conf/sample.yaml`` (the older ``--out <dir> --train 24`` too)."""
    return COMMAND.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
