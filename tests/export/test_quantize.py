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
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torchvision.ops.misc import SqueezeExcitation

import segkit
from segkit.config import load_group
from segkit.data import CityscapesDataset
from segkit.data.sample import generate_sample
from segkit.engine.checkpoint import IMAGENET_MEAN, IMAGENET_STD, model_metadata, save_checkpoint
from segkit.export.__main__ import main
from segkit.inference import Predictor
from segkit.inference.predictor import normalize_batch

pytestmark = pytest.mark.slow  # subprocess commands, several processes or export fixtures

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
    # hard-swish/hard-sigmoid are quantized as Mul/Add/Clip: only the final upsampling (Gather + MatMul
    # per axis, a Clip writing the output), the two LR-ASPP classifiers, the upsampling of the high one
    # and their sum stay fp32, on purpose
    assert {k: v["count"] for k, v in ops.items()} == {
        "Add": 1, "Conv": 2, "Resize": 1, "Gather": 2, "MatMul": 2, "Reshape": 2, "Clip": 1,
    }  # fmt: skip
    assert all(v["reason"].startswith("final upsampling") for v in ops.values()), ops
    assert exported["report"]["int8"]["options"]["int8_friendly"] is True


def _optimized_graph(path: Path, tmp: Path) -> onnx.GraphProto:
    """The graph onnxruntime actually runs (QDQ groups fused into QLinear* kernels), layout unchanged."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp / "optimized.onnx")).graph


def test_int8_graph_runs_the_activations_as_int8_kernels(exported: dict, tmp_path: Path) -> None:
    path = Path(exported["report"]["int8"]["path"])
    saved = onnx.load(str(path)).graph
    assert not {"HardSigmoid", "HardSwish"} & {n.op_type for n in saved.node}
    # the stem's space-to-depth rearranges the already quantized (uint8) input
    q_input = next(n for n in saved.node if saved.input[0].name in n.input)
    assert q_input.op_type == "QuantizeLinear"
    assert [n.op_type for n in saved.node if q_input.output[0] in n.input] == ["SpaceToDepth"]
    graph = _optimized_graph(path, tmp_path)
    ops = Counter(n.op_type for n in graph.node)
    producer = {o: n for n in graph.node for o in n.output}
    assert not {"HardSigmoid", "HardSwish", "Mul"} & set(ops), ops
    assert (ops["Conv"], ops["Add"], ops["Clip"]) == (2, 1, 1), "only the fp32 classifier head"
    dq_fed = {
        n.op_type
        for n in graph.node
        if any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)
    }
    assert dq_fed <= {"Resize", "Conv"}, f"fp32 operators after a DequantizeLinear: {dq_fed}"
    model = segkit.create_model(MODEL, num_classes=19)
    n_swish = sum(isinstance(m, torch.nn.Hardswish) for m in model.modules())
    n_sigmoid = sum(isinstance(m, torch.nn.Hardsigmoid) for m in model.modules())
    assert (n_swish, n_sigmoid) == (18, 9)
    # one int8 Mul per hard-swish (x * hardsigmoid(x)) and per SE block (x * scale), plus the LR-ASPP
    # gate; each hard-sigmoid's x * (1/6) is folded into a DequantizeLinear scale, its + 1/2 is an Add
    assert ops["QLinearMul"] == n_swish + n_sigmoid + 1, ops
    assert ops["QLinearAdd"] >= n_swish + n_sigmoid, ops
    # the logits come straight out of the fp32 upsampling, no Q/DQ after it: width pass, height pass,
    # and the Clip writing the output (see upsample_by_phases)
    chain, name = [], graph.output[0].name
    while producer[name].op_type != "Add":
        chain.append(producer[name].op_type)
        name = next(i for i in producer[name].input if i in producer)  # the data, not the constants
    assert chain == ["Clip", "Reshape", "MatMul", "Gather", "Reshape", "MatMul", "Gather"]


def test_batch_1_export_folds_the_se_gates_and_predicts_batches(
    exported: dict, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "b1.onnx"
    args = [
        f"checkpoint={exported['ckpt']}", f"output={out}", f"verify.root={exported['root']}",
        "verify.images=null", "quantize=int8", f"calibration.root={exported['root']}", "calibration.images=8",
        "batch=1", "threads=1",
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "b1.report.json").read_text())
    assert report["onnx"]["batch"] == 1 and report["int8"]["miou_drop_points"] <= 1.0
    int8 = Path(report["int8"]["path"])
    for path in (out, int8):
        dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == [1, 3, *SIZE]
    # each SE block's int8 multiply became a gate-scaled weight of the convolution after it
    n_se = sum(isinstance(m, SqueezeExcitation) for m in segkit.create_model(MODEL, num_classes=19).modules())
    free = Counter(
        n.op_type for n in _optimized_graph(Path(exported["report"]["int8"]["path"]), tmp_path).node
    )
    fixed = Counter(n.op_type for n in _optimized_graph(int8, tmp_path).node)
    assert n_se == 9 and fixed["QLinearMul"] == free["QLinearMul"] - n_se, (free, fixed)
    assert report["int8"]["agreement_with_fp32"] >= 0.9
    # a fixed-batch graph still predicts a list of images (run one at a time)
    ds = CityscapesDataset(exported["root"], "val", verbose=False)
    images = [ds.load(i)[0] for i in range(3)]
    for path in (out, int8):
        pred = Predictor.from_file(path, threads=1)
        masks = pred.predict_batch(images)
        assert all(np.array_equal(m, pred.predict(img)) for m, img in zip(masks, images, strict=True))
    assert main([f"checkpoint={exported['ckpt']}", f"output={tmp_path / 'bad.onnx'}", "batch=0"]) == 2
    assert "batch=0 must be a positive whole number" in capsys.readouterr().err


def test_fold_se_gates_scales_the_weights_and_checks_the_gate_range() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from segkit.export.int8_graph import fold_se_gates

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 8, 5, 6), dtype=np.uint8)
    gate = rng.integers(0, 256, (1, 8, 1, 1), dtype=np.uint8)
    weight = rng.integers(-127, 128, (4, 8, 1, 1), dtype=np.int8)

    def model(gate_scale: float) -> onnx.ModelProto:
        a = lambda v, n: numpy_helper.from_array(np.asarray(v), n)  # noqa: E731
        nodes = [
            helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
            helper.make_node("DequantizeLinear", ["g", "gs", "gz"], ["gf"]),
            helper.make_node("Mul", ["xf", "gf"], ["m"]),
            helper.make_node("QuantizeLinear", ["m", "xs", "xz"], ["mq"]),
            helper.make_node("DequantizeLinear", ["mq", "xs", "xz"], ["mf"]),
            helper.make_node("DequantizeLinear", ["w", "ws"], ["wf"], axis=0),
            helper.make_node("Conv", ["mf", "wf"], ["y"], name="project", kernel_shape=[1, 1]),
        ]
        inits = [
            a(x, "x"), a(gate, "g"), a(weight, "w"), a(np.float32(0.05), "xs"), a(np.uint8(0), "xz"),
            a(np.float32(gate_scale), "gs"), a(np.uint8(0), "gz"), a(np.full(4, 0.01, np.float32), "ws"),
        ]  # fmt: skip
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 6])
        graph = helper.make_graph(nodes, "g", [], [out], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {})[0]  # noqa: E731
    unit = model(1 / 255)  # the gate's int8 range is [0, 1]
    want = run(unit)
    assert fold_se_gates(unit) == 1
    project = next(n for n in unit.graph.node if n.name == "project")
    assert project.input[0] == "xf", "the convolution reads the ungated map"
    assert not any(n.op_type == "Mul" and "xf" in n.input for n in unit.graph.node)
    got = run(unit)
    # exactly the convolution of the ungated map with the gated weights re-quantized to int8 ...
    gated = np.round(0.01 * weight[:, :, 0, 0] * (gate[0, :, 0, 0] / 255) / 0.01) * 0.01
    np.testing.assert_allclose(got, np.einsum("oc,nchw->nohw", gated, 0.05 * x), rtol=0, atol=1e-4)
    # ... which differs from the original only by rounding (half a step of the map and of each weight)
    bound = 0.5 * 0.01 * (0.05 * x).sum(axis=1, keepdims=True) + 0.5 * 0.05 * 8 * 1.27
    assert np.all(np.abs(got - want) <= bound)
    assert fold_se_gates(model(2 / 255)) == 0, "a gate reaching 2 could overflow the int8 weights"


@pytest.mark.parametrize("argmax", [False, True])
def test_head_nodes_are_the_final_upsampling_and_the_classifiers_before_it(argmax: bool) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from segkit.export.quantize import head_node_names
    from segkit.export.upsampling import upsample_by_phases

    def conv(name: str, x: str) -> onnx.NodeProto:
        return helper.make_node("Conv", [x, f"{name}_w"], [name], name=name, kernel_shape=[1, 1])

    nodes = [
        helper.make_node("Relu", ["x"], ["features"], name="features"),
        conv("low_classifier", "features"),
        conv("high_classifier", "features"),
        helper.make_node("Add", ["low_classifier", "high_classifier"], ["sum"], name="sum"),
        helper.make_node(
            "Resize", ["sum", "", "scales"], ["up" if argmax else "y"], name="final", mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
    ]  # fmt: skip
    if argmax:
        nodes += [
            helper.make_node("ArgMax", ["up"], ["index"], name="argmax", axis=1, keepdims=0),
            helper.make_node("Cast", ["index"], ["y"], name="to_uint8", to=TensorProto.UINT8),
        ]
    inits = [
        numpy_helper.from_array(np.ones((3, 4, 1, 1), np.float32), f"{n}_w")
        for n in ("low_classifier", "high_classifier")
    ]
    inits.append(numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales"))
    out_type = TensorProto.UINT8 if argmax else TensorProto.FLOAT
    out_shape = [1, 8, 8] if argmax else [1, 3, 8, 8]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", out_type, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mask = ["argmax", "to_uint8"] if argmax else []
    want = {"low_classifier", "high_classifier", "sum", "final", *mask}
    assert set(head_node_names(model.graph)) == want
    assert set(head_node_names(model.graph, head=False)) == {"final", *mask}
    assert upsample_by_phases(model) == 1
    rewritten = set(head_node_names(model.graph))
    assert rewritten >= {"low_classifier", "high_classifier", "sum", *mask} and "features" not in rewritten
    assert {n.op_type for n in model.graph.node if n.name in rewritten} >= {"Gather", "MatMul", "Reshape"}
    # a network that writes its output at full size itself has no head to keep in fp32
    plain = helper.make_graph(
        [conv("classifier", "x")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("classifier", TensorProto.FLOAT, [1, 3, 2, 2])],
        [numpy_helper.from_array(np.ones((3, 4, 1, 1), np.float32), "classifier_w")],
    )
    assert head_node_names(plain) == []


def test_calibration_batches_follow_a_fixed_batch_size() -> None:
    from segkit.export.quantize import CalibrationReader

    images = [np.full((1, 3, 2, 2), i, np.float32) for i in range(5)]
    free = CalibrationReader("image", images)
    assert [free.get_next()["image"].shape[0] for _ in range(5)] == [1] * 5 and free.get_next() is None
    fixed = CalibrationReader("image", images, fixed_batch=2)
    got = [fixed.get_next()["image"] for _ in range(3)]
    assert fixed.get_next() is None
    # images 0-4 in batches of two, the last batch filled up with a copy of image 4
    assert [b[:, 0, 0, 0].tolist() for b in got] == [[0, 1], [2, 3], [4, 4]]
    fixed.rewind()
    assert fixed.get_next()["image"][:, 0, 0, 0].tolist() == [0, 1]


def test_fold_scalar_muls_is_exact_on_a_qdq_graph() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from segkit.export.int8_graph import fold_scalar_muls

    def init(name: str, value: float, dtype) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, dtype=dtype), name)

    def model(c: float) -> onnx.ModelProto:
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
            helper.make_node("DequantizeLinear", ["cq", "cs", "cz"], ["cf"]),
            helper.make_node("Mul", ["xf", "cf"], ["m"], name="mul"),
            helper.make_node("QuantizeLinear", ["m", "s2", "z2"], ["mq"]),
            helper.make_node("DequantizeLinear", ["mq", "s2", "z2"], ["mf"]),
            helper.make_node("Add", ["mf", "xf"], ["y"]),
        ]
        inits = [
            init("s", 0.05, np.float32), init("z", 128, np.uint8), init("cq", 255, np.uint8),
            init("cs", c / 255, np.float32), init("cz", 0, np.uint8), init("s2", 0.05 * abs(c), np.float32),
            init("z2", 128, np.uint8),
        ]  # fmt: skip
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 50])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 50])],
            inits,
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    x = np.random.default_rng(0).uniform(-7, 7, (4, 50)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]  # noqa: E731
    m = model(1 / 6)
    want = run(m)
    assert fold_scalar_muls(m) == 1
    ops = [n.op_type for n in m.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Add"]
    assert {i.name for i in m.graph.initializer} == {"s", "z", "mul_folded_scale"}
    np.testing.assert_allclose(run(m), want, rtol=0, atol=1e-6)
    xq = np.clip(np.round(x / 0.05) + 128, 0, 255)
    np.testing.assert_allclose(run(m), (xq - 128) * 0.05 * (1 + 1 / 6), rtol=1e-6, atol=1e-6)
    negative = model(-0.5)  # a negative scale is not a valid DequantizeLinear scale: left alone
    assert fold_scalar_muls(negative) == 0 and "Mul" in [n.op_type for n in negative.graph.node]


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
    # a user's mistake: one line naming it, exit 2 (a failed verification exits 1)
    assert main([f"checkpoint={tmp_path / 'missing.pt'}", f"output={tmp_path / 'm.onnx'}"]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and len(err.strip().splitlines()) == 1
    assert main(["quantize=int8", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'bogus'" in err and len(err.strip().splitlines()) == 1
