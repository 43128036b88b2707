"""Torch tagger checkpoints rebuilt from a bundle's ONNX file, for where no checkpoint of the shipped weights
was kept: the eager-PyTorch baselines of `bench/` run the very weights the service runs.

`checkpoint_from_bundle(bundle, "ner", out)` reads the graph (training/onnx_graph.py), builds a `BertModel`
of the architecture found there, and writes the checkpoint as `save_tagger` does, with the bundle's
tokenizer and meta. Like export, the import proves itself: the torch model's logits are compared with ONNX
Runtime's on the same file, and a disagreement past the variant's tolerance is an error.
`cached_checkpoint` keeps one import per ONNX file, keyed by its sha256.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from app.bundle import CPU
from app.errors import BundleError
from app.manifest import ModelInfo, read_manifest, sha256
from training.onnx_graph import TaggerWeights, read_tagger

IMPORTABLE = ("fp32", "optimized", "fp16")  # in order of preference: exact weights first
# Largest |torch - ONNX Runtime| over the check sentences' logits. fp32 graphs: the export's own bound.
# fp16: the imported weights are the file's exactly (fp16 values are exact in fp32), so the gap is ONNX
# Runtime's half-precision activations: at most 0.0073 on the real batches of three dev documents through
# models/default (argmax agreement 0.9998), 0.002 on the tiny test models. A mis-mapped weight moves them
# by 0.9-2.8 on models/default (layer 0's Q and K swapped, the last attention output untransposed).
TOLERANCE = {"fp32": 1e-4, "optimized": 1e-4, "fp16": 0.05}
CHECK_SENTENCES = [
    "Рост валового регионального продукта в 2019 году составил 3,5 % .".split(),
    "Основной целью программы является повышение качества жизни населения Республики Коми .".split(),
    "Снижение уровня безработицы обеспечено за счёт создания новых рабочих мест .".split(),
    "Объём инвестиций в основной капитал уменьшился на 12 млрд рублей .".split(),
]


def model_info(bundle: Path, model: str) -> ModelInfo:
    """The manifest entry of `model`; BundleError naming the models there when it is absent."""
    models = read_manifest(bundle).models
    if model not in models:
        raise BundleError(f"{bundle}: no model {model!r} in the bundle (it has {', '.join(models)})")
    return models[model]


def import_variant(bundle: Path, model: str, variant: str | None = None) -> tuple[str, Path]:
    """The variant to import (`variant`, else the first shipped of fp32, optimized, fp16) and its file."""
    variants = model_info(bundle, model).variants
    shipped = [v for v in IMPORTABLE if v in variants and variants[v].file is not None]
    if variant is None:
        if not shipped:
            raise BundleError(
                f"{bundle}: {model} ships no fp32, optimized or fp16 ONNX file (it has {sorted(variants)}); "
                "re-export it with `renersans export --variants fp32` or fp16"
            )
        variant = shipped[0]
    elif variant not in shipped:
        raise BundleError(
            f"{bundle}: {model} has no {variant} file to import; it ships {', '.join(shipped) or 'none'} of "
            f"the importable {', '.join(IMPORTABLE)} (int8 has lost precision): choose one of those"
        )
    path = Path(bundle) / str(variants[variant].file)
    if not path.is_file():
        raise BundleError(f"{path}: listed in the manifest but missing; restore the bundle")
    return variant, path


def checkpoint_from_bundle(bundle: Path, model: str, out: Path, variant: str | None = None) -> Path:
    """Rebuild `model` ("ner", "re") of `bundle` as a torch checkpoint in `out` (written as `save_tagger`
    writes, loaded by `load_tagger`); weights in float32. Returns `out`.

    `variant`: fp32, optimized or fp16 (default: the first the bundle ships). `tagger.json` records the
    source under `imported_from` (file, sha256, parity with ONNX Runtime). Raises BundleError when the model
    or a usable file is missing, the file's sha256 is not the manifest's, the graph is not a BERT tagger,
    or the rebuilt model's logits disagree with ONNX Runtime's."""
    import onnx

    from training.models import save_tagger

    bundle = Path(bundle)
    info = model_info(bundle, model)
    variant, path = import_variant(bundle, model, variant)
    digest = sha256(path)
    if digest != info.variants[variant].sha256:
        raise BundleError(f"{path}: sha256 {digest} is not the manifest's; restore or re-export the bundle")
    weights = read_tagger(onnx.load(str(path)), dict(info.outputs))
    tagger = _tagger(weights, info)
    tokenizer = _tokenizer(bundle / info.tokenizer, info)
    parity = _parity(tagger, tokenizer, path, info, TOLERANCE[variant])
    training = info.training
    config = training.get("config") or {}
    meta = {
        "task": config.get("task", model),
        "max_pieces": info.max_pieces,
        **({"context": info.context} if info.context else {}),
        "typed_markers": info.typed_markers,
        "dropout": config.get("dropout", 0.1),
        "encoder": info.encoder,
        **{k: training.get(k) for k in ("config", "seed", "data_sha256", "versions", "hardware")},
        "dev_documents": list(info.dev_documents),
        "imported_from": {
            "bundle": str(bundle.resolve()),
            "model": model,
            "variant": variant,
            "file": info.variants[variant].file,
            "sha256": digest,
            "precision": info.variants[variant].precision,
            "architecture": vars(weights.arch),
            "parity": parity,
        },
    }
    save_tagger(tagger, tokenizer, Path(out), meta)
    return Path(out)


def cached_checkpoint(
    bundle: Path, model: str, cache_dir: Path | None = None, variant: str | None = None
) -> Path:
    """`checkpoint_from_bundle` into `cache_dir/torch/<sha256 of the ONNX file>/`, imported once."""
    from app.derive import default_cache_dir
    from training.models import TAGGER_FILE

    _, path = import_variant(bundle, model, variant)
    target = Path(cache_dir or default_cache_dir()) / "torch" / sha256(path)
    if (target / TAGGER_FILE).is_file():
        return target
    # Written beside and renamed into place: an interrupted import never passes for a cached one.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    checkpoint_from_bundle(bundle, model, partial, variant)
    try:
        partial.rename(target)
    except OSError:  # another process finished the same import first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _tagger(weights: TaggerWeights, info: ModelInfo):
    import torch
    from transformers import BertConfig, BertModel

    from training.crf import BioCRF
    from training.models import SequenceTagger

    a = weights.arch
    config = BertConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        intermediate_size=a.intermediate,
        hidden_act=a.act,
        max_position_embeddings=a.positions,
        type_vocab_size=a.type_vocab,
        layer_norm_eps=a.eps,
        pad_token_id=info.pad_id,
    )
    encoder = BertModel(config, add_pooling_layer=False)
    encoder.load_state_dict({k: torch.from_numpy(v) for k, v in weights.encoder.items()}, strict=True)
    labels = dict(info.labels)
    for head, (w, _) in weights.heads.items():
        if w.shape[0] != len(labels[head]):
            raise BundleError(f"head {head!r}: {w.shape[0]} outputs in the graph, {len(labels[head])} labels")
    dropout = (info.training.get("config") or {}).get("dropout", 0.1)
    crf = BioCRF(labels["entity"], info.transitions) if info.transitions else None
    tagger = SequenceTagger(encoder, labels, dropout, crf)
    heads = {f"{h}.weight": torch.from_numpy(w) for h, (w, _) in weights.heads.items()}
    heads |= {f"{h}.bias": torch.from_numpy(b) for h, (_, b) in weights.heads.items()}
    tagger.heads.load_state_dict(heads, strict=True)
    return tagger.eval()


def _tokenizer(path: Path, info: ModelInfo):
    """The bundle's tokenizer.json as a fast HF tokenizer, its special tokens named from the file itself."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(path))
    spec = json.loads(path.read_text(encoding="utf-8"))
    specials = {"pad_token": backend.id_to_token(info.pad_id)}
    unk = spec["model"].get("unk_token") or (
        backend.id_to_token(spec["model"]["unk_id"]) if spec["model"].get("unk_id") is not None else None
    )
    if unk:
        specials["unk_token"] = unk
    around = [
        p["SpecialToken"]["id"]
        for p in (spec.get("post_processor") or {}).get("single", [])
        if "SpecialToken" in p
    ]
    if around:
        specials["bos_token"], specials["eos_token"] = around[0], around[-1]
    mask = [
        t["content"] for t in spec.get("added_tokens", []) if t["special"] and "mask" in t["content"].lower()
    ]
    if mask:
        specials["mask_token"] = mask[0]
    missing = [m for m in info.marker_tokens if backend.token_to_id(m) is None]
    if missing:
        raise BundleError(f"{path}: marker tokens {missing} are not in the tokenizer; re-export the bundle")
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def _parity(tagger, tokenizer, path: Path, info: ModelInfo, tolerance: float) -> dict[str, float]:
    """Max |torch - ONNX Runtime| logits and argmax agreement on the check sentences (marked copies too for
    a relation model); BundleError past `tolerance`."""
    import onnxruntime as ort
    import torch

    from app.text.subwords import WordPieces

    sentences = list(CHECK_SENTENCES)
    markers = info.marker_tokens
    if markers:
        sentences += [[*s[:1], markers[0], *s[1:3], markers[1], *s[3:]] for s in CHECK_SENTENCES]
    pieces = WordPieces(tokenizer.backend_tokenizer)
    encoded = [pieces.encode(words).ids for words in sentences]
    ids = np.full((len(encoded), max(map(len, encoded))), info.pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, : len(e)], mask[row, : len(e)] = e, 1
    session = ort.InferenceSession(str(path), providers=[CPU])
    inputs = [i.name for i in session.get_inputs()]
    feed = dict(zip(inputs, (ids, mask), strict=True))
    got = dict(zip(info.outputs, session.run(list(info.outputs.values()), feed), strict=True))
    with torch.inference_mode():
        expected = tagger(torch.from_numpy(ids), torch.from_numpy(mask))
    valid = mask.astype(bool)
    diff, agree = 0.0, []
    for head, logits in got.items():
        e = expected[head].numpy()[valid]
        g = logits.astype(np.float32)[valid]
        diff = max(diff, float(np.abs(e - g).max()))
        agree.append(e.argmax(-1) == g.argmax(-1))
    result = {"max_abs": diff, "argmax_agreement": float(np.concatenate(agree).mean())}
    if diff > tolerance:
        raise BundleError(
            f"{path}: the rebuilt torch model's logits differ from ONNX Runtime's by {diff:.2e} "
            f"(> {tolerance}): the graph was not read correctly; import another variant or re-export"
        )
    return result
