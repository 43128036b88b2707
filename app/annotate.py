"""`renersans annotate`: a directory of brat .txt files through the service's pipeline, offline."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tqdm import tqdm

from app.errors import RenersansError
from app.service import Extractor
from app.text.brat import format_ann, read_document, read_text, write_text


def annotate_dir(
    extractor: Extractor, in_dir: Path, out_dir: Path, given_entities: bool = False
) -> Counter[str]:
    """Write `out_dir/<relative path>.ann` for every `.txt` under `in_dir`; documents whose `.ann` already
    exists are skipped, so an interrupted run resumes. With `given_entities`, the entities come from the
    `.ann` beside each `.txt` and only relations are added (track 2)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    summary: Counter[str] = Counter()
    paths = sorted(in_dir.rglob("*.txt"))
    for path in tqdm(paths, desc="annotate", unit="doc"):
        rel = path.relative_to(in_dir).with_suffix(".ann")
        target = out_dir / rel
        if target.exists():
            summary["skipped (already annotated)"] += 1
            continue
        try:
            if given_entities:
                doc = read_document(path)
                result = extractor.relations_for(doc.text, doc.entities, name=rel.as_posix())
            else:
                result = extractor.extract(read_text(path), name=rel.as_posix())
        except (RenersansError, UnicodeDecodeError) as exc:
            summary["failed"] += 1
            tqdm.write(f"{path}: {exc}")
            continue
        doc = result.document
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary name first: a run killed mid-write must not leave a truncated .ann that the
        # resume would then skip.
        partial = target.with_suffix(".ann.partial")
        write_text(partial, format_ann(doc.entities, doc.relations))
        partial.replace(target)
        summary["documents"] += 1
        summary["entities"] += len(doc.entities)
        summary["relations"] += len(doc.relations)
    return summary
