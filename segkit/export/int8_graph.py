"""Rewrites of ONNX graphs for int8 only: the space-to-depth stem, and folds in a quantized (QDQ) graph.

Each computes the same function as the graph it rewrites (see each docstring for the argument) and
exists because onnxruntime runs the rewritten form faster in int8. The fp32 graph never gets them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segkit.export.graph import drop_unused_nodes, graph_links, inferred_dims, node_attr, run_before, splice


def space_to_depth_stem(model: Any) -> int:
    """Rewrite the first convolution (3x3, stride 2, padding 1, on the few-channel graph input) as
    ``SpaceToDepth(2)`` followed by a 2x2 stride-1 convolution on four times the channels.

    Both compute the same sums (the 3x3 taps land on the 2x2 blocks above-left of and at each output
    pixel; unused block positions get zero weights), so the fp32 result is the same up to summation
    order. The reason is int8 speed: onnxruntime's QLinearConv builds an im2col matrix by copying runs
    of C_in bytes, which for an RGB input (3-byte runs) made the stem the single most expensive int8
    convolution; with 12 channels its copies are 4x longer and the convolution several times faster.
    Only fixed-size graphs whose input height and width are even qualify. Changes ``model`` (an
    ``onnx.ModelProto``) in place and returns how many Conv nodes changed (0 or 1 per graph input).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    inputs = {}
    for v in graph.input:
        dims = v.type.tensor_type.shape.dim
        inputs[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]

    changed = 0
    for node in list(graph.node):
        if node.op_type != "Conv" or node.input[0] not in inputs or len(node.input) < 2:
            continue
        shape = inputs[node.input[0]]
        if len(shape) != 4 or None in shape[1:] or shape[2] % 2 or shape[3] % 2 or shape[1] > 4:
            continue
        if node.input[1] not in inits or node_attr(node, "auto_pad", "NOTSET") != "NOTSET":
            continue
        if (
            list(node_attr(node, "kernel_shape", [3, 3])) != [3, 3]
            or list(node_attr(node, "strides", [1, 1])) != [2, 2]
            or list(node_attr(node, "pads", [0, 0, 0, 0])) != [1, 1, 1, 1]
            or list(node_attr(node, "dilations", [1, 1])) != [1, 1]
            or node_attr(node, "group", 1) != 1
        ):
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        c = w.shape[1]
        # SpaceToDepth puts pixel (2i + dy, 2j + dx) of channel k in channel (2 dy + dx) * C + k;
        # 3x3 tap t in {0, 1, 2} reads block row/col a = (t + 1) // 2 at offset d = (t + 1) % 2
        w2 = np.zeros((w.shape[0], 4 * c, 2, 2), dtype=w.dtype)
        for ty in range(3):
            for tx in range(3):
                ch = ((ty + 1) % 2 * 2 + (tx + 1) % 2) * c
                w2[:, ch : ch + c, (ty + 1) // 2, (tx + 1) // 2] = w[:, :, ty, tx]
        base = node.name or node.output[0]
        weight = numpy_helper.from_array(w2, f"{base}_s2d_weight")
        graph.initializer.append(weight)
        s2d = helper.make_node(
            "SpaceToDepth", [node.input[0]], [f"{base}_s2d"], name=f"{base}_s2d", blocksize=2
        )
        conv = helper.make_node(
            "Conv",
            [s2d.output[0], weight.name, *node.input[2:]],
            list(node.output),
            name=node.name,
            kernel_shape=[2, 2],
            strides=[1, 1],
            pads=[1, 1, 0, 0],  # the block row/column above-left of the first output pixel is padding
            dilations=[1, 1],
            group=1,
        )
        splice(graph, node, [s2d, conv], replace=True)
        changed += 1
    if changed:
        drop_unused_nodes(model)
    return changed


def quantize_before_space_to_depth(model: Any) -> int:
    """Swap ``SpaceToDepth -> QuantizeLinear`` (per-tensor) into ``QuantizeLinear -> SpaceToDepth``.

    The quantizer leaves SpaceToDepth in fp32 (four bytes a value); moved after the per-tensor
    QuantizeLinear it rearranges the same values as uint8, which is exact (quantizing element by
    element commutes with a permutation of the elements) and takes a quarter of the memory traffic.
    Changes ``model`` (a quantized ``onnx.ModelProto``) in place; returns how many pairs were swapped.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    _, consumers = graph_links(graph)
    swapped = 0
    nodes = list(graph.node)
    for s2d in [n for n in nodes if n.op_type == "SpaceToDepth"]:
        users = consumers.get(s2d.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or s2d.output[0] in outputs:
            continue
        q = users[0]
        if q.input[1] not in inits or int(np.prod(inits[q.input[1]].dims)) != 1:
            continue  # per-axis quantization would follow the channels SpaceToDepth creates
        run_before(nodes, s2d, q, f"{s2d.name or s2d.output[0]}_quantized_input")
        swapped += 1
    if swapped:
        del graph.node[:]
        graph.node.extend(nodes)
    return swapped


def fold_scalar_muls(model: Any) -> int:
    """Fold multiplications by a positive scalar constant into a DequantizeLinear scale (QDQ graphs).

    ``DQ(q; s, z) -> Mul(c) -> Q(s2, z2) -> DQ(s2, z2)`` is the same as ``DQ(q; s * c, z)``, exactly
    and without a second rounding: the uint8 tensor ``q`` read with the scale ``s * c`` is ``x * c``.
    The decomposed hard-sigmoid's ``x * (1/6)`` is such a Mul; folded, each activation costs one int8
    Add and one int8 Mul instead of two Muls and an Add over the whole feature map. Changes ``model``
    (an ``onnx.ModelProto``) in place and returns how many Mul nodes were folded.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer, consumers = graph_links(graph)
    outputs = {o.name for o in graph.output}

    def scalar(name: str) -> float | None:
        if name not in inits or int(np.prod(inits[name].dims)) != 1:
            return None
        return float(numpy_helper.to_array(inits[name]).item())

    def dq_parts(name: str) -> tuple[Any, float, str] | None:
        """(DQ node, its float scale, its zero-point name) for a per-tensor DequantizeLinear output."""
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
            return None
        s = scalar(node.input[1])
        return (node, s, node.input[2]) if s is not None and scalar(node.input[2]) is not None else None

    def constant(name: str) -> float | None:
        if name in inits:
            return scalar(name)
        parts = dq_parts(name)
        if parts is None or parts[0].input[0] not in inits:
            return None
        q = scalar(parts[0].input[0])
        return None if q is None else (q - scalar(parts[2])) * parts[1]

    folded = 0
    removed: set[int] = set()
    replacement: dict[int, Any] = {}
    for mul in list(graph.node):
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for data, const in ((0, 1), (1, 0)):
            c = constant(mul.input[const])
            parts = dq_parts(mul.input[data])
            if c is None or not c > 0 or parts is None or parts[0].input[0] in inits:
                continue
            q_nodes = consumers.get(mul.output[0], [])
            if len(q_nodes) != 1 or q_nodes[0].op_type != "QuantizeLinear" or mul.output[0] in outputs:
                continue
            q_node = q_nodes[0]
            dqs = consumers.get(q_node.output[0], [])
            if q_node.output[0] in outputs or not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
                continue
            dq, s, zp = parts
            name = f"{mul.name or mul.output[0]}_folded"
            scale = numpy_helper.from_array(np.array(s * c, dtype=np.float32), name + "_scale")
            graph.initializer.append(scale)
            replacement[id(mul)] = helper.make_node(
                "DequantizeLinear", [dq.input[0], scale.name, zp], [name], name=name
            )
            for old in dqs:
                for user in consumers.get(old.output[0], []):
                    for i, inp in enumerate(user.input):
                        if inp == old.output[0]:
                            user.input[i] = name
                removed.add(id(old))
            removed.update({id(mul), id(q_node)})
            folded += 1
            break
    # the new DequantizeLinear takes the Mul's place in the (topologically sorted) node list
    nodes = [replacement.get(id(n), n) for n in graph.node if id(n) not in removed or id(n) in replacement]
    del graph.node[:]
    graph.node.extend(nodes)
    if folded:
        drop_unused_nodes(model)
    return folded


def fold_se_gates(model: Any) -> int:
    """Fold each squeeze-and-excitation gate into the weights of the 1x1 convolution after it (QDQ).

    ``Conv(W, x * g)`` with a per-channel gate ``g`` of shape ``1 x C x 1 x 1`` is ``Conv(W * g, x)``:
    the gate scales the weights' input channels instead of the whole feature map. onnxruntime runs the
    broadcasting int8 multiply of the original on one thread over the full map; folded, it scales a
    ``C_out x C`` weight matrix, re-quantized with the weights' own per-channel scales (the gate lies in
    [0, 1], so it cannot overflow them), and onnxruntime still fuses the convolution into QLinearConv.
    Same function up to int8 rounding. Needs a batch of 1: one gate per image cannot scale one set of
    weights, which is why only a graph whose gate tensors are statically ``1 x C x 1 x 1`` qualifies,
    and a gate whose quantized range lies within [0, 1] (a hard-sigmoid or sigmoid output).
    Changes ``model`` (a quantized ``onnx.ModelProto``) in place and returns how many gates were folded.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer, consumers = graph_links(graph)
    dims = inferred_dims(model)

    def dq_of(name: str) -> Any:
        node = producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def only_user(name: str, op_type: str) -> Any:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def within_unit_range(dq: Any) -> bool:
        """True when every value the (per-tensor) DequantizeLinear ``dq`` can produce lies in [0, 1]."""
        if len(dq.input) < 3 or dq.input[1] not in inits or dq.input[2] not in inits:
            return False
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(inits[dq.input[2]])
        if scale.size != 1:
            return False
        info = np.iinfo(zero.dtype)
        low, high = (float(scale) * (q - int(zero)) for q in (info.min, info.max))
        return low >= -1e-6 and high <= 1.0 + 1e-3

    folded = 0
    for mul in [n for n in graph.node if n.op_type == "Mul" and len(n.input) == 2]:
        if not all(dq_of(i) for i in mul.input):
            continue
        shapes = [dims.get(i) or [] for i in mul.input]
        gates = [k for k, d in enumerate(shapes) if len(d) == 4 and d[0] == 1 and d[1] and d[2:] == [1, 1]]
        if (
            len(gates) != 1
            or len(shapes[1 - gates[0]]) != 4
            or shapes[1 - gates[0]][1] != shapes[gates[0]][1]
        ):
            continue  # not one 1 x C x 1 x 1 gate scaling a C-channel map
        gate, activation = mul.input[gates[0]], mul.input[1 - gates[0]]
        if not within_unit_range(dq_of(gate)):
            continue  # a gate above 1 could push the re-quantized weights past their int8 range
        q = only_user(mul.output[0], "QuantizeLinear")
        dq = q and only_user(q.output[0], "DequantizeLinear")
        conv = dq and only_user(dq.output[0], "Conv")
        if not conv or conv.input[0] != dq.output[0] or len(conv.input) < 2:
            continue
        w_dq = dq_of(conv.input[1])
        if w_dq is None or w_dq.input[0] not in inits or len(w_dq.input) < 2:
            continue
        if node_attr(conv, "group", 1) != 1 or list(node_attr(conv, "kernel_shape", [1, 1])) != [1, 1]:
            continue
        axis = node_attr(w_dq, "axis", 1)
        base = conv.name or conv.output[0]
        names = [f"{base}_gated_{k}" for k in ("weight", "weight_q", "weight_dq", "zero_point")]
        scale_zero = list(w_dq.input[1:3])
        if len(scale_zero) < 2 or not scale_zero[1]:
            # QuantizeLinear without a zero point writes uint8; the weights' type needs an explicit one
            weight = numpy_helper.to_array(inits[w_dq.input[0]])
            shape = tuple(inits[scale_zero[0]].dims)
            graph.initializer.append(numpy_helper.from_array(np.zeros(shape, weight.dtype), names[3]))
            scale_zero = [scale_zero[0], names[3]]
        new = [
            helper.make_node("Mul", [w_dq.output[0], gate], [names[0]], name=names[0]),
            helper.make_node("QuantizeLinear", [names[0], *scale_zero], [names[1]], name=names[1], axis=axis),
            helper.make_node(
                "DequantizeLinear", [names[1], *scale_zero], [names[2]], name=names[2], axis=axis
            ),
        ]
        conv.input[0], conv.input[1] = activation, names[2]
        splice(graph, conv, new, replace=False)
        folded += 1
    if folded:
        drop_unused_nodes(model)
    return folded
