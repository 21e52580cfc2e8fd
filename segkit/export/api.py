"""The export pipeline behind ``python -m segkit.export``: checkpoint -> ONNX (+int8, +mobile) + report.

Every file written is verified against the PyTorch model on dataset images before the command succeeds;
the numbers go to ``<output stem>.report.json`` beside the model, also when a check fails.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import segkit
from segkit.data.sample import generate_sample
from segkit.export.int8_friendly import export_quantization_source
from segkit.export.mobile import MOBILE_FORMATS, export_executorch, export_torchscript
from segkit.export.onnx import ExportWrapper, check_batch, export_onnx
from segkit.export.quantize import fp32_operators, quantize_int8
from segkit.export.verify import (
    VerificationError,
    check_agreement,
    compare,
    evaluate_miou,
    load_images,
    model_input,
)
from segkit.formats.checkpoint import description_of, load_checkpoint
from segkit.formats.description import ModelDescription
from segkit.inference import Predictor
from segkit.inference.backends import ExecuTorchBackend, OnnxBackend, TorchScriptBackend
from segkit.models import build_model_from_checkpoint
from segkit.web import find_runtime, write_web_app

#: Used when neither ``verify.root`` nor ``calibration.root`` is given and this folder exists.
DEFAULT_SAMPLE_ROOT = Path("datasets/cityscapes_sample")
#: Export size when neither the command nor the checkpoint gives one (Cityscapes at half resolution).
DEFAULT_INPUT_SIZE = (512, 1024)


def report_path(output: str | os.PathLike) -> Path:
    """``<dir>/<stem>.report.json`` for ``<dir>/<stem>.onnx``."""
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def int8_path(output: str | os.PathLike) -> Path:
    """``<dir>/<stem>.int8.onnx`` for ``<dir>/<stem>.onnx``."""
    output = Path(output)
    return output.with_name(output.stem + ".int8.onnx")


def _resolve_dataset(cfg: Mapping[str, Any], tmp: Path, log: Any) -> tuple[Path, str]:
    """The Cityscapes root used for verification, and a note on where it came from."""
    verify_root = cfg["verify"].get("root")
    calib_root = cfg["calibration"].get("root")
    if verify_root:
        return Path(verify_root), "verify.root"
    if calib_root:
        return Path(calib_root), "calibration.root"
    if (DEFAULT_SAMPLE_ROOT / "leftImg8bit").is_dir():
        log(f"note: no verify.root given, verifying on the sample dataset at {DEFAULT_SAMPLE_ROOT}")
        return DEFAULT_SAMPLE_ROOT, "default sample dataset"
    log(
        "note: no verify.root/calibration.root given and no sample dataset found: verifying on a freshly "
        "generated procedural sample (synthetic street scenes), not on real Cityscapes images"
    )
    root = generate_sample(tmp / "sample", train=8, val=4, height=256, width=512, seed=0)
    return root, "generated procedural sample"


def _second_size(size: tuple[int, int]) -> tuple[int, int]:
    """Another size for checking a dynamic graph: 32 pixels taller and 64 wider."""
    return size[0] + 32, size[1] + 64


def export_checkpoint(cfg: Mapping[str, Any], log: Any = print) -> dict[str, Any]:
    """Run the whole export described by ``cfg`` (conf/export.yaml's keys); returns the report dict.

    Raises :class:`VerificationError` (after writing the report) when a check fails.
    """
    import onnxruntime
    import torch


    if not cfg.get("checkpoint"):
        raise ValueError("checkpoint=<path to a segkit .pt checkpoint> is required")
    if not cfg.get("output"):
        raise ValueError("output=<path of the .onnx file to write> is required")
    output = Path(cfg["output"])
    if output.suffix.lower() != ".onnx":
        raise ValueError(f"output={output} must end in .onnx")
    if cfg.get("web"):  # checked before any work: the graph kind, and that the runtime files are there
        if not (cfg["preprocess"] and cfg["argmax"]):
            raise ValueError(
                f"web={cfg['web']} needs preprocess=true argmax=true (the page feeds pixels, draws the mask)"
            )
        find_runtime(cfg.get("web_runtime"))
    ckpt = load_checkpoint(cfg["checkpoint"])
    model = build_model_from_checkpoint(ckpt, use_ema=bool(cfg.get("use_ema", False)))
    size_cfg = cfg.get("input_size") or ckpt.get("input_size") or DEFAULT_INPUT_SIZE
    if len(size_cfg) != 2 or min(int(s) for s in size_cfg) < 32:
        raise ValueError(f"input_size={list(size_cfg)} must be [height, width] of at least 32 pixels")
    size = (int(size_cfg[0]), int(size_cfg[1]))
    dynamic, preprocess, argmax = bool(cfg["dynamic"]), bool(cfg["preprocess"]), bool(cfg["argmax"])
    batch = check_batch(cfg.get("batch"))
    pooling = (ckpt["model_config"].get("decoder_params") or {}).get("pooling")
    if dynamic and pooling == "paper":
        raise ValueError(
            f"dynamic=true is not possible for {cfg['checkpoint']}: its LR-ASPP 'paper' pooling has a kernel "
            "fixed for one input size; export a fixed size (input_size=[H,W]) or use pooling=global"
        )
    # the file describes itself as the checkpoint does, plus how this graph is fed and read
    description = description_of(ckpt, source=cfg["checkpoint"]).replace(
        input_size=size,
        input_kind="uint8" if preprocess else "float",
        output_kind="mask" if argmax else "logits",
        dynamic=dynamic,
        batch=batch,
    )
    mean, std = description.mean, description.std
    name = description.model_name or "model"
    meta = description.to_dict()
    wrapper = ExportWrapper(model, mean, std, preprocess=preprocess, argmax=argmax).eval()
    output_kind = meta["output_kind"]
    min_agreement = float(cfg["verify"].get("min_agreement", 0.999))
    report: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(cfg["checkpoint"]),
        "model_name": name,
        "versions": {
            "segkit": segkit.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "passed": False,
    }
    rpath = report_path(output)

    def save_report() -> None:
        rpath.parent.mkdir(parents=True, exist_ok=True)
        rpath.write_text(json.dumps(report, indent=2, default=float) + "\n")

    try:
        with tempfile.TemporaryDirectory() as tmp:
            log(f"exporting {name} at {size[0]}x{size[1]} to {output}")
            export_onnx(
                wrapper,
                output,
                input_size=size,
                metadata=meta,
                dynamic=dynamic,
                opset=int(cfg["opset"]),
                batch=batch,
            )
            report["onnx"] = {
                "path": str(output),
                "bytes": output.stat().st_size,
                "opset": int(cfg["opset"]),
                **{k: meta[k] for k in ("input_size", "dynamic", "batch", "input_kind", "input_layout")},
                "output_kind": meta["output_kind"],
            }
            root, source = _resolve_dataset(cfg, Path(tmp), log)
            split, n_verify = cfg["verify"]["split"], cfg["verify"].get("images")
            samples = load_images(root, split, n_verify, with_labels=True)
            images = [rgb for rgb, _ in samples]
            report["dataset"] = {"root": str(root), "source": source, "split": split, "images": len(images)}
            session = _session(output, cfg.get("threads"))
            check_sizes = [size] + ([_second_size(size)] if dynamic else [])
            report["verification"] = {}
            for s in check_sizes:
                res = compare(
                    wrapper,
                    session,
                    images,
                    input_size=s,
                    mean=mean,
                    std=std,
                    preprocess=preprocess,
                    output_kind=output_kind,
                )
                report["verification"][f"{s[0]}x{s[1]}"] = res
                log(_summary(f"onnx fp32 vs pytorch @ {s[0]}x{s[1]}", res))
                save_report()
                check_agreement(res, f"{output} at {s[0]}x{s[1]}", min_agreement)

            if cfg.get("quantize"):
                report["int8"] = _quantize(cfg, output, wrapper, description, samples, root, size, log)
                save_report()
            if cfg.get("mobile"):
                report["mobile"] = _mobile(cfg, output, wrapper, meta, images, size, min_agreement, log)
                save_report()
            if cfg.get("web"):
                models = [output] + ([int8_path(output)] if cfg.get("quantize") else [])
                app = write_web_app(cfg["web"], models, runtime_dir=cfg.get("web_runtime"))
                report["web"] = {"path": str(app), "models": [str(m) for m in models]}
                log(f"web app: {app} (serve it with python -m segkit.web serve {app})")
                save_report()
        report["passed"] = True
    except VerificationError as exc:
        report["error"] = str(exc)
        save_report()
        raise
    save_report()
    log(f"report: {rpath}")
    return report


def _session(path: Path, threads: int | None) -> Any:
    """A callable batch -> first output of an onnxruntime session on ``path``."""
    return OnnxBackend(path, threads=threads).run


def _summary(what: str, res: Mapping[str, Any]) -> str:
    diff = res["max_abs_logit_diff"]
    diff_txt = f"max |logit diff| {diff:.3g}, " if diff is not None else ""
    return f"{what}: {diff_txt}argmax agreement {res['argmax_agreement']:.5%} over {res['images']} images"


def _quantize(
    cfg: Mapping[str, Any],
    output: Path,
    wrapper: Any,
    description: ModelDescription,
    val_samples: list[Any],
    verify_root: Path,
    size: tuple[int, int],
    log: Any,
) -> dict[str, Any]:
    """int8 quantization, calibrated on ``calibration.root``, with fp32 vs int8 mIoU on the val samples."""

    if cfg["quantize"] != "int8":
        raise ValueError(f"quantize={cfg['quantize']!r}: only 'int8' is supported")
    q = cfg["quantization"]
    calib_cfg = cfg["calibration"]
    calib_root = Path(calib_cfg["root"]) if calib_cfg.get("root") else verify_root
    if not calib_cfg.get("root"):
        log(f"note: no calibration.root given, calibrating on {verify_root}")
    calib_images = load_images(calib_root, calib_cfg["split"], calib_cfg["images"])
    preprocess = description.input_kind == "uint8"
    mean, std = description.mean, description.std
    batches = [model_input(rgb, size, mean, std, preprocess)[0] for rgb in calib_images]
    target = int8_path(output)
    log(
        f"quantizing to int8 ({q['format']}, per-channel={q['per_channel']}) "
        f"on {len(batches)} images: {target}"
    )
    dynamic = description.dynamic
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        source = output
        if q.get("int8_friendly", True):
            # same function, written with operators that have int8 kernels (see int8_friendly.py)
            source = export_quantization_source(
                wrapper,
                Path(tmp) / "int8_source.onnx",
                input_size=size,
                metadata=description.to_dict(),
                dynamic=dynamic,
                opset=int(cfg["opset"]),
                batch=description.batch,
            )
        quantize_int8(
            source,
            target,
            batches,
            metadata=description.replace(precision="int8").to_dict(),
            quant_format=q["format"],
            per_channel=bool(q["per_channel"]),
            activation_type=q["activation_type"],
            calibrate_method=q["calibrate_method"],
            op_types_to_quantize=q.get("op_types") or None,
            extra_options=dict(q.get("extra_options") or {}),
            optimize_before=bool(q.get("optimize_before", True)),
        )
    threads = cfg.get("threads")
    fp32 = Predictor.from_file(output, threads=threads, input_size=size)
    int8 = Predictor.from_file(target, threads=threads, input_size=size)
    names = list(description.class_names)
    m32 = evaluate_miou(fp32.predict, val_samples, names)
    m8 = evaluate_miou(int8.predict, val_samples, names)
    agree = float(np.mean([(fp32.predict(rgb) == int8.predict(rgb)).mean() for rgb, _ in val_samples]))
    drop = 100.0 * (m32["miou"] - m8["miou"])
    result = {
        "path": str(target),
        "bytes": target.stat().st_size,
        "size_ratio": target.stat().st_size / output.stat().st_size,
        "options": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in q.items()},
        "calibration": {"root": str(calib_root), "split": calib_cfg["split"], "images": len(batches)},
        "miou_fp32": m32["miou"],
        "miou_int8": m8["miou"],
        "miou_drop_points": drop,
        "max_miou_drop_points": float(q["max_miou_drop"]),
        "agreement_with_fp32": agree,
        "fp32_operators": fp32_operators(target),
    }
    log(
        f"int8: mIoU {100 * m32['miou']:.2f} (fp32) -> {100 * m8['miou']:.2f} (int8), "
        f"drop {drop:.2f} points; "
        f"file {result['size_ratio']:.1%} of fp32; fp32 ops left: "
        + ", ".join(f"{k} x{v['count']}" for k, v in result["fp32_operators"].items())
    )
    if not drop <= float(q["max_miou_drop"]):
        raise VerificationError(
            f"{target}: int8 mIoU drop {drop:.2f} points exceeds "
            f"quantization.max_miou_drop={q['max_miou_drop']}"
        )
    return result


def _mobile(
    cfg: Mapping[str, Any],
    output: Path,
    wrapper: Any,
    meta: Mapping[str, Any],
    images: list[np.ndarray],
    size: tuple[int, int],
    min_agreement: float,
    log: Any,
) -> dict[str, Any]:
    """Write and verify the mobile-native file beside the ONNX model."""

    kind = cfg["mobile"]
    if kind not in MOBILE_FORMATS:
        raise ValueError(f"mobile={kind!r} is not one of {sorted(MOBILE_FORMATS)}")
    path = output.with_suffix(MOBILE_FORMATS[kind])
    log(f"exporting {kind} to {path}")
    # the batch these files take: ExecuTorch programs are traced for one image, TorchScript takes any
    meta = {**meta, "batch": 1 if kind == "executorch" else None}
    if kind == "executorch":
        export_executorch(wrapper, path, input_size=size, metadata=meta)
        run = ExecuTorchBackend(path).run
    else:
        export_torchscript(wrapper, path, input_size=size, metadata=meta)
        run = TorchScriptBackend(path).run
    res = compare(
        wrapper,
        run,
        images,
        input_size=size,
        mean=meta["mean"],
        std=meta["std"],
        preprocess=meta["input_kind"] == "uint8",
        output_kind=meta["output_kind"],
    )
    log(_summary(f"{kind} vs pytorch", res))
    check_agreement(res, str(path), min_agreement)
    return {"format": kind, "path": str(path), "bytes": path.stat().st_size, "verification": res}
