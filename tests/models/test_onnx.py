"""Every model config exports with the legacy ONNX exporter and onnxruntime agrees with PyTorch."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segkit.config import group_options
from segkit.models import create_model


def _export_and_run(
    model: torch.nn.Module, x: torch.Tensor, path, dynamic: bool = False
) -> tuple[np.ndarray, onnx.ModelProto]:
    axes = {"image": {2: "h", 3: "w"}, "logits": {2: "h", 3: "w"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes turned into constants: intended
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=axes,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0], onnx.load(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("name", group_options("model"))
def test_onnx_export_matches_torch(name, tmp_path):
    model = create_model(name).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        expected = model(x).numpy()
    got, graph = _export_and_run(model, x, tmp_path / f"{name}.onnx")
    assert got.shape == (1, 19, 64, 128)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    if not name.startswith("pan_"):  # smp's PAN resizes by scale factors ONNX cannot infer statically
        dims = [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
        assert dims == [1, 19, 64, 128]  # a fixed-size graph


def test_paper_pooling_exports_as_a_fixed_pool(tmp_path):
    # small kernel so the 1/16 map (8x16 at 128x256) gives a 2x3 grid of gates that must be resized back
    model = create_model(
        "lraspp_mobilenetv3_small", decoder_params={"pool_kernel": [4, 6], "pool_stride": [4, 5]}
    ).eval()
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        expected = model(x).numpy()
        assert model.decoder.scale[0](torch.zeros(1, 1, 8, 16)).shape[-2:] == (2, 3)
    got, graph = _export_and_run(model, x, tmp_path / "paper_pool.onnx")
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    pools = [n for n in graph.graph.node if n.op_type == "AveragePool"]
    assert len(pools) == 1
    attrs = {a.name: list(a.ints) for a in pools[0].attribute}
    assert attrs["kernel_shape"] == [4, 6] and attrs["strides"] == [4, 5]


def test_padding_is_computed_in_a_dynamic_graph(tmp_path):
    # exported at a size that needs padding; the graph must pad correctly at other sizes too
    model = create_model("fpn_mobilenetv3_large", num_classes=3).eval()
    _, _ = _export_and_run(model, torch.randn(1, 3, 48, 80), tmp_path / "fpn.onnx", dynamic=True)
    session = ort.InferenceSession(str(tmp_path / "fpn.onnx"), providers=["CPUExecutionProvider"])
    for size in [(70, 100), (64, 96)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == (1, 3, *size)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
