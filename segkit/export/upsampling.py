"""Exact rewrites of a fixed-size graph's bilinear upsampling, in both precisions.

A segmentation network upsamples twice at its end: LR-ASPP brings the 1/16 branch to 1/8, then the
logits to the input size. Both rewrites here compute the same function (up to float rounding) with
fewer bytes moved, and both need constant Resize scales, i.e. a fixed-size export
(:func:`static_resize_scales`).

* :func:`classify_before_upsampling`: a 1x1 convolution after a bilinear Resize runs before it instead.
  Bilinear weights sum to one, so a per-pixel linear map (bias included) commutes with them; the Resize
  then moves the classifier's 19 channels instead of the decoder's 128.
* :func:`upsample_by_phases`: the final upsampling by a whole factor ``s``. With half-pixel centres,
  output row ``s * k + p`` mixes input rows ``k - 1, k, k + 1`` with weights that depend on ``p`` only.
  Each axis is cut into blocks of ``b`` input rows: one Gather takes each block with a neighbour on
  either side (``b + 2`` rows) and one MatMul by a constant ``(b * s, b + 2)`` matrix writes the block's
  ``b * s`` output rows, a result that reshapes to the upsampled layout for free. onnxruntime's own
  Resize either runs the 19 channels padded to 32 in its blocked layout and then reorders the 40 MB
  result (512x1024), or runs a slower plain kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segkit.export.graph import (
    drop_unused_nodes,
    graph_links,
    inferred_dims,
    node_attr,
    run_before,
    splice,
)

#: operator types of a final upsampling: a Resize, or what :func:`upsample_by_phases` writes instead
UPSAMPLING_OPS = ("Resize", "Transpose", "Gather", "MatMul", "Reshape", "Clip")
#: Resize coordinate modes whose sampling positions are ``(out + 0.5) / scale - 0.5``, clamped at the edges
HALF_PIXEL_MODES = ("half_pixel", "pytorch_half_pixel")
#: input samples per block of :func:`upsample_by_phases` (the nearest divisor of the axis is used): each
#: block's MatMul reads ``b + 2`` samples, so larger blocks gather less, and the width pass writes rows
#: of ``b * s`` values; 16 and 8 were fastest for 64 x 128 logits upsampled 8x (onnxruntime, 2 threads)
WIDTH_BLOCK, HEIGHT_BLOCK = 16, 8


def static_resize_scales(model: Any) -> int:
    """Give every ``Resize`` whose target size is computed at run time constant ``scales`` instead.

    The traced graph computes an upsampling's target size from ``Shape`` nodes because the batch axis
    is dynamic, even when height and width are fixed. In a quantized graph that costs twice: the
    ``Shape`` consumers force a duplicate fp32 DequantizeLinear of their input, and onnxruntime does not
    run a ``Resize`` with computed sizes in int8. Where shape inference gives static channels, heights
    and widths on both sides and every output size is a whole multiple of the input's, constant scales
    describe the same resize exactly (onnxruntime derives the coordinate mapping from out/in either
    way). Changes ``model`` (an ``onnx.ModelProto``) in place, drops the nodes left unused and returns
    how many Resize nodes changed.
    """
    from onnx import numpy_helper

    dims = inferred_dims(model, data_prop=True)
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3] or node.input[3] in constants:
            continue
        src, dst = dims.get(node.input[0]), dims.get(node.output[0])
        if not src or not dst or len(src) != len(dst) or None in src[1:] or None in dst[1:]:
            continue
        if any(d % s for s, d in zip(src[1:], dst[1:])):
            continue
        scales = np.array([1.0] + [d / s for s, d in zip(src[1:], dst[1:])], dtype=np.float32)
        name = f"{node.name or node.output[0]}_static_scales"
        model.graph.initializer.append(numpy_helper.from_array(scales, name))
        del node.input[1:]
        node.input.extend(["", name])  # roi unused, scales
        changed += 1
    if changed:
        drop_unused_nodes(model)
    return changed


def _constant_scales(node: Any, inits: dict[str, Any]) -> np.ndarray | None:
    """A Resize's scales when they are a constant and no ``sizes`` input is given, else None."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[2] not in inits or (len(node.input) > 3 and node.input[3]):
        return None
    return numpy_helper.to_array(inits[node.input[2]])


def _is_bilinear(node: Any) -> bool:
    return (
        node.op_type == "Resize"
        and node_attr(node, "mode", "nearest") == "linear"
        and node_attr(node, "antialias", 0) == 0
        and node_attr(node, "coordinate_transformation_mode", "half_pixel") != "tf_crop_and_resize"
    )


def classify_before_upsampling(model: Any) -> int:
    """Move each channel-reducing 1x1 Conv that reads a bilinear Resize in front of that Resize.

    Only a Resize with constant scales whose single reader is the Conv qualifies (a Resize whose target
    size is computed from a shape would still carry the old channel count). Changes ``model`` (an
    ``onnx.ModelProto``) in place and returns how many pairs were swapped.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    _, consumers = graph_links(graph)
    nodes = list(graph.node)
    swapped = 0
    for resize in [n for n in nodes if _is_bilinear(n)]:
        users = consumers.get(resize.output[0], [])
        if _constant_scales(resize, inits) is None or resize.output[0] in outputs or len(users) != 1:
            continue
        conv = users[0]
        if conv.op_type != "Conv" or conv.input[0] != resize.output[0] or conv.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[conv.input[1]])
        if (
            weight.ndim != 4
            or weight.shape[2:] != (1, 1)
            or weight.shape[0] >= weight.shape[1]
            or node_attr(conv, "group", 1) != 1
            or list(node_attr(conv, "strides", [1, 1])) != [1, 1]
            or any(node_attr(conv, "pads", [0, 0, 0, 0]))
            or node_attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID")
        ):
            continue
        run_before(nodes, resize, conv, f"{conv.name or conv.output[0]}_before_upsampling")
        swapped += 1
    if swapped:
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.value_info[:]  # the swapped tensors' shapes changed; checkers re-infer them
    return swapped


def phase_weights(scale: int) -> np.ndarray:
    """``(scale, 3)`` weights of input samples ``k - 1, k, k + 1`` for output sample ``scale * k + p``.

    Half-pixel centres put output ``scale * k + p`` at input position ``k + (p + 0.5) / scale - 0.5``,
    an offset within (-0.5, 0.5) of sample ``k``: it interpolates between ``k`` and the neighbour on
    the offset's side. Edge clamping is the Gather's index clamping (see :func:`upsample_by_phases`).
    """
    weights = np.zeros((scale, 3), dtype=np.float32)
    for p in range(scale):
        offset = (p + 0.5) / scale - 0.5
        if offset < 0:
            weights[p, 0], weights[p, 1] = -offset, 1.0 + offset
        else:
            weights[p, 1], weights[p, 2] = 1.0 - offset, offset
    return weights


def block_weights(scale: int, block: int) -> np.ndarray:
    """``(block * scale, block + 2)`` weights from a block's samples and their two outer neighbours
    (``k0 - 1 ... k0 + block``) to the block's ``block * scale`` output samples: :func:`phase_weights`
    placed once per sample of the block, so ``block=1`` is ``phase_weights(scale)`` itself."""
    weights = np.zeros((block * scale, block + 2), dtype=np.float32)
    for k in range(block):
        weights[k * scale : (k + 1) * scale, k : k + 3] = phase_weights(scale)
    return weights


def block_size(length: int, target: int) -> int:
    """The divisor of ``length`` closest to ``target`` (the smaller one on a tie): blocks tile the axis."""
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def _windows(length: int, block: int) -> np.ndarray:
    """``(length // block, block + 2)`` indices of each block's samples and their two outer neighbours,
    clamped to the axis: the edge sample repeats."""
    starts = np.arange(0, length, block)[:, None]
    return np.clip(starts + np.arange(-1, block + 1)[None, :], 0, length - 1).astype(np.int64)


def _phase_upsampling(
    source: str, base: str, shape: list[int], s_h: int, s_w: int, channels_last: bool = False
) -> tuple[list, list]:
    """Nodes and initializers upsampling ``source`` (``N x C x h x w``) by ``s_h, s_w``; the last node's
    output, named ``{base}_up``, is ``N x C x H x W``, or ``N x H x W x C`` with ``channels_last``."""
    from onnx import helper, numpy_helper

    _, channels, height, width = shape
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(suffix: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, f"{base}_{suffix}"))
        return inits[-1].name

    def add(op: str, inputs: list[str], suffix: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [f"{base}_{suffix}"], name=f"{base}_{suffix}", **attrs))
        return nodes[-1].output[0]

    b_w, b_h = block_size(width, WIDTH_BLOCK), block_size(height, HEIGHT_BLOCK)
    w_index, w_weights = _windows(width, b_w), block_weights(s_w, b_w)
    h_index, h_weights = _windows(height, b_h), block_weights(s_h, b_h)
    x = source
    if not channels_last:
        if s_w > 1:  # N C h w -> N C h (w/b) (b+2) (windows) -> N C h (w/b) (b s_w) -> N C h (w s_w)
            x = add("Gather", [x, const("w_index", w_index)], "w_windows", axis=3)
            x = add("MatMul", [x, const("w_weights", w_weights.T.copy())], "w_phases")
            x = add("Reshape", [x, const("w_shape", np.array([0, channels, height, width * s_w]))], "w_up")
        if s_h > 1:  # N C h W -> N C (h/b) (b+2) W -> N C (h/b) (b s_h) W -> N C (h s_h) W
            x = add("Gather", [x, const("h_index", h_index)], "h_windows", axis=2)
            x = add("MatMul", [const("h_weights", h_weights), x], "h_phases")
            add("Reshape", [x, const("h_shape", np.array([0, channels, height * s_h, width * s_w]))], "h_up")
    else:  # the same passes on N h w C: each sample is a run of C values
        x = add("Transpose", [x], "channels_last", perm=[0, 2, 3, 1])
        if s_w > 1:  # N h w C -> N h (w/b) (b+2) C -> N h (w/b) (b s_w) C -> N h (w s_w) C
            x = add("Gather", [x, const("w_index", w_index)], "w_windows", axis=2)
            x = add("MatMul", [const("w_weights", w_weights), x], "w_phases")
            x = add("Reshape", [x, const("w_shape", np.array([0, height, width * s_w, channels]))], "w_up")
        if s_h > 1:  # N h W C -> N (h/b) (b+2) (W C) -> N (h/b) (b s_h) (W C) -> N (h s_h) W C
            x = add("Gather", [x, const("h_index", h_index)], "h_windows", axis=1)
            rows = np.array([0, height // b_h, b_h + 2, width * s_w * channels])
            x = add("Reshape", [x, const("h_rows_shape", rows)], "h_rows")
            x = add("MatMul", [const("h_weights", h_weights), x], "h_phases")
            add("Reshape", [x, const("h_shape", np.array([0, height * s_h, width * s_w, channels]))], "h_up")
    nodes[-1].output[0] = nodes[-1].name = f"{base}_up"
    return nodes, inits


def upsample_by_phases(model: Any) -> int:
    """Rewrite the final bilinear upsampling (half-pixel, whole factors) as Gather + MatMul per axis.

    The Resize qualifies when it writes a graph output or feeds only ArgMax nodes, has constant scales
    ``[1, 1, s_h, s_w]`` with whole ``s_h, s_w``, and shape inference knows its input's channels,
    height and width (the batch may stay free). The width pass runs first, on the small input. A graph
    output written straight by a Reshape would be a copy on one thread (onnxruntime never lets a graph
    output alias an intermediate buffer), so a bound-less ``Clip`` writes it instead: the same values,
    in one parallel pass. Before a channel ArgMax (``argmax=true`` exports) the passes run on the
    channels-last layout instead and the ArgMax reduces the last axis, a contiguous run of C values:
    onnxruntime's ArgMax over the channel axis of N x C x H x W takes more than twice as long. Changes
    ``model`` (an ``onnx.ModelProto``) in place and returns how many Resize nodes were rewritten.
    """
    from onnx import helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    _, consumers = graph_links(graph)
    dims = inferred_dims(model)
    rewritten = 0
    for resize in [n for n in graph.node if _is_bilinear(n)]:
        if node_attr(resize, "coordinate_transformation_mode", "half_pixel") not in HALF_PIXEL_MODES:
            continue
        is_output = resize.output[0] in outputs
        users = consumers.get(resize.output[0], [])
        if not is_output and (not users or any(u.op_type != "ArgMax" for u in users)):
            continue
        scales = _constant_scales(resize, inits)
        shape = dims.get(resize.input[0])
        if scales is None or scales.shape != (4,) or not shape or len(shape) != 4 or None in shape[1:]:
            continue
        s_h, s_w = float(scales[2]), float(scales[3])
        if list(scales[:2]) != [1.0, 1.0] or min(s_h, s_w) < 1 or s_h % 1 or s_w % 1 or s_h * s_w == 1:
            continue
        base = resize.name or resize.output[0]
        channel_argmax = not is_output and all(
            node_attr(u, "axis", 0) in (1, -3) and node_attr(u, "keepdims", 1) == 0 for u in users
        )
        nodes, new_inits = _phase_upsampling(
            resize.input[0], base, shape, int(s_h), int(s_w), channels_last=channel_argmax
        )
        if is_output:
            nodes.append(
                helper.make_node("Clip", [nodes[-1].output[0]], list(resize.output), name=f"{base}_write")
            )
        elif channel_argmax:
            for argmax in users:  # the same indices, read along the now last axis
                kept = [a for a in argmax.attribute if a.name not in ("axis", "keepdims")]
                del argmax.attribute[:]
                argmax.attribute.extend(
                    [*kept, helper.make_attribute("axis", 3), helper.make_attribute("keepdims", 0)]
                )
                argmax.input[0] = nodes[-1].output[0]
        else:
            nodes[-1].output[0] = resize.output[0]
        graph.initializer.extend(new_inits)
        splice(graph, resize, nodes, replace=True)
        rewritten += 1
    if rewritten:
        drop_unused_nodes(model)
    return rewritten
