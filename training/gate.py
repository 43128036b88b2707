"""The copy gate: a linear head on the entity model's last hidden states that scores each entity's chance of
taking part in a relation, so that the relation stage can skip the copies of entities that probably have
no partner (issue #24; `Decoding.copy_gate`, `app.text.tags.relation_gate`).

The gate is one weight vector per entity type over the span's mean hidden state. Being linear, it is the
mean over the span's words of a per-word head, so it ships as a second head of the entity model's ONNX
graph (`gate_logits`, one logit per type) and costs one [hidden x 8] product per word in the pass that the
pipeline runs anyway. It is fitted on the training documents (gold entities in sentences with a partner
candidate, label: the entity is an argument of a relation inside its sentence) by L2-regularised logistic
regression, and its bar is chosen on the dev documents: the highest that keeps `recall` of the dev
relations within reach, that is with at least one of their two copies run.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from app.bundle import CPU, make_session
from app.manifest import Manifest, ModelInfo, sha256
from app.pipeline import Pipeline, Tagger, TaggerSpec, _place, _words, segment_around
from app.text.brat import Document
from app.text.subwords import WordPieces
from app.text.tags import ENTITY_TYPES
from training.graph_view import GraphView, other

GATE_OUTPUT = "gate_logits"


@dataclass
class Examples:
    """One row per gold entity of a sentence with at least two: its mean hidden state, type index, whether
    it is an argument of a relation inside its sentence, its document and entity id, and its sentence."""

    states: np.ndarray  # [entities, hidden]
    types: np.ndarray  # [entities] index into ENTITY_TYPES
    related: np.ndarray  # [entities] bool
    ids: list[tuple[str, str]]  # (document, entity id)
    sentences: list[int]  # the sentence of each, within its document


def save_examples(path: Path, train: Examples, dev: Examples) -> None:
    parts = {}
    for split, ex in (("train", train), ("dev", dev)):
        parts |= {f"{split}.{k}": np.asarray(v) for k, v in dataclasses.asdict(ex).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **parts)


def load_examples(path: Path) -> tuple[Examples, Examples]:
    with np.load(path) as data:
        split = [
            Examples(
                data[f"{s}.states"],
                data[f"{s}.types"],
                data[f"{s}.related"],
                [tuple(x) for x in data[f"{s}.ids"].tolist()],
                data[f"{s}.sentences"].tolist(),
            )
            for s in ("train", "dev")
        ]
    return split[0], split[1]


def _entity_head(model: onnx.ModelProto, output: str) -> tuple[str, int, int]:
    """The last hidden state's tensor name (the entity head's input), its width, and the head weights'
    ONNX dtype."""
    g = GraphView(model)
    add = g.before(output)  # Casts seen through: fp16 graphs cast the logits to fp32 at the end
    if add is None or add.op_type != "Add":
        raise ValueError(f"output {output!r} is not a linear head")
    bias = next(i for i in add.input if g.const(i) is not None)
    matmul = g.before(other(add, bias))
    if matmul is None or matmul.op_type != "MatMul":
        raise ValueError(f"output {output!r} is not a linear head")
    weight = next(i for i in model.graph.initializer if i.name == matmul.input[1])
    return matmul.input[0], int(weight.dims[0]), weight.data_type


def hidden_tagger(bundle: Path, info: ModelInfo, variant: str = "fp16") -> Tagger:
    """The entity model's shipped `variant` with its last hidden states as its head ("hidden", one value
    per unit), on the CPU."""
    from tokenizers import Tokenizer

    model = onnx.load(str(bundle / str(info.variants[variant].file)))
    states, width, _ = _entity_head(model, info.outputs["entity"])
    model.graph.node.append(helper.make_node("Cast", [states], ["hidden"], to=TensorProto.FLOAT))
    shape = ["batch", "pieces", width]
    model.graph.output.append(helper.make_tensor_value_info("hidden", TensorProto.FLOAT, shape))
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "hidden.onnx"
        onnx.save(model, str(file))
        session = make_session(file, [CPU])
    names = [i.name for i in session.get_inputs()]

    def run(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"hidden": session.run(["hidden"], dict(zip(names, (ids, mask), strict=True)))[0]}

    tokenizer = Tokenizer.from_file(str(bundle / info.tokenizer))
    labels = {"hidden": tuple(str(k) for k in range(width))}
    return Tagger(
        run,
        WordPieces(tokenizer),
        TaggerSpec(labels, info.max_pieces, pad_id=info.pad_id, context=info.context),
    )


def examples(tagger: Tagger, documents: Sequence[Document], desc: str = "entities") -> Examples:
    """The gate's examples from gold documents, segmented as the relation stage segments them."""
    pipe = Pipeline(ner=tagger)
    states, types, related, ids, where = [], [], [], [], []
    for doc in tqdm(documents, desc=desc, unit="doc", leave=False):
        ents = doc.entities
        sentences = segment_around(doc.text, ents)
        spans = _place(sentences, ents)
        words = _words(doc.text, sentences)
        by_span: dict[tuple[int, int, str], list[str]] = {}
        for e in ents:
            by_span.setdefault((e.start, e.end, e.type), []).append(e.id)
        sentence_of: dict[str, int] = {}
        for si, sentence in enumerate(sentences):
            for span in spans[si]:
                key = (sentence.words[span.first][0], sentence.words[span.last][1], span.type)
                for eid in by_span.get(key, []):
                    sentence_of[eid] = si
        arguments = {
            a
            for r in doc.relations
            if sentence_of.get(r.arg1, -1) == sentence_of.get(r.arg2, -2)
            for a in (r.arg1, r.arg2)
        }
        multi = [si for si in range(len(sentences)) if len(spans[si]) >= 2]
        # A model trained with context reads every sentence's neighbours, as served; one without needs only
        # the sentences whose entities are gated.
        run = list(range(len(words))) if tagger.spec.context else multi
        hidden = dict(zip(run, pipe._per_word([words[si] for si in run], ("hidden",))["hidden"], strict=True))
        for si in multi:
            h = hidden[si]
            for span in spans[si]:
                key = (sentences[si].words[span.first][0], sentences[si].words[span.last][1], span.type)
                eid = by_span[key][0]
                states.append(h[span.first : span.last + 1].mean(0))
                types.append(ENTITY_TYPES.index(span.type))
                related.append(any(i in arguments for i in by_span[key]))
                ids.append((doc.name, eid))
                where.append(si)
    return Examples(np.stack(states), np.array(types), np.array(related), ids, where)


@dataclass(frozen=True)
class Gate:
    """Per type a weight vector over the raw hidden state and a bias (standardisation folded in)."""

    weight: np.ndarray  # [types, hidden]
    bias: np.ndarray  # [types]
    l2: float

    def logits(self, states: np.ndarray, types: np.ndarray) -> np.ndarray:
        return (states * self.weight[types]).sum(-1) + self.bias[types]

    def probabilities(self, examples: Examples) -> np.ndarray:
        """Each example's probability of taking part in a relation."""
        return 1 / (1 + np.exp(-self.logits(examples.states, examples.types)))


def fit(train: Examples, l2: float, seed: int = 13) -> Gate:
    """Logistic regression per type on standardised states, L2 weight `l2`, by L-BFGS."""
    import torch

    torch.manual_seed(seed)
    x = torch.tensor(train.states, dtype=torch.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    t = torch.tensor(train.types)
    y = torch.tensor(train.related, dtype=torch.float64)
    w = torch.zeros(len(ENTITY_TYPES), x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(ENTITY_TYPES), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = (x * w[t]).sum(-1) + b[t]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / sd
        bias = b - (weight * mu).sum(-1)
    return Gate(weight.numpy(), bias.numpy(), l2)


def _best_copies(gate: Gate, dev: Examples, relations: Sequence[tuple[str, str, str]]) -> np.ndarray:
    """Per relation (document, arg1, arg2), the higher gate probability of its two arguments' copies."""
    score = dict(zip(dev.ids, gate.probabilities(dev), strict=True))
    return np.array([max(score.get((d, a), 1.0), score.get((d, b), 1.0)) for d, a, b in relations])


def reach(gate: Gate, dev: Examples, relations: Sequence[tuple[str, str, str]], bar: float) -> float:
    """The share of `relations` (document, arg1, arg2) with at least one argument's copy run at `bar`."""
    best = _best_copies(gate, dev, relations)
    return float(np.mean(best >= bar)) if len(best) else 1.0


def choose_bar(gate: Gate, dev: Examples, relations: Sequence[tuple[str, str, str]], recall: float) -> float:
    """The highest bar (a probability) that keeps `recall` of the dev relations within reach of a copy."""
    best = np.sort(_best_copies(gate, dev, relations))
    if not len(best):
        return 0.0
    # Keeping every pair whose better copy scores at least the k-th lowest keeps len - k of them.
    k = int(np.floor((1 - recall) * len(best)))
    return float(best[k])


def dev_relations(dev: Examples, documents: Sequence[Document]) -> list[tuple[str, str, str]]:
    """Dev relations whose two arguments are entities of one sentence in `dev` (those a copy can find)."""
    sentence = dict(zip(dev.ids, dev.sentences, strict=True))
    return [
        (d.name, r.arg1, r.arg2)
        for d in documents
        for r in d.relations
        if sentence.get((d.name, r.arg1), -1) == sentence.get((d.name, r.arg2), -2)
    ]


def attach(path: Path, out: Path, info: ModelInfo, gate: Gate) -> None:
    """Write the entity model at `path` to `out` with the gate as a second head: `gate_logits` [batch,
    pieces, types], in the graph's own precision like the entity head, cast to fp32 at the end."""
    model = onnx.load(str(path))
    _drop_gate(model)  # a bundle's gate is replaced, never stacked
    states, _, dtype = _entity_head(model, info.outputs["entity"])
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = numpy_helper.from_array(gate.weight.T.astype(np_dtype), "gate.weight")
    b = numpy_helper.from_array(gate.bias.astype(np_dtype), "gate.bias")
    model.graph.initializer.extend([w, b])
    model.graph.node.extend(
        [
            helper.make_node("MatMul", [states, "gate.weight"], ["gate.matmul"], name="/gate/MatMul"),
            helper.make_node("Add", ["gate.matmul", "gate.bias"], ["gate.logits"], name="/gate/Add"),
            helper.make_node("Cast", ["gate.logits"], [GATE_OUTPUT], to=TensorProto.FLOAT, name="/gate/Cast"),
        ]
    )
    shape = ["batch", "pieces", len(ENTITY_TYPES)]
    model.graph.output.append(helper.make_tensor_value_info(GATE_OUTPUT, TensorProto.FLOAT, shape))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _drop_gate(model: onnx.ModelProto) -> None:
    graph = model.graph
    nodes = [n for n in graph.node if not n.name.startswith("/gate/")]
    inits = [i for i in graph.initializer if not i.name.startswith("gate.")]
    outputs = [o for o in graph.output if o.name != GATE_OUTPUT]
    for field, kept in ((graph.node, nodes), (graph.initializer, inits), (graph.output, outputs)):
        del field[:]
        field.extend(kept)


def with_gate(manifest: Manifest, bundle: Path, gate: Gate, bar: float) -> Manifest:
    """`manifest` with the gate head declared on every shipped entity-model file (rewritten in place in
    `bundle`), derived variants left to be derived again, and the decoding's `copy_gate` set to `bar`."""
    info = manifest.models["ner"]
    variants = {}
    for name, variant in info.variants.items():
        if variant.file is not None:
            path = bundle / variant.file
            attach(path, path, info, gate)
            variant = dataclasses.replace(variant, bytes=path.stat().st_size, sha256=sha256(path))
        variants[name] = variant
    ner = dataclasses.replace(
        info,
        labels={**info.labels, "gate": ENTITY_TYPES},
        outputs={**info.outputs, "gate": GATE_OUTPUT},
        variants=variants,
    )
    decoding = dataclasses.replace(manifest.decoding, copy_gate=bar)
    return dataclasses.replace(manifest, models={**manifest.models, "ner": ner}, decoding=decoding)
