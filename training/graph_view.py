"""A read-only view of an ONNX graph for recognising patterns in it: who produces and who reads a tensor,
constant values, and Casts seen through, so that an fp16 graph (Casts at its inputs, outputs and around
blocked ops) reads as its fp32 original."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import NodeProto, numpy_helper

# Ops a tensor passes through unchanged in meaning (shape, layout, scale, precision).
RESHAPING = {"Reshape", "Transpose", "Mul", "Div", "Cast", "Identity", "Squeeze", "Unsqueeze"}


class GraphView:
    """Producers, consumers and constant values of one graph, Casts seen through."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.ids = model.graph.input[0].name  # (ids, mask), in that order, as the service feeds them
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer: dict[str, NodeProto] = {}
        self.users: dict[str, list[NodeProto]] = defaultdict(list)
        for node in model.graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.users[name].append(node)

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        if node is not None and node.op_type == "Cast":
            return self.const(node.input[0])
        return None

    def origin(self, name: str) -> str:
        node = self.producer.get(name)
        while node is not None and node.op_type == "Cast":
            name = node.input[0]
            node = self.producer.get(name)
        return name

    def after(self, name: str) -> Iterator[NodeProto]:
        for node in self.users[name]:
            if node.op_type == "Cast":
                yield from self.after(node.output[0])
            else:
                yield node

    def before(self, name: str) -> NodeProto | None:
        return self.producer.get(self.origin(name))

    def weight(self, node: NodeProto) -> np.ndarray | None:
        """The constant right operand of a MatMul (x @ W, W as [in, out])."""
        return self.const(node.input[1]) if node.op_type == "MatMul" else None

    def dense_users(self, name: str, shape: tuple[int, ...] | None = None) -> list[NodeProto]:
        return [
            n
            for n in self.after(name)
            if (w := self.weight(n)) is not None and (shape is None or w.shape == shape)
        ]

    def probe(self, names: list[str], ids: np.ndarray) -> list[np.ndarray]:
        """Run the graph up to `names` on `ids` (mask all ones): values the structure alone cannot give."""
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        names_in = [i.name for i in self.model.graph.input]
        return session.run(names, dict(zip(names_in, (ids, np.ones_like(ids)), strict=True)))


def attr(node: NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def other(node: NodeProto, t: str, g: GraphView | None = None) -> str:
    """The operand of a two-input node (Add, SkipLayerNormalization) that is not `t`."""
    same = (lambda a: g.origin(a) == g.origin(t)) if g else (lambda a: a == t)
    return node.input[1] if same(node.input[0]) else node.input[0]


def reach(g: GraphView, start: str, stop: Callable[[NodeProto], bool]) -> list[tuple[NodeProto, str]]:
    """(node, input) pairs where paths from `start` through reshaping ops first meet a `stop` node."""
    found, frontier, seen = [], [start], set()
    while frontier:
        t = frontier.pop()
        for node in g.users[t]:
            if stop(node):
                found.append((node, t))
            elif node.op_type in RESHAPING and node.name not in seen:
                seen.add(node.name)
                frontier.append(node.output[0])
    return found
