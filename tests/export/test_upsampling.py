"""The export's upsampling rewrites compute what the Resize they replace computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from segkit.export.upsampling import (
    block_size,
    block_weights,
    classify_before_upsampling,
    phase_weights,
    upsample_by_phases,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_phase_weights_are_bilinear_half_pixel_interpolation(scale: int) -> None:
    x = RNG.standard_normal(11).astype(np.float32)
    padded = np.concatenate([x[:1], x, x[-1:]])  # edge samples repeat, as the Gather's clamped indices
    neighbours = np.stack([padded[:-2], padded[1:-1], padded[2:]], axis=1)  # (11, 3): k - 1, k, k + 1
    ours = (neighbours @ phase_weights(scale).T).reshape(-1)  # output s * k + p
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None], scale_factor=scale, mode="linear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(phase_weights(scale).sum(axis=1), 1.0, rtol=0, atol=1e-7)


@pytest.mark.parametrize("length, block", [(12, 4), (12, 12), (7, 7), (5, 1), (32, 16)])
def test_block_weights_upsample_each_block_from_its_window(length: int, block: int) -> None:
    scale = 4
    x = RNG.standard_normal(length).astype(np.float32)
    windows = np.clip(np.arange(0, length, block)[:, None] + np.arange(-1, block + 1), 0, length - 1)
    ours = (x[windows] @ block_weights(scale, block).T).reshape(-1)  # block b's outputs, blocks in order
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None], scale_factor=scale, mode="linear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(block_weights(scale, 1), phase_weights(scale))


@pytest.mark.parametrize(
    "length, target, want", [(64, 8, 8), (128, 16, 16), (12, 8, 6), (7, 16, 7), (13, 8, 13), (30, 8, 6)]
)
def test_block_size_is_the_divisor_nearest_the_target(length: int, target: int, want: int) -> None:
    assert block_size(length, target) == want


def _resize_model(
    scales: list[float],
    *,
    mode: str = "half_pixel",
    argmax: bool = False,
    channels: int = 5,
    size: tuple[int, int] = (6, 7),
) -> onnx.ModelProto:
    """x (N x 4 x h x w) -> 1x1 Conv to ``channels`` -> Resize(scales) -> [ArgMax] -> y, batch free."""
    h, w = size
    out_h, out_w = int(h * scales[2]), int(w * scales[3])
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[1, 1]),
        helper.make_node(
            "Resize", ["c", "", "scales"], ["up" if argmax else "y"], name="final", mode="linear",
            coordinate_transformation_mode=mode,
        ),
    ]  # fmt: skip
    if argmax:
        nodes.append(helper.make_node("ArgMax", ["up"], ["y"], axis=1, keepdims=0))
    inits = [
        numpy_helper.from_array(RNG.standard_normal((channels, 4, 1, 1)).astype(np.float32), "cw"),
        numpy_helper.from_array(RNG.standard_normal(channels).astype(np.float32), "cb"),
        numpy_helper.from_array(np.array(scales, dtype=np.float32), "scales"),
    ]
    out_type, out_shape = (
        (TensorProto.INT64, ["n", out_h, out_w])
        if argmax
        else (TensorProto.FLOAT, ["n", channels, out_h, out_w])
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, h, w])],
        [helper.make_tensor_value_info("y", out_type, out_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]


@pytest.mark.parametrize("scales", [[1, 1, 8, 8], [1, 1, 4, 2], [1, 1, 1, 3], [1, 1, 2, 1]])
@pytest.mark.parametrize("size", [(6, 7), (24, 32)])  # one block per axis; several (6 x 12, 16 x 2)
def test_upsample_by_phases_equals_the_resize(scales: list[float], size: tuple[int, int]) -> None:
    x = RNG.standard_normal((2, 4, *size)).astype(np.float32)  # batch 2 through a batch-free graph
    model = _resize_model(scales, size=size)
    want = _run(model, x)
    assert upsample_by_phases(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "Resize" not in ops and ops[-1] == "Clip"  # the Clip writes the graph output
    passes = (scales[2] > 1) + (scales[3] > 1)
    assert ops.count("Gather") == ops.count("MatMul") == passes
    got = _run(model, x)
    assert got.shape == want.shape == (2, 5, int(size[0] * scales[2]), int(size[1] * scales[3]))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("size", [(6, 7), (24, 32)])
def test_upsample_by_phases_before_argmax_needs_no_output_copy(size: tuple[int, int]) -> None:
    x = RNG.standard_normal((1, 4, *size)).astype(np.float32)
    model = _resize_model([1, 1, 8, 8], argmax=True, channels=19, size=size)
    want = _run(model, x)
    assert upsample_by_phases(model) == 1
    # channels-last passes, so the ArgMax reduces contiguous runs of the 19 class scores
    ops = [n.op_type for n in model.graph.node]
    assert ops[1] == "Transpose" and ops[-2:] == ["Reshape", "ArgMax"]
    argmax = model.graph.node[-1]
    assert {a.name: helper.get_attribute_value(a) for a in argmax.attribute} == {"axis": 3, "keepdims": 0}
    onnx.checker.check_model(model, full_check=True)
    got = _run(model, x)
    assert got.shape == (1, 8 * size[0], 8 * size[1])
    assert (got == want).mean() > 0.999  # ties between classes may break differently after rounding


@pytest.mark.parametrize(
    "scales, mode",
    [([1, 1, 8, 8], "align_corners"), ([1, 1, 1.5, 2], "half_pixel"), ([1, 2, 2, 2], "half_pixel")],
)
def test_upsample_by_phases_leaves_other_resizes_alone(scales: list[float], mode: str) -> None:
    model = _resize_model(scales, mode=mode)
    before = model.SerializeToString()
    assert upsample_by_phases(model) == 0
    assert model.SerializeToString() == before


def _decoder_model(out_channels: int) -> onnx.ModelProto:
    """x (1 x 8 x 5 x 6) -> Resize x2 -> 1x1 Conv (bias) -> y."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "Resize",
                ["x", "", "scales"],
                ["up"],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            ),
            helper.make_node("Conv", ["up", "cw", "cb"], ["y"], name="classifier", kernel_shape=[1, 1]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 10, 12])],
        [
            numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"),
            numpy_helper.from_array(RNG.standard_normal((out_channels, 8, 1, 1)).astype(np.float32), "cw"),
            numpy_helper.from_array(RNG.standard_normal(out_channels).astype(np.float32), "cb"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_classify_before_upsampling_moves_a_narrowing_conv_and_keeps_the_function() -> None:
    x = RNG.standard_normal((1, 8, 5, 6)).astype(np.float32)
    model = _decoder_model(out_channels=3)
    want = _run(model, x)
    assert classify_before_upsampling(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Resize"]
    np.testing.assert_allclose(_run(model, x), want, rtol=0, atol=1e-5)  # bias included: weights sum to 1
    widening = _decoder_model(out_channels=16)  # more channels after the conv: resizing first is cheaper
    assert classify_before_upsampling(widening) == 0
    assert [n.op_type for n in widening.graph.node] == ["Resize", "Conv"]
