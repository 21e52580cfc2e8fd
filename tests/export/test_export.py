"""ONNX export: every model config round-trips through onnxruntime; in-graph preprocess/argmax; dynamic
sizes; metadata; the verification gate."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import segkit
from segkit.config import group_options, load_group
from segkit.data import CityscapesDataset
from segkit.engine.checkpoint import model_metadata, save_checkpoint
from segkit.export import VerificationError, export_checkpoint, read_onnx_metadata, report_path
from segkit.export.__main__ import load_config
from segkit.export.metadata import build_metadata
from segkit.export.onnx import ExportWrapper, export_onnx
from segkit.export.verify import compare
from segkit.inference import Predictor
from segkit.inference.backends import OnnxBackend

SIZE = (64, 128)


def _model(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return segkit.create_model(name, num_classes=19, **overrides).eval()


def _metadata(name: str, **kw) -> dict:
    from segkit import labels
    from segkit.engine.checkpoint import IMAGENET_MEAN, IMAGENET_STD

    args = dict(input_size=SIZE, dynamic=False, preprocess=False, argmax=False)
    args.update(kw)
    return build_metadata(
        model_name=name,
        class_names=labels.CLASS_NAMES,
        palette=labels.PALETTE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        **args,
    )


def _assert_logits_match(wrapper, run, images, meta: dict, size=SIZE) -> None:
    """onnxruntime's logits equal the PyTorch wrapper's (1e-3) and their argmax agrees on >= 99.9%."""
    res = compare(
        wrapper,
        run,
        images,
        input_size=size,
        mean=meta["mean"],
        std=meta["std"],
        preprocess=False,
        output_kind="logits",
    )
    assert res["max_abs_logit_diff"] < 1e-3, res["max_abs_logit_diff"]
    assert res["argmax_agreement"] >= 0.999, res["argmax_agreement"]


@pytest.fixture(scope="module")
def images(sample_root) -> list[np.ndarray]:
    ds = CityscapesDataset(sample_root, "val", verbose=False)
    return [ds.load(i)[0] for i in range(len(ds))]


@pytest.mark.slow
@pytest.mark.parametrize("name", group_options("model"))
def test_every_model_config_exports_and_matches_pytorch(name: str, tmp_path, images) -> None:
    model = _model(name)
    meta = _metadata(name)
    wrapper = ExportWrapper(model, meta["mean"], meta["std"])
    path = export_onnx(wrapper, tmp_path / f"{name}.onnx", input_size=SIZE, metadata=meta)
    proto = onnx.load(str(path))
    assert all(op.version >= 17 for op in proto.opset_import if op.domain in ("", "ai.onnx"))
    assert list(tmp_path.iterdir()) == [path], "the export must be one self-contained file"
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, *SIZE], "static H/W by default"
    if name.startswith("lraspp"):  # upsampling by whole multiples: constant scales, no size arithmetic
        assert "Shape" not in {n.op_type for n in proto.graph.node}
    _assert_logits_match(wrapper, OnnxBackend(path, threads=1).run, images, meta)


def test_preprocess_and_argmax_in_graph_equal_the_predictor(tmp_path, images) -> None:
    name = "lraspp_mobilenetv3_large"
    model = _model(name)
    plain = _metadata(name)
    inner = _metadata(name, preprocess=True, argmax=True)
    p1 = export_onnx(
        ExportWrapper(model, plain["mean"], plain["std"]),
        tmp_path / "a.onnx",
        input_size=SIZE,
        metadata=plain,
    )
    p2 = export_onnx(
        ExportWrapper(model, plain["mean"], plain["std"], preprocess=True, argmax=True),
        tmp_path / "b.onnx",
        input_size=SIZE,
        metadata=inner,
    )
    graph_in = onnx.load(str(p2)).graph
    assert graph_in.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert graph_in.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert read_onnx_metadata(p2)["input_kind"] == "uint8"
    logits_pred, mask_pred = Predictor.from_file(p1), Predictor.from_file(p2)
    assert mask_pred.info.input_kind == "uint8" and mask_pred.info.output_kind == "mask"
    odd = np.ascontiguousarray(images[0][:40, :100])
    for img in [*images, odd]:
        a, b = logits_pred.predict(img), mask_pred.predict(img)
        assert a.shape == b.shape == img.shape[:2]
        assert (a == b).mean() >= 0.999
    with pytest.raises(ValueError, match="argmax=true"):
        mask_pred.probabilities(images[0])


def test_dynamic_height_and_width(tmp_path, images) -> None:
    name = "lraspp_mobilenetv3_small"
    model = _model(name, decoder_params={"pooling": "global"})
    meta = _metadata(name, dynamic=True)
    wrapper = ExportWrapper(model, meta["mean"], meta["std"])
    path = export_onnx(wrapper, tmp_path / "dyn.onnx", input_size=SIZE, metadata=meta, dynamic=True)
    assert "Shape" in {n.op_type for n in onnx.load(str(path)).graph.node}, "sizes follow the input"
    run = OnnxBackend(path, threads=1).run
    for size in [(64, 128), (96, 224)]:
        _assert_logits_match(wrapper, run, images, meta, size)
    pred = Predictor.from_file(path, input_size=(96, 224))
    assert pred.probabilities(images[0]).shape == (19, 96, 192)


def test_metadata_round_trip(tmp_path) -> None:
    name = "lraspp_mobilenetv3_small"
    meta = _metadata(name, preprocess=True, extra={"note": "x"})
    path = export_onnx(
        ExportWrapper(_model(name), meta["mean"], meta["std"], preprocess=True),
        tmp_path / "m.onnx",
        input_size=SIZE,
        metadata=meta,
    )
    back = read_onnx_metadata(path)
    assert back == meta
    raw = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(raw["class_names"])[0] == "road" and json.loads(raw["input_size"]) == [64, 128]
    assert back["output_kind"] == "logits" and back["input_kind"] == "uint8" and len(back["palette"]) == 19


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    name = "lraspp_mobilenetv3_small"
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    meta = model_metadata(load_group("model", name), input_size=list(SIZE))
    save_checkpoint(path, {"model": _model(name).state_dict(), **meta})
    return str(path)


@pytest.mark.slow
def test_export_checkpoint_writes_a_report(checkpoint: str, sample_root, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    cfg = load_config(
        [f"checkpoint={checkpoint}", f"output={out}", f"verify.root={sample_root}", "mobile=torchscript"]
    )
    report = export_checkpoint(cfg, log=lambda *_: None)
    saved = json.loads(report_path(out).read_text())
    assert saved["verification"] == json.loads(json.dumps(report["verification"]))
    assert saved["passed"] is True and saved["model_name"] == "lraspp_mobilenetv3_small"
    ver = saved["verification"]["64x128"]
    assert ver["images"] == 2 and ver["argmax_agreement"] >= 0.999 and ver["max_abs_logit_diff"] < 1e-3
    assert saved["onnx"]["bytes"] == out.stat().st_size and saved["onnx"]["input_size"] == [64, 128]
    assert saved["mobile"]["format"] == "torchscript"
    assert saved["mobile"]["verification"]["argmax_agreement"] >= 0.999
    assert Predictor.from_file(saved["mobile"]["path"]).backend == "torchscript"


def test_failed_verification_raises_and_reports(checkpoint: str, sample_root, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    cfg = load_config(
        [
            f"checkpoint={checkpoint}",
            f"output={out}",
            f"verify.root={sample_root}",
            "verify.min_agreement=1.01",
        ]
    )
    with pytest.raises(VerificationError, match="below the required"):
        export_checkpoint(cfg, log=lambda *_: None)
    saved = json.loads(report_path(out).read_text())
    assert saved["passed"] is False and "below the required" in saved["error"]


def test_config_errors_name_the_key(checkpoint: str, tmp_path) -> None:
    with pytest.raises(ValueError, match="no_such_key"):
        load_config(["no_such_key=1"])
    with pytest.raises(ValueError, match="dynamic=true is not possible"):
        export_checkpoint(
            load_config([f"checkpoint={checkpoint}", f"output={tmp_path / 'x.onnx'}", "dynamic=true"]),
            log=lambda *_: None,
        )
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_checkpoint(load_config([f"checkpoint={checkpoint}", f"output={tmp_path / 'x.bin'}"]))
    cfg = load_config(["input_size=[512,1024]", "calibration.images=4", "quantize=int8"])
    assert (
        cfg["input_size"] == [512, 1024] and cfg["calibration"]["images"] == 4 and cfg["quantize"] == "int8"
    )


@pytest.mark.slow
def test_without_a_dataset_root_verifies_on_a_generated_sample(
    checkpoint: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no datasets/cityscapes_sample here
    notes: list[str] = []
    report = export_checkpoint(load_config([f"checkpoint={checkpoint}", "output=m.onnx"]), log=notes.append)
    assert report["dataset"]["source"] == "generated procedural sample"
    assert report["dataset"]["images"] == 4 and report["verification"]["64x128"]["argmax_agreement"] >= 0.999
    assert any("not on real Cityscapes images" in n for n in notes)
    assert (tmp_path / "m.report.json").is_file() and not (tmp_path / "sample").exists()


def _count(model: torch.nn.Module, kinds: tuple[type, ...]) -> int:
    return sum(isinstance(m, kinds) for m in model.modules())


def test_int8_friendly_copy_is_the_same_function_and_leaves_the_model_alone() -> None:
    from segkit.export.int8_friendly import DecomposedHardsigmoid, DecomposedHardswish, int8_friendly

    model = _model("lraspp_mobilenetv3_small")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hard = (torch.nn.Hardswish, torch.nn.Hardsigmoid)
    n_hard = _count(model, hard)
    friendly = int8_friendly(model)
    assert n_hard > 10 and _count(friendly, hard) == 0
    assert _count(friendly, (DecomposedHardswish, DecomposedHardsigmoid)) == n_hard
    assert _count(model, hard) == n_hard, "the original model must keep its modules"
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert friendly.state_dict().keys() == before.keys()
    p_orig, p_copy = next(model.parameters()), next(friendly.parameters())
    assert p_orig.data_ptr() != p_copy.data_ptr(), "a deep copy: no shared parameters"
    x = torch.randn(2, 3, *SIZE) * 3
    with torch.no_grad():
        torch.testing.assert_close(friendly(x), model(x), rtol=1e-5, atol=1e-5)
    # the decompositions themselves, over the whole interesting range and beyond
    t = torch.linspace(-8, 8, 4001)
    torch.testing.assert_close(DecomposedHardswish()(t), torch.nn.functional.hardswish(t), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        DecomposedHardsigmoid()(t), torch.nn.functional.hardsigmoid(t), rtol=0, atol=1e-6
    )
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
    assert int8_friendly(plain) is plain


def _depthwise_channels(model: torch.nn.Module) -> list[int]:
    return [
        m.in_channels
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]


@pytest.mark.parametrize("name", ["lraspp_mobilenetv3_large", "lraspp_mobilenetv3_small"])
def test_int8_friendly_pads_depthwise_channels_to_16_with_exact_zeros(name) -> None:
    from segkit.export.int8_friendly import (
        DEPTHWISE_CHANNEL_MULTIPLE,
        _depthwise_padding,
        int8_friendly,
        pad_depthwise_channels,
    )

    model = _model(name)
    # trained-like BatchNorm statistics and affine terms, so a wrong padding rule could not hide
    gen = torch.Generator().manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.bias.data.copy_(torch.randn(n, generator=gen) * 0.5)
    before = _depthwise_channels(model)
    odd = [c for c in before if c % DEPTHWISE_CHANNEL_MULTIPLE]
    assert odd, "MobileNetV3 has expanded widths such as 72, 88 and 120 that are not multiples of 16"
    padded = copy.deepcopy(model)
    changed = pad_depthwise_channels(padded)
    after = _depthwise_channels(padded)
    assert changed == len(odd)
    assert all(c % DEPTHWISE_CHANNEL_MULTIPLE == 0 for c in after)
    assert [a - b for a, b in zip(after, before)] == [-c % DEPTHWISE_CHANNEL_MULTIPLE for c in before]
    assert _depthwise_channels(model) == before, "only the deep copy was padded"
    # every added channel is exactly zero after the expansion, the depthwise stage and the SE gating
    original = dict(model.named_modules())
    added: list[torch.Tensor] = []
    handles = []
    for path, block in padded.named_modules():
        if not _depthwise_padding(original.get(path, torch.nn.Identity())):
            continue
        width = original[path].block[1][0].in_channels
        for stage in list(block.block)[:-1]:  # all but the projection, whose output is not widened
            handles.append(stage.register_forward_hook(lambda m, i, out, c=width: added.append(out[:, c:])))
    x = torch.randn(2, 3, *SIZE) * 2
    with torch.no_grad():
        torch.testing.assert_close(padded(x), model(x), rtol=1e-4, atol=1e-4)
    for h in handles:
        h.remove()
    assert len(added) == len(handles) >= 2 * changed
    assert all(a.numel() and torch.count_nonzero(a) == 0 for a in added)
    # the friendly copy the int8 export uses is padded; the original model keeps its widths
    assert all(c % DEPTHWISE_CHANNEL_MULTIPLE == 0 for c in _depthwise_channels(int8_friendly(model)))
    assert _depthwise_channels(model) == before


def test_quantization_source_graph_has_int8_friendly_operators(tmp_path, images) -> None:
    from segkit.export.int8_friendly import export_quantization_source

    name = "lraspp_mobilenetv3_large"
    meta = _metadata(name)
    wrapper = ExportWrapper(_model(name), meta["mean"], meta["std"])
    path = export_quantization_source(wrapper, tmp_path / "src.onnx", input_size=SIZE, metadata=meta)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "HardSwish" not in ops and "HardSigmoid" not in ops
    assert ops.count("Clip") == _count(wrapper, (torch.nn.Hardswish, torch.nn.Hardsigmoid))
    assert "Shape" not in ops, "a fixed-size export computes no sizes at run time"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert len(resizes) == 2
    final = next(n for n in resizes if n.output[0] == graph.output[0].name)
    assert len(final.input) == 3 and inits[final.input[2]].tolist() == [1.0, 1.0, 8.0, 8.0]
    stem = [n for n in graph.node if graph.input[0].name in n.input]
    assert [n.op_type for n in stem] == ["SpaceToDepth"], "the stem convolution reads a space-to-depth input"
    conv = next(n for n in graph.node if stem[0].output[0] in n.input)
    assert conv.op_type == "Conv" and inits[conv.input[1]].shape == (16, 12, 2, 2)
    assert read_onnx_metadata(path) == meta
    # against the original model, with its HardSwish modules
    _assert_logits_match(wrapper, OnnxBackend(path, threads=1).run, images, meta)


def test_static_resize_scales_only_changes_whole_multiples() -> None:
    from onnx import TensorProto, helper

    from segkit.export.upsampling import static_resize_scales

    def graph(out_hw: tuple[int, int]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 6])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, *out_hw])
        hw = onnx.numpy_helper.from_array(np.array(out_hw, dtype=np.int64), "hw")
        nodes = [
            helper.make_node("Shape", ["x"], ["s"], start=0, end=2),
            helper.make_node("Concat", ["s", "hw"], ["sizes"], axis=0),
            helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear"),
        ]
        g = helper.make_graph(nodes, "g", [x], [y], [hw])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    doubled = graph((8, 12))
    assert static_resize_scales(doubled) == 1
    assert [n.op_type for n in doubled.graph.node] == ["Resize"] and len(doubled.graph.initializer) == 1
    assert onnx.numpy_helper.to_array(doubled.graph.initializer[0]).tolist() == [1.0, 1.0, 2.0, 2.0]
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 6)).astype(np.float32)
    want = ort.InferenceSession(graph((8, 12)).SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(doubled.SerializeToString()).run(None, {"x": x})[0]
    assert got.shape == (3, 2, 8, 12) and np.array_equal(got, want)
    odd = graph((7, 12))
    assert static_resize_scales(odd) == 0
    assert [n.op_type for n in odd.graph.node] == ["Shape", "Concat", "Resize"]


def _stem_graph(hw: tuple[int, int], stride: int = 2) -> onnx.ModelProto:
    """x -> 3x3 Conv (3 -> 5 channels, padding 1) -> y, with random weights and bias."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((5, 3, 3, 3)).astype(np.float32), "w")
    b = onnx.numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], name="stem", kernel_shape=[3, 3], strides=[stride] * 2, pads=[1] * 4
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, *hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([conv], "g", [x], [y], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_space_to_depth_stem_is_the_same_convolution() -> None:
    from segkit.export.int8_graph import space_to_depth_stem

    x = np.random.default_rng(1).standard_normal((2, 3, 8, 12)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]  # noqa: E731
    want = run(_stem_graph((8, 12)))
    model = _stem_graph((8, 12))
    assert space_to_depth_stem(model) == 1
    assert [n.op_type for n in model.graph.node] == ["SpaceToDepth", "Conv"]
    assert {i.name for i in model.graph.initializer} == {"b", "stem_s2d_weight"}, "old weight dropped"
    got = run(model)
    assert got.shape == want.shape == (2, 5, 4, 6)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # only a stride-2 3x3 convolution of an even-sized fixed input qualifies
    for hw, stride in (((8, 11), 2), ((8, 12), 1)):
        other = _stem_graph(hw, stride)
        assert space_to_depth_stem(other) == 0 and [n.op_type for n in other.graph.node] == ["Conv"]


def test_quantize_before_space_to_depth_is_exact() -> None:
    from onnx import TensorProto, helper

    from segkit.export.int8_graph import quantize_before_space_to_depth

    def model() -> onnx.ModelProto:
        nodes = [
            helper.make_node("SpaceToDepth", ["x"], ["s"], name="s2d", blocksize=2),
            helper.make_node("QuantizeLinear", ["s", "sc", "zp"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"]),
        ]
        inits = [
            onnx.numpy_helper.from_array(np.array(0.03, dtype=np.float32), "sc"),
            onnx.numpy_helper.from_array(np.array(120, dtype=np.uint8), "zp"),
        ]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 12])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 4, 6])
        return helper.make_model(
            helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
        )

    x = np.random.default_rng(2).uniform(-5, 5, (1, 3, 8, 12)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]  # noqa: E731
    m = model()
    assert quantize_before_space_to_depth(m) == 1
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["QuantizeLinear", "SpaceToDepth", "DequantizeLinear"]
    assert m.graph.node[0].input[0] == "x" and m.graph.node[1].output[0] == "q"
    assert np.array_equal(run(m), run(model())), "quantizing before rearranging changes no value"
