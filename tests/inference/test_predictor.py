"""The shared Predictor: same masks from every back end, resizing rules, attributes and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segkit
from segkit import labels
from segkit.config import load_group
from segkit.data import CityscapesDataset
from segkit.engine.checkpoint import model_metadata, save_checkpoint
from segkit.export.metadata import build_metadata
from segkit.export.mobile import export_torchscript
from segkit.export.onnx import ExportWrapper, export_onnx
from segkit.inference import ModelFileError, Predictor
from segkit.inference.predictor import fit_size, prepare_image

SIZE = (64, 128)
MODEL = "lraspp_mobilenetv3_small"


def _meta(ckpt: dict, **kw) -> dict:
    args = dict(dynamic=False, preprocess=False, argmax=False)
    args.update(kw)
    return build_metadata(
        model_name=MODEL,
        class_names=ckpt["class_names"],
        palette=ckpt["palette"],
        mean=ckpt["mean"],
        std=ckpt["std"],
        input_size=SIZE,
        **args,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random-init checkpoint and its ONNX (logits) and TorchScript exports at 64x128."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("predictor")
    model = segkit.create_model(MODEL, num_classes=19).eval()
    # Non-trivial BN statistics so that the random model's classes vary over the image.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    meta = model_metadata(load_group("model", MODEL), input_size=list(SIZE))
    ckpt = {"model": model.state_dict(), **meta}
    pt = save_checkpoint(out / "model.pt", ckpt)
    wrapper = ExportWrapper(model, meta["mean"], meta["std"])
    onnx_path = export_onnx(wrapper, out / "model.onnx", input_size=SIZE, metadata=_meta(ckpt))
    ts = export_torchscript(wrapper, out / "model.ts", input_size=SIZE, metadata=_meta(ckpt))
    return {"pt": pt, "onnx": onnx_path, "ts": ts, "ckpt": ckpt, "dir": out}


@pytest.fixture(scope="module")
def images(sample_root) -> list[np.ndarray]:
    ds = CityscapesDataset(sample_root, "val", verbose=False)
    return [ds.load(i)[0] for i in range(len(ds))]


@pytest.mark.slow
def test_pt_onnx_torchscript_give_the_same_masks(files: dict, images: list[np.ndarray]) -> None:
    ref = Predictor.from_file(files["pt"])
    assert ref.backend == "pytorch" and ref.input_size == SIZE
    ref_masks = [ref.predict(img) for img in images]
    assert len(np.unique(np.concatenate([m.ravel() for m in ref_masks]))) > 1, "degenerate test model"
    for key, backend in (("onnx", "onnxruntime"), ("ts", "torchscript")):
        other = Predictor.from_file(files[key], threads=1)
        assert other.backend == backend
        agree = np.mean([(other.predict(img) == m).mean() for img, m in zip(images, ref_masks)])
        assert agree >= 0.999, (key, agree)


def test_predict_returns_image_size_and_probabilities_working_size(files: dict) -> None:
    pred = Predictor.from_file(files["onnx"])
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 170, 3), dtype=np.uint8)
    mask = pred.predict(img)
    assert mask.shape == (100, 170) and mask.dtype == np.uint8 and mask.max() < 19
    probs = pred.probabilities(img)
    assert probs.dtype == np.float32 and probs.shape == (19, *fit_size((100, 170), SIZE)) == (19, 64, 109)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    again = pred.mask_from_probabilities(probs, (100, 170))
    assert again.shape == (100, 170) and (again == mask).mean() > 0.99
    # At the working size itself, probabilities -> mask is exactly the predicted mask.
    small = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    assert np.array_equal(pred.mask_from_probabilities(pred.probabilities(small), SIZE), pred.predict(small))


def test_predict_batch_equals_single_predictions(files: dict, images: list[np.ndarray]) -> None:
    pred = Predictor.from_file(files["onnx"])
    odd = np.ascontiguousarray(images[0][:50, :90])
    batch = [images[0], odd, images[1]]
    masks = pred.predict_batch(batch)
    assert [m.shape for m in masks] == [(64, 128), (50, 90), (64, 128)]
    for img, m in zip(batch, masks):
        assert np.array_equal(m, pred.predict(img))


def test_attributes_come_from_the_file(files: dict) -> None:
    for key in ("pt", "onnx", "ts"):
        pred = Predictor.from_file(files[key])
        assert pred.class_names == list(labels.CLASS_NAMES)
        assert pred.palette.shape == (19, 3) and pred.palette.dtype == np.uint8
        assert np.array_equal(pred.palette, labels.PALETTE)
        assert pred.input_size == SIZE
        assert pred.info.model_name == MODEL
        colour = pred.colorize(np.array([[0, 10]], dtype=np.uint8))
        assert colour.tolist() == [[labels.PALETTE[0].tolist(), labels.PALETTE[10].tolist()]]


def test_checkpoint_without_input_size_pads_to_stride(files: dict, tmp_path) -> None:
    ckpt = dict(files["ckpt"], input_size=None)
    path = save_checkpoint(tmp_path / "free.pt", ckpt)
    pred = Predictor.from_file(path)
    assert pred.input_size is None
    img = np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    assert pred.probabilities(img).shape == (19, 70, 100)
    assert pred.predict(img).shape == (70, 100)
    assert Predictor.from_file(path, input_size=(64, 128)).input_size == (64, 128)


def test_torchscript_saved_as_pt_is_recognised(files: dict, tmp_path) -> None:
    copy = tmp_path / "traced.pt"
    copy.write_bytes(files["ts"].read_bytes())
    pred = Predictor.from_file(copy)
    assert pred.backend == "torchscript" and pred.input_size == SIZE


def test_static_graph_rejects_another_input_size(files: dict) -> None:
    with pytest.raises(ValueError, match="fixed size"):
        Predictor.from_file(files["onnx"], input_size=(128, 256))


def test_prepare_image_keeps_aspect_and_pads_with_mean() -> None:
    img = np.full((32, 32, 3), 7, dtype=np.uint8)
    canvas, valid = prepare_image(img, (64, 128), mean=(0.5, 0.25, 0.0))
    assert canvas.shape == (64, 128, 3) and valid == (64, 64)
    assert (canvas[:, :64] == 7).all()
    assert canvas[0, 100].tolist() == [128, 64, 0]
    canvas, valid = prepare_image(np.zeros((33, 65, 3), np.uint8), None, mean=(0, 0, 0))
    assert canvas.shape == (64, 96, 3) and valid == (33, 65)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("x.onnx", b"this is not a graph\n", "not a loadable ONNX model"),
        ("random.pt", None, "not a segkit checkpoint"),
        ("missing.onnx", "missing", "not found"),
        ("weights.bin", b"\x00\x01", "unknown model file type"),
        ("broken.pt", b"garbage bytes", "not a readable segkit checkpoint"),
    ],
)
def test_clear_errors_for_wrong_files(tmp_path, name: str, content, match: str) -> None:
    path = tmp_path / name
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match) as info:
        Predictor.from_file(path)
    assert name in str(info.value)


def test_bad_images_are_rejected(files: dict) -> None:
    pred = Predictor.from_file(files["onnx"])
    with pytest.raises(ValueError, match="image 0: expected an H x W x 3 uint8"):
        pred.predict(np.zeros((64, 128, 3), np.float32))
    with pytest.raises(ValueError, match="image 1"):
        pred.predict_batch([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])


def test_a_fixed_batch_graph_runs_any_number_of_images_in_filled_chunks(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from segkit.inference.backends import OnnxBackend, fill_to_multiple

    # y = x * per-image factor of the graph's batch position: 2 x 1 x 2 x 2 in and out (batch fixed to 2)
    factor = numpy_helper.from_array(np.array([1.0, 10.0], np.float32).reshape(2, 1, 1, 1), "factor")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "factor"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 1, 2, 2])],
        [factor],
    )
    path = tmp_path / "fixed2.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    backend = OnnxBackend(path)
    assert backend.fixed_batch == 2
    images = np.arange(1, 4, dtype=np.float32)[:, None, None, None] * np.ones((3, 1, 2, 2), np.float32)
    filled = fill_to_multiple(images, 2)
    assert filled[:, 0, 0, 0].tolist() == [1, 2, 3, 3]  # the last image repeated up to a whole batch
    out = backend.run(images)
    # images 0, 1 in the first run (factors 1, 10), image 2 first in the second run (factor 1)
    assert out.shape == (3, 1, 2, 2) and out[:, 0, 0, 0].tolist() == [1.0, 20.0, 3.0]
    assert backend.run(images[:2])[:, 0, 0, 0].tolist() == [1.0, 20.0]
