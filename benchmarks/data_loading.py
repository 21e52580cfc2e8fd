"""Data-loading throughput per worker process: segkit's loader vs a plain torchvision-v2 pipeline.

Both sides do the same work on full-size Cityscapes-format PNGs (1024x2048, made with the sample
generator in a temporary folder): decode image and label, map labelIds to trainIds, random scale
0.5-2.0, pad (mask 255) and random-crop 512x1024, horizontal flip, colour jitter, normalise, tensors.
One process, one thread (``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``): what one DataLoader
worker achieves. Both wall-clock and CPU-time rates are reported: on a shared machine the process
does not get a whole core, and images per CPU-second is what a worker with its own core delivers.
Prints a table and, last, one JSON line.

    python benchmarks/data_loading.py [--seconds 12] [--images 4] [--height 1024 --width 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.io import ImageReadMode, decode_png, read_file  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from segkit import labels  # noqa: E402
from segkit.config import load_group  # noqa: E402
from segkit.data import CityscapesDataset  # noqa: E402
from segkit.data.cityscapes import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from segkit.data.sample import generate_sample  # noqa: E402
from segkit.data.transforms import build_transforms  # noqa: E402

TARGET_PER_WORKER = 30.0


def torchvision_reference(
    ds: CityscapesDataset, crop: tuple[int, int], base_short: int
) -> Callable[[int], tuple]:
    """The equivalent plain torchvision pipeline: decode_png + v2 transforms on image and mask."""
    lut = torch.from_numpy(labels.ID_TO_TRAIN_ID)
    tf = v2.Compose(
        [
            v2.RandomResize(base_short // 2, base_short * 2),  # shorter side 0.5x-2.0x (nearest for the mask)
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.ColorJitter(0.25, 0.25, 0.25)], p=0.8),  # no hue, as the segkit recipe
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )

    def load(i: int) -> tuple:
        image = decode_png(read_file(str(ds.files[i])), ImageReadMode.RGB)
        label_ids = decode_png(read_file(str(ds.label_files[i])), ImageReadMode.GRAY)[0]
        mask = lut[label_ids.long()]
        return tf(tv_tensors.Image(image), tv_tensors.Mask(mask))

    return load


def measure(fn: Callable[[int], tuple], n_images: int, seconds: float) -> dict[str, float]:
    for i in range(2):  # warm-up: first-call allocations, lazy imports
        fn(i % n_images)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        fn(count % n_images)
        count += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "images": count,
        "img_per_s": round(count / elapsed, 2),
        "img_per_cpu_s": round(count / cpu, 2),
        "cpu_ms_per_img": round(1000 * cpu / count, 1),
    }


def three_step_variant(aug: DictConfig) -> DictConfig:
    """The recipe with albumentations' RandomScale + RandomCrop(pad_if_needed) in place of RandomScaleCrop."""
    aug = OmegaConf.create(OmegaConf.to_container(aug))
    t = aug.train.transforms
    i = next(k for k, node in enumerate(t) if node._target_.endswith("RandomScaleCrop"))
    sc = t[i]
    low, high = sc.scale
    scale = {"_target_": "albumentations.RandomScale", "scale_limit": [low - 1, high - 1], "p": 1.0}
    crop = {
        "_target_": "albumentations.RandomCrop",
        "height": sc.height,
        "width": sc.width,
        "pad_if_needed": True,
    }
    crop.update(pad_position="top_left", border_mode=0, fill=0, fill_mask=255)
    t[i] = scale
    t.insert(i + 1, crop)
    return aug


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="timed seconds per pipeline")
    parser.add_argument("--images", type=int, default=4, help="distinct images to cycle through")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--augment", default="cityscapes", help="conf/augment config for segkit's side")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    aug = load_group("augment", args.augment)
    crop_cfg = next(t for t in aug.train.transforms if "height" in t and "width" in t)
    crop = (int(crop_cfg.height), int(crop_cfg.width))
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_sample(
            Path(tmp), train=args.images, val=0, height=args.height, width=args.width, seed=0
        )
        train_tf, _ = build_transforms(aug)
        ds = CityscapesDataset(root, "train", transform=train_tf, verbose=False, use_train_id_files=False)
        three_tf, _ = build_transforms(three_step_variant(aug))
        three = CityscapesDataset(root, "train", transform=three_tf, verbose=False, use_train_id_files=False)
        png_mb = sum(f.stat().st_size for f in ds.files) / len(ds.files) / 1e6
        plain = CityscapesDataset(root, "train", verbose=False, use_train_id_files=False)
        reference = torchvision_reference(ds, crop, min(args.height, args.width))
        out = ds[0]
        ref = reference(0)
        assert out[0].shape == ref[0].shape == (3, *crop), (out[0].shape, ref[0].shape)

        rows = {
            "segkit decode only (cv2)": measure(plain.load, args.images, args.seconds / 4),
            # default_collate: what a DataLoader worker does with each sample (a contiguous batch copy)
            "segkit decode + augment": measure(lambda i: default_collate([ds[i]]), args.images, args.seconds),
            "same, albu scale+crop": measure(
                lambda i: default_collate([three[i]]), args.images, args.seconds / 2
            ),
            "torchvision v2 reference": measure(
                lambda i: default_collate([reference(i)]), args.images, args.seconds
            ),
        }
    seg, tv = rows["segkit decode + augment"], rows["torchvision v2 reference"]
    print(
        f"\nData loading per worker (1 process, 1 thread): {args.height}x{args.width} PNG ({png_mb:.1f} MB)"
        f" -> {crop[0]}x{crop[1]} crop, augment={args.augment}"
    )
    print(f"{'pipeline':<28} {'img/s wall':>11} {'img/cpu-s':>10} {'cpu ms/img':>11} {'images':>7}")
    for name, r in rows.items():
        print(
            f"{name:<28} {r['img_per_s']:>11.2f} {r['img_per_cpu_s']:>10.2f} {r['cpu_ms_per_img']:>11.1f}"
            f" {r['images']:>7d}"
        )
    speedup = seg["img_per_cpu_s"] / tv["img_per_cpu_s"]
    met = seg["img_per_cpu_s"] >= TARGET_PER_WORKER
    verdict = "met" if met else "NOT met"
    target = f"target >= {TARGET_PER_WORKER:.0f} img/s per worker: {verdict}"
    print(f"segkit vs torchvision (CPU time): {speedup:.2f}x; {target}")
    result = {
        "benchmark": "data_loading",
        "input": [args.height, args.width],
        "png_mb": round(png_mb, 2),
        "crop": list(crop),
        "augment": args.augment,
        "threads": 1,
        "cpu": platform.processor() or platform.machine(),
        "segkit_img_per_cpu_s": seg["img_per_cpu_s"],
        "segkit_img_per_s_wall": seg["img_per_s"],
        "segkit_decode_img_per_cpu_s": rows["segkit decode only (cv2)"]["img_per_cpu_s"],
        "segkit_albu_scale_crop_img_per_cpu_s": rows["same, albu scale+crop"]["img_per_cpu_s"],
        "torchvision_img_per_cpu_s": tv["img_per_cpu_s"],
        "torchvision_img_per_s_wall": tv["img_per_s"],
        "speedup": round(speedup, 2),
        "target_img_per_s": TARGET_PER_WORKER,
        "target_met": met,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
