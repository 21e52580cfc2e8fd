"""Static int8 quantization of an exported ONNX graph with onnxruntime, calibrated on dataset images.

QDQ format with per-channel weights (onnxruntime's recommended CPU set-up): the graph keeps its fp32
operators, wrapped in QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into int8 kernels
(QLinearConv, QLinearAdd, ...) when the session is created. Operators without an int8 kernel stay fp32
between a DequantizeLinear and a QuantizeLinear; :func:`fp32_operators` lists them with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.export.graph import graph_links
from segkit.export.int8_graph import fold_scalar_muls, fold_se_gates, quantize_before_space_to_depth
from segkit.export.upsampling import UPSAMPLING_OPS, upsample_by_phases
from segkit.formats.metadata import set_onnx_metadata
from segkit.inference.backends import fill_to_multiple

#: Operators that only compute shapes or indices (int64 tensors): never activations, never quantized.
SHAPE_OPS = frozenset(
    {
        "Shape",
        "Gather",
        "Reshape",
        "Expand",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Cast",
        "Slice",
        "Constant",
        "ConstantOfShape",
        "Range",
    }
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class CalibrationReader:
    """Feeds prepared batches to onnxruntime's calibrator (a ``CalibrationDataReader``).

    ``fixed_batch``: the graph's fixed batch size (an export with ``batch=N``); the images are then
    regrouped into batches of that size, the last one filled up with copies of its last image.
    """

    def __init__(
        self, input_name: str, batches: Iterable[np.ndarray], fixed_batch: int | None = None
    ) -> None:
        self.input_name = input_name
        self.batches = list(batches)
        if fixed_batch and self.batches:
            images = fill_to_multiple(np.concatenate(self.batches), fixed_batch)
            self.batches = list(np.split(images, len(images) // fixed_batch))
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.batches):
            return None
        self._pos += 1
        return {self.input_name: self.batches[self._pos - 1]}

    def rewind(self) -> None:
        self._pos = 0


def _as_reader(input_name: str, batches: Iterable[np.ndarray], fixed_batch: int | None = None) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationReader, CalibrationDataReader):
        pass

    return _Reader(input_name, batches, fixed_batch)


def quantize_int8(
    fp32_path: str | os.PathLike,
    output: str | os.PathLike,
    calibration_batches: Sequence[np.ndarray],
    *,
    metadata: Mapping[str, Any] | None = None,
    quant_format: str = "qdq",
    per_channel: bool = True,
    activation_type: str = "uint8",
    calibrate_method: str = "minmax",
    op_types_to_quantize: Sequence[str] | None = None,
    extra_options: Mapping[str, Any] | None = None,
    optimize_before: bool = True,
    fp32_head: bool = True,
    fold_muls: bool = True,
    fold_se: bool = True,
    final_upsampling: bool = True,
    nodes_to_exclude: Sequence[str] = (),
) -> Path:
    """Quantize ``fp32_path`` to ``output`` (one file) after ``quant_pre_process``.

    ``activation_type`` 'uint8' with int8 weights (U8S8) is what onnxruntime's x86 kernels are fastest
    with; ``metadata`` (if given) replaces the file's metadata_props, e.g. with ``precision: int8``.
    ``fp32_head`` leaves the final upsampling to the input size and the classifier Conv/Add/Resize
    nodes that only feed it in fp32 (:func:`output_head_nodes`): quantizing the full-size float logits
    only to dequantize them straight away costs two passes over the largest tensor, and onnxruntime's
    fp32 bilinear upsampling is faster than its uint8 one; the classifiers themselves are 1x1
    convolutions at 1/16 and 1/8 resolution.
    ``fold_muls`` folds multiplications by a constant into the scale of
    the DequantizeLinear before them (see :func:`segkit.export.int8_graph.fold_scalar_muls`);
    ``fold_se`` folds squeeze-and-excitation gates into the next convolution's weights, which only a
    graph fixed to a batch of 1 allows (:func:`segkit.export.int8_graph.fold_se_gates`);
    ``final_upsampling`` then rewrites the fp32 final upsampling as in the fp32 export
    (:func:`segkit.export.upsampling.upsample_by_phases`).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process


    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    for key, value, allowed in (
        ("quantization.format", quant_format, formats),
        ("quantization.calibrate_method", calibrate_method, methods),
        ("quantization.activation_type", activation_type, types),
    ):
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {sorted(allowed)}")
    if not calibration_batches:
        raise ValueError("int8 quantization needs at least one calibration image")
    fp32_path, output = Path(fp32_path), Path(output)
    graph_input = onnx.load(str(fp32_path), load_external_data=False).graph.input[0]
    input_name = graph_input.name
    batch_dim = graph_input.type.tensor_type.shape.dim[0]
    fixed_batch = batch_dim.dim_value if batch_dim.HasField("dim_value") else None
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # auto_merge: constant Resize scales give the batch axis the symbolic size floor(1.0*batch)
        # onnxruntime's symbolic shape inference drops a debug model (and external-data files) into the
        # current folder when it gives up on a shape; keep those in the temp folder, not the user's.
        source, target = str(fp32_path.resolve()), str(prepared.resolve())
        with _working_directory(tmp):
            quant_pre_process(
                source,
                target,
                skip_optimization=not optimize_before,
                auto_merge=True,
            )
        raw = Path(tmp) / "int8.onnx"
        exclude = list(nodes_to_exclude) + (output_head_nodes(prepared) if fp32_head else [])
        root_logger = logging.getLogger()
        level = root_logger.level
        root_logger.setLevel(logging.ERROR)  # one warning per int64 shape tensor otherwise
        try:
            quantize_static(
                str(prepared),
                str(raw),
                _as_reader(input_name, calibration_batches, fixed_batch),
                quant_format=formats[quant_format],
                op_types_to_quantize=list(op_types_to_quantize) if op_types_to_quantize else None,
                per_channel=per_channel,
                activation_type=types[activation_type],
                weight_type=QuantType.QInt8,
                calibrate_method=methods[calibrate_method],
                nodes_to_exclude=exclude,
                extra_options=dict(extra_options or {}),
            )
        finally:
            root_logger.setLevel(level)
        model = onnx.load(str(raw))
        if fold_muls:
            fold_scalar_muls(model)
        quantize_before_space_to_depth(model)  # exact, see its docstring
        if fold_se:
            fold_se_gates(model)
        if final_upsampling:
            upsample_by_phases(model)
        if metadata is not None:
            set_onnx_metadata(model, metadata)
        onnx.checker.check_model(model)
        final = Path(tmp) / "final.onnx"
        onnx.save_model(model, str(final), save_as_external_data=False)
        os.replace(final, output)
    return output


@contextlib.contextmanager
def _working_directory(path: str | os.PathLike) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def output_head_nodes(path: str | os.PathLike, head: bool = True) -> list[str]:
    """Names of the nodes of the graph at ``path`` that only compute the final upsampled logits.

    The final upsampling before a graph output (a Resize, or the Gather/MatMul/Reshape/Clip chain of
    :func:`~segkit.export.upsampling.upsample_by_phases`), with the ArgMax/Cast after it in an
    ``argmax=true`` export, and, with ``head``, the Conv/Add/Resize nodes before it whose results feed
    nothing else (LR-ASPP's two classifiers, the upsampling of the high-level one, and their sum; a
    single classifier Conv elsewhere). Empty for a graph without a final upsampling.
    """
    import onnx

    return head_node_names(onnx.load(str(path), load_external_data=False).graph, head)


#: operators between the final upsampling and the graph output of an ``argmax=true`` export
MASK_OPS = ("ArgMax", "Cast")


def head_node_names(graph: Any, head: bool = True) -> list[str]:
    """:func:`output_head_nodes` of an already loaded ``onnx.GraphProto``."""

    outputs = {o.name for o in graph.output}
    producer, consumers = graph_links(graph)
    names: set[str] = set()

    def walk(start: list[str], ops: tuple[str, ...], past_resize: bool) -> list[str]:
        """Name the producers of ``start`` (and theirs) of a type in ``ops`` whose results only reach
        named nodes or graph outputs; returns the tensors where the walk stopped."""
        todo, stopped = list(start), []
        while todo:
            tensor = todo.pop()
            node = producer.get(tensor)
            if node is None or node.name in names:
                continue
            users = [c for o in node.output if o not in outputs for c in consumers.get(o, [])]
            if node.op_type not in ops or any(c.name not in names for c in users):
                stopped.append(tensor)
                continue
            names.add(node.name)
            inputs = [i for i in node.input if i in producer]
            if node.op_type == "Resize" and not past_resize:
                stopped.extend(inputs[:1])  # the final upsampling starts here
                continue
            todo.extend(inputs)
        return stopped

    stopped = walk([o.name for o in graph.output], MASK_OPS + UPSAMPLING_OPS, past_resize=False)
    if not any(n.name in names and n.op_type in ("Resize", "MatMul") for n in graph.node):
        return []  # no final upsampling (the network writes its output at full size itself)
    if head:
        walk(stopped, ("Conv", "Add", "Resize"), past_resize=True)
    return [n.name for n in graph.node if n.name in names]


def fp32_operators(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Operator types of a quantized graph that still compute in fp32, with counts and the reason.

    A node counts as int8 when it is a QLinear*/integer operator, or (QDQ format) when one of its
    inputs comes from a DequantizeLinear and one of its outputs goes into a QuantizeLinear, the pattern
    onnxruntime fuses into an int8 kernel.
    """
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry


    graph = onnx.load(str(path), load_external_data=False).graph
    producer, consumers = graph_links(graph)
    initializers = {i.name for i in graph.initializer}
    known = set(QDQRegistry) | set(QLinearOpsRegistry)
    head = set(head_node_names(graph))
    reasons: dict[str, Counter[str]] = {}
    for n in graph.node:
        if n.op_type in QDQ_OPS or n.op_type.startswith("QLinear") or n.domain == "com.microsoft":
            continue
        if all(i in initializers or i == "" for i in n.input):
            continue  # constant sub-graph, folded away by onnxruntime
        dq_in = any(
            producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input
        )
        q_out = any(c.op_type == "QuantizeLinear" for o in n.output for c in consumers.get(o, []))
        if n.op_type in known and dq_in and q_out:
            continue  # the DQ -> op -> Q pattern onnxruntime runs as one int8 kernel
        if any(producer.get(i) is not None and producer[i].op_type == "QuantizeLinear" for i in n.input):
            continue  # rearranges already quantized values (e.g. the stem's SpaceToDepth)
        reasons.setdefault(n.op_type, Counter())[_fp32_reason(n, head, known)] += 1
    return {
        op: {"count": sum(found.values()), "reason": "; ".join(sorted(found))}
        for op, found in sorted(reasons.items())
    }


def _fp32_reason(node: Any, head: set[str], known: set[str]) -> str:
    """Why :func:`fp32_operators` found ``node`` computing in fp32."""
    if node.op_type == "ArgMax":
        return "argmax output (indices), computed on the fp32 logits"
    if node.name in head and node.op_type != "Cast":
        return (
            "final upsampling to the input size or the classifier before it, left fp32 on purpose "
            "(quantize_int8's fp32_head): faster than int8 there, see its docstring"
        )
    if node.op_type in SHAPE_OPS:
        return "shape/index arithmetic on int64 tensors, not activations"
    if node.op_type not in known:
        return (
            "no int8 kernel in onnxruntime (its quantizer has no rule for this operator): runs in fp32, "
            "with DequantizeLinear before and QuantizeLinear after it"
        )
    return "not selected for quantization (op_types_to_quantize) or its input is not a float activation"
