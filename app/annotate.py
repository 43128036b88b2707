"""`renersans annotate`: brat .txt files through the service's pipeline, offline.

What one document becomes (`annotate_one`), which documents are still to do (`pending`) and the summary of a
run (`Tally`) live here once: the local engine below and the Ray engine (app/annotate_ray.py) both use them,
so they write the same `.ann` bytes, resume by the same rule and report failures in the same file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from app.errors import PayloadTooLarge, RenersansError
from app.service import Extractor
from app.text.brat import decode_text, format_ann, parse_ann

log = logging.getLogger(__name__)

# Written into the output folder by every run, failures listed; the .ann files beside it are the results.
SUMMARY = "annotate-summary.json"
# A document's time grows linearly with its length (about 0.7 s a page on a 2-core CPU, docs/deployment.md):
# a million characters is some 300 pages, minutes of one worker, already far beyond the corpus (127,000).
DEFAULT_MAX_CHARS = 1_000_000
SKIPPED = "skipped (already annotated)"


@dataclass(frozen=True)
class Outcome:
    """One document's result: its `.ann` text, or why it has none (`error`, `ann` empty)."""

    name: str  # the .txt's path relative to the input folder, with / separators
    ann: str = ""
    error: str = ""
    entities: int = 0
    relations: int = 0


def ann_name(name: str) -> str:
    """The output's relative path for an input's: `a/b.txt` -> `a/b.ann`."""
    return name.removesuffix(".txt") + ".ann"


def pending(names: Iterable[str], done: Iterable[str]) -> tuple[list[str], int]:
    """(the inputs still to annotate, sorted; how many are skipped): an input whose `.ann` is among `done`
    (output paths relative to the output folder) was finished by an earlier run. Each `.ann` is written under
    a temporary name and renamed, so one that exists is complete."""
    finished = set(done)
    names = sorted(names)
    todo = [n for n in names if ann_name(n) not in finished]
    return todo, len(names) - len(todo)


def annotate_one(
    extractor: Extractor,
    data: bytes,
    name: str,
    given_ann: bytes | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Outcome:
    """The `.ann` of one document, from the `.txt`'s bytes. With `given_ann` (the bytes of the `.ann`
    beside the `.txt`, b"" for none) its entities are kept and only relations are added (track 2).

    Never raises for one document's fault: a bad encoding, a document over `max_chars` characters, broken
    given entities or a failure of the models becomes `Outcome.error`, so one document never stops a run."""
    try:
        text = decode_text(data, name)
        if len(text) > max_chars:
            raise PayloadTooLarge(
                f"{name}: {len(text):,} characters, over the limit of {max_chars:,}; split it, or raise "
                "--max-chars (time grows linearly with length)"
            )
        if given_ann is not None:
            given = parse_ann(decode_text(given_ann, ann_name(name)), text, source=ann_name(name))
            doc = extractor.relations_for(text, given.entities, name=ann_name(name)).document
        else:
            doc = extractor.extract(text, name=ann_name(name)).document
    except RenersansError as exc:
        return Outcome(name, error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a bug or a model failure: logged with its trace, and the run goes on
        log.exception("%s: unexpected failure", name)
        return Outcome(name, error=f"{type(exc).__name__}: {exc}")
    return Outcome(name, format_ann(doc.entities, doc.relations), "", len(doc.entities), len(doc.relations))


@dataclass
class Tally:
    """The counts of a run and its failures, written as `SUMMARY` in the output folder."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        if outcome.error:
            self.counts["failed"] += 1
            self.failures[outcome.name] = outcome.error
            named = outcome.name in outcome.error  # most messages name the file already
            tqdm.write(outcome.error if named else f"{outcome.name}: {outcome.error}")
            return
        self.counts["documents"] += 1
        self.counts["entities"] += outcome.entities
        self.counts["relations"] += outcome.relations

    def summary(self) -> str:
        """The summary file's text: this run's counts, and each failed input with its error. Failed inputs
        have no `.ann`, so the next run tries them again."""
        counts = {k: self.counts[k] for k in ("documents", "entities", "relations", "failed", SKIPPED)}
        failures = [{"document": n, "error": e} for n, e in sorted(self.failures.items())]
        return json.dumps({**counts, "failures": failures}, ensure_ascii=False, indent=2) + "\n"


def annotate_dir(
    extractor: Extractor,
    in_dir: Path,
    out_dir: Path,
    given_entities: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Counter[str]:
    """Write `out_dir/<relative path>.ann` for every `.txt` under `in_dir`, and the run's summary
    (`out_dir/annotate-summary.json`). Documents whose `.ann` already exists are skipped, so an interrupted
    run resumes. With `given_entities`, the entities come from the `.ann` beside each `.txt` and only
    relations are added (track 2)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    names = [p.relative_to(in_dir).as_posix() for p in in_dir.rglob("*.txt")]
    done = [p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.ann")] if out_dir.is_dir() else []
    todo, skipped = pending(names, done)
    tally = Tally()
    tally.counts[SKIPPED] = skipped
    for name in tqdm(todo, desc="annotate", unit="doc"):
        given = None
        if given_entities:
            beside = in_dir / ann_name(name)
            given = beside.read_bytes() if beside.exists() else b""
        outcome = annotate_one(extractor, (in_dir / name).read_bytes(), name, given, max_chars)
        tally.add(outcome)
        if not outcome.error:
            write_atomic(out_dir / ann_name(name), outcome.ann.encode("utf-8"))
    if names:
        write_atomic(out_dir / SUMMARY, tally.summary().encode("utf-8"))
    return tally.counts


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename: a run killed mid-write must not leave a truncated file
    that the resume would then skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
