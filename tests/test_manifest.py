"""The manifest's one reader and writer: a round trip, old manifests read as they were written, and a newer
format or decoding refused with what to do."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from app.decoding import DECODING_VERSION, DEFAULTS, Decoding
from app.errors import BundleError
from app.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    Manifest,
    manifest_json,
    read_manifest,
    write_manifest,
)

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"
needs_default = pytest.mark.skipif(
    not (DEFAULT / MANIFEST).exists(), reason="models/default has not been exported yet"
)


def written(tmp_path: Path, data: dict) -> Path:
    (tmp_path / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


@needs_default
def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    manifest = read_manifest(DEFAULT)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    # What is written is the shipped file as it is, nothing dropped or renamed.
    assert manifest_json(manifest) == json.loads((DEFAULT / MANIFEST).read_text())
    changed = replace(manifest, decoding=Decoding(bio="argmax", none_weight=1))
    write_manifest(tmp_path, changed)
    assert read_manifest(tmp_path).decoding == Decoding(bio="argmax", none_weight=1.0)


@needs_default
def test_written_decoding_is_complete_and_versioned(tmp_path: Path) -> None:
    manifest = read_manifest(DEFAULT)
    write_manifest(tmp_path, manifest)
    stored = json.loads((tmp_path / MANIFEST).read_text())["decoding"]
    assert stored == {"version": DECODING_VERSION, **manifest.decoding.settings()}
    assert set(stored) - {"version"} == set(DEFAULTS[DECODING_VERSION])


def test_every_version_s_defaults_name_every_setting() -> None:
    """A decoding version's row fills any setting a manifest of that version leaves out, so each row must
    name them all; the current row is the code's defaults."""
    for version, row in DEFAULTS.items():
        assert set(row) == set(Decoding().settings()), version
    assert Decoding(**DEFAULTS[DECODING_VERSION]) == Decoding()


@needs_default
def test_old_manifest_without_decoding_keys_reads_with_its_version_s_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest written before decoding was versioned (no version), or with settings left out, takes
    the left-out settings from its version's row, not from today's defaults: so a later change of a
    default (a new version) leaves existing bundles decoding as they were measured."""
    data = json.loads((DEFAULT / MANIFEST).read_text())
    data["decoding"] = {"none_weight": 1.0}  # no version: written before versions were recorded
    del data["dev_metrics"]["decoding"]
    manifest = read_manifest(written(tmp_path, data))
    assert manifest.decoding == Decoding(**{**DEFAULTS[1], "none_weight": 1.0})
    assert manifest.dev_metrics is not None and manifest.dev_metrics.decoding is None
    del data["decoding"]  # before decoding was recorded at all
    assert read_manifest(written(tmp_path, data)).decoding == Decoding(**DEFAULTS[1])

    # A later version with another default: a version-1 manifest still reads with version 1's.
    import app.decoding

    newer = {**DEFAULTS[1], "none_weight": 0.6}
    monkeypatch.setattr(app.decoding, "DEFAULTS", {**DEFAULTS, 2: newer})
    data["decoding"] = {"version": 1, "bio": "argmax"}
    assert read_manifest(written(tmp_path, data)).decoding.none_weight == DEFAULTS[1]["none_weight"]
    data["decoding"] = {"version": 2, "bio": "argmax"}
    assert read_manifest(written(tmp_path, data)).decoding.none_weight == 0.6


@needs_default
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d.update(format_version=FORMAT_VERSION + 1),
            f"version {FORMAT_VERSION + 1}; this service reads 'renersans-bundle' version {FORMAT_VERSION}: "
            "re-export the bundle with this version, or upgrade renersans",
        ),
        (
            lambda d: d["decoding"].update(version=DECODING_VERSION + 1),
            f"decoding version {DECODING_VERSION + 1} is newer than this installation's (it reads versions "
            f"{list(DEFAULTS)}): upgrade renersans to serve this bundle",
        ),
        (
            lambda d: d["models"]["ner"]["variants"]["fp16"].update(shards=2),
            "models.ner: keys this version of renersans does not know (shards): upgrade renersans, or "
            "re-export the bundle with this version",
        ),
        (
            lambda d: d["decoding"].update(beam=4),
            "unknown decoding setting 'beam'; this version knows",
        ),
        (lambda d: d["models"]["re"].pop("labels"), "models.re has no 'labels': re-export the bundle"),
    ],
    ids=["format version", "decoding version", "unknown key", "unknown setting", "missing key"],
)
def test_unreadable_manifest_says_what_to_do(tmp_path: Path, change, message: str) -> None:
    data = json.loads((DEFAULT / MANIFEST).read_text())
    change(data)
    with pytest.raises(BundleError) as caught:
        read_manifest(written(tmp_path, data))
    assert str(caught.value).startswith(str(tmp_path / MANIFEST))
    assert message in str(caught.value)


def test_manifest_is_frozen() -> None:
    manifest = Manifest(models={}, default_variant={"cpu": "int8"})
    with pytest.raises(AttributeError):
        manifest.decoding = Decoding()  # type: ignore[misc]
    with pytest.raises(ValueError, match="decoding pairs is 'both'; it takes one of"):
        Decoding(pairs="both")
