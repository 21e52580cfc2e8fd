"""Generic helpers for rewriting ONNX graphs: shapes, attributes, node order, producers/consumers.

Every graph rewrite of :mod:`segkit.export` (both precisions' fixed-size rewrites in
:mod:`~segkit.export.upsampling`, the int8-only ones in :mod:`~segkit.export.int8_graph`) walks graphs with
these, so none of them needs another rewrite module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def inferred_dims(model: Any, data_prop: bool = False) -> dict[str, list[int | None]]:
    """Every tensor's shape as ONNX shape inference sees it (None for a symbolic or unknown size)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }


def node_attr(node: Any, name: str, default: Any) -> Any:
    """Attribute ``name`` of an ONNX node (strings decoded), or ``default`` when it is not set."""
    from onnx import helper

    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    if not found:
        return default
    return found[0].decode() if isinstance(found[0], bytes) else found[0]


def run_before(nodes: list[Any], first: Any, second: Any, name: str) -> None:
    """Turn ``first -> second`` (``second`` reads ``first``'s output) into ``second -> first``.

    ``second`` then reads ``first``'s input and writes a tensor called ``name``, which ``first`` reads
    to write what ``second`` wrote; ``second`` moves in front of ``first`` in ``nodes`` (graph order).
    Only for pairs whose swap computes the same function (see the callers).
    """
    source, target = first.input[0], second.output[0]
    second.input[0], second.output[0] = source, name
    first.input[0], first.output[0] = name, target
    nodes.remove(second)
    nodes.insert(nodes.index(first), second)


def splice(graph: Any, at: Any, nodes: Sequence[Any], *, replace: bool) -> None:
    """Insert ``nodes`` (in order) where node ``at`` stands in ``graph.node``, in place of ``at`` when
    ``replace``, else in front of it: a rewrite's new nodes keep the graph's topological order."""
    position = list(graph.node).index(at)
    if replace:
        graph.node.remove(at)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)


def graph_links(graph: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``(producer, consumers)`` of an ``onnx.GraphProto``: the node writing each tensor name, and the
    nodes reading it (in graph order). The index every graph rewrite here walks."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    return producer, consumers


def drop_unused_nodes(model: Any) -> None:
    """Remove nodes none of whose outputs is used (repeatedly), then initializers nobody reads."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    produced = {o for n in graph.node for o in n.output}
    for info in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(info)
