"""The service's engine: the bundle loaded into ONNX Runtime sessions, and the pipeline timed per stage."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.batching import BatchingRunner
from app.bundle import CUDA, Choice, bundle_size, check_bundle, choose, onnx_tagger
from app.errors import BundleError, InvalidEntities
from app.manifest import read_manifest
from app.pipeline import CPU_RUN_PIECES, GPU_RUN_PIECES, Pipeline, Tagger
from app.settings import Settings
from app.text.brat import Document, Entity, Relation
from app.text.tags import ENTITY_TYPES

log = logging.getLogger(__name__)

WARMUP_TEXT = "Рост валового регионального продукта в 2019 году составил 3,5 % по сравнению с 2018 годом."


@dataclass
class Result:
    document: Document
    timings_ms: dict[str, float] = field(default_factory=dict)


class Extractor:
    """Loads a bundle (refusing a broken one with a message naming the file) and runs the pipeline."""

    def __init__(self, settings: Settings) -> None:
        root = Path(settings.bundle)
        problems = check_bundle(root, load_sessions=False)
        if problems:
            raise BundleError(
                f"model bundle {root} cannot be used:\n" + "\n".join(f"- {p}" for p in problems)
            )
        started = time.perf_counter()
        self.manifest = read_manifest(root)
        models = self.manifest.models
        self.choices = {
            name: choose(self.manifest, name, settings.variant, settings.device) for name in models
        }
        # On a CPU, one single-threaded run per core side by side beats one run split across the cores:
        # 1.08-1.18x on 2 cores with the same answers (BENCHMARKS.md, "Encoder runs side by side").
        cuda = any(c.providers[0] == CUDA for c in self.choices.values())
        cores = settings.threads or os.cpu_count() or 1
        self.encoder_runs = settings.encoder_runs or (1 if cuda else cores)
        self.threads = max(1, cores // self.encoder_runs)
        taggers = {name: self._tagger(root, name, choice, settings) for name, choice in self.choices.items()}
        taggers = {name: self._after_cuda(root, name, t, settings) for name, t in taggers.items()}
        self.batchers: list[BatchingRunner] = []
        if settings.batch_wait_ms > 0:
            taggers = {name: self._batched(name, t, settings) for name, t in taggers.items()}
        self.providers = {name: t.providers for name, t in taggers.items()}
        self.pipeline = Pipeline(
            ner=taggers["ner"],
            re=taggers.get("re"),
            batch_size=settings.batch_size,
            max_tokens=settings.max_run_pieces or (GPU_RUN_PIECES if self.on_cuda else CPU_RUN_PIECES),
            decoding=self.manifest.decoding,
            workers=self.encoder_runs,
        )
        for name, choice in self.choices.items():
            log.info(
                "model %s: variant %s (%s) on %s",
                name,
                choice.variant,
                choice.reason,
                ", ".join(self.providers[name]),
            )
        log.info("encoder: %d batches at once, %d ONNX Runtime threads each", self.encoder_runs, self.threads)
        self.load_seconds = time.perf_counter() - started
        self.bundle = root
        self.warmup_seconds = 0.0

    def _tagger(self, root: Path, name: str, choice: Choice, settings: Settings) -> Tagger:
        return onnx_tagger(
            root,
            self.manifest,
            name,
            choice,
            self.threads,
            cache_dir=settings.cache_dir,
            cpu_arena=settings.cpu_arena,
        )

    def _after_cuda(self, root: Path, name: str, tagger: Tagger, settings: Settings) -> Tagger:
        """The tagger, or, where CUDA was chosen but did not start (no GPU passed through, a driver too old),
        one on the CPU's own variant: the one chosen for CUDA (fp16) is the slowest way to run on a CPU."""
        choice = self.choices[name]
        if choice.providers[0] != CUDA or tagger.providers[0] == CUDA or settings.variant != "auto":
            return tagger  # on CUDA, or a variant the operator configured
        cpu = replace(
            choose(self.manifest, name, "auto", "cpu"), reason="default cpu variant: CUDA did not start"
        )
        if cpu.variant == choice.variant:
            self.choices[name] = cpu
            return tagger
        try:
            fallback = self._tagger(root, name, cpu, settings)
        except BundleError as exc:  # e.g. no writable cache for a derived int8: the CUDA variant still serves
            log.warning(
                "model %s: keeping %s on the CPU, its %s cannot be loaded: %s",
                name,
                choice.variant,
                cpu.variant,
                exc,
            )
            return tagger
        self.choices[name] = cpu
        return fallback

    def _batched(self, name: str, tagger: Tagger, settings: Settings) -> Tagger:
        """The tagger with its encoder shared across concurrent requests (app/batching.py), unless its
        answers depend on its batch mates: then each request keeps its own batches."""
        if tagger.batch_dependent:
            # Dynamic int8 scales activations by the whole batch: merged, one request's rows would change
            # another's answer. Such a model runs on a CPU, where merging measured slower anyway.
            log.warning(
                "model %s: no cross-request batching for its %s variant, whose answers would depend on other "
                "requests' rows; each request is batched on its own",
                name,
                self.choices[name].variant,
            )
            return tagger
        batcher = BatchingRunner(
            tagger.run,
            max_rows=settings.batch_max_rows,
            max_wait_ms=settings.batch_wait_ms,
            pad_id=tagger.spec.pad_id,
        )
        self.batchers.append(batcher)
        return replace(tagger, run=batcher)

    def close(self) -> None:
        for batcher in self.batchers:
            batcher.close()

    @property
    def on_cuda(self) -> bool:
        return all(p and p[0] == CUDA for p in self.providers.values())

    @property
    def has_relations(self) -> bool:
        return self.pipeline.re is not None

    def warmup(self) -> None:
        started = time.perf_counter()
        self.extract(WARMUP_TEXT, relations=True)
        self.warmup_seconds = time.perf_counter() - started

    def info(self) -> dict:
        return {
            "bundle": self.bundle.name,
            "created": self.manifest.created or None,
            "variants": {name: c.variant for name, c in self.choices.items()},
            "providers": {name: p[0] if p else "" for name, p in self.providers.items()},
            "encoder": self.manifest.models["ner"].encoder,
            "relations": self.has_relations,
            "size_bytes": bundle_size(self.bundle),
            "decoding": self.pipeline.decoding.settings(),
        }

    def extract(self, text: str, relations: bool = True, name: str = "request") -> Result:
        """Entities and relations of `text`, timed per stage (milliseconds)."""
        timings: dict[str, float] = {}
        doc = self.pipeline.extract(name, text, relations and self.has_relations, timings)
        return Result(doc, timings)

    def extract_many(self, texts: Sequence[str], relations: bool = True) -> list[Result]:
        """`extract` for several texts, their sentences batched together in each stage; every result holds
        the timings of the whole batch."""
        timings: dict[str, float] = {}
        named = [(f"request-{i}", text) for i, text in enumerate(texts)]
        docs = self.pipeline.extract_many(named, relations and self.has_relations, timings)
        return [Result(doc, timings) for doc in docs]

    def relations_for(self, text: str, entities: Sequence[Entity], name: str = "request") -> Result:
        """Track 2: relations between given entities; the given ids are kept in the output."""
        validate_entities(text, entities)
        if not self.has_relations:
            raise BundleError(f"bundle {self.bundle} has no relation model")
        started = time.perf_counter()
        decoded = self.pipeline.relations_for(name, text, entities)
        # decode_document numbers entities in reading order; map them back to the ids the client sent.
        by_span = {(e.start, e.end): e.id for e in entities}
        new_id = {e.id: by_span[(e.start, e.end)] for e in decoded.entities}
        rels = [
            Relation(f"R{i}", r.type, new_id[r.arg1], new_id[r.arg2], r.score)
            for i, r in enumerate(decoded.relations, start=1)
        ]
        doc = Document(name, text, list(entities), rels)
        return Result(doc, {"relations": round((time.perf_counter() - started) * 1000, 3)})


def validate_entities(text: str, entities: Sequence[Entity]) -> None:
    """Given entities must lie inside the text, have a known type and not overlap (BIO cannot hold that)."""
    ids = set()
    for e in entities:
        if e.id in ids:
            raise InvalidEntities(f"entity {e.id}: the id is used twice")
        ids.add(e.id)
        if e.type not in ENTITY_TYPES:
            raise InvalidEntities(f"entity {e.id}: unknown type {e.type!r}; known: {', '.join(ENTITY_TYPES)}")
        if not 0 <= e.start < e.end <= len(text):
            raise InvalidEntities(
                f"entity {e.id}: offsets {e.start}-{e.end} are not a non-empty span of the "
                f"{len(text)}-character text"
            )
        if e.discontinuous:
            raise InvalidEntities(f"entity {e.id}: discontinuous entities are not supported")
    ordered = sorted(entities, key=lambda e: (e.start, e.end))
    for a, b in itertools.pairwise(ordered):
        if b.start < a.end:
            raise InvalidEntities(
                f"entities {a.id} and {b.id} overlap; relations need non-overlapping entities"
            )
