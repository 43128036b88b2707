"""How the pipeline turns logits into entities and relations: one `Decoding`, complete and versioned.

A bundle's manifest stores the decoding its dev figures were measured with, every setting written out and
the version of this table beside them (`Decoding.stored`). Reading fills a setting a manifest leaves out from
the defaults of the version that manifest was written with (`Decoding.read`), never from today's: so a
default changed here changes new bundles only, and an existing bundle keeps decoding as it was measured.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

CHOICES = {"bio": ("viterbi", "argmax"), "pairs": ("pair", "either")}
NUMBERS = {
    "o_bias": (-math.inf, math.inf),
    "none_weight": (0.0, math.inf),
    "min_entity_prob": (0.0, 1.0),
    "entity_score_temperature": (0.01, 100.0),
    "entity_score_shift": (-10.0, 10.0),
    "relation_score_temperature": (0.01, 100.0),
    "relation_score_shift": (-10.0, 10.0),
    "copy_gate": (0.0, 1.0),
    "min_relation_score": (0.0, 1.0),
}
WHOLE = {"copy_context": (0, 100_000)}
FLAGS = ("join_negations",)
SCORE_ONLY = (
    "entity_score_temperature",
    "entity_score_shift",
    "relation_score_temperature",
    "relation_score_shift",
)

# The defaults of each decoding version, frozen: a bundle's decoding is read with the row of the version it
# was written with. Changing a default means adding a row and bumping DECODING_VERSION, never editing a row.
# A setting added later goes into every older row too, with the value that does what that version did.
# A manifest whose decoding has no version (written before versions were recorded) reads as version 1,
# whose row holds the defaults of that time.
DEFAULTS: Mapping[int, Mapping[str, Any]] = MappingProxyType(
    {
        1: MappingProxyType(
            {
                "bio": "viterbi",
                "pairs": "pair",
                "o_bias": 0.0,
                "none_weight": 0.8,
                "min_entity_prob": 0.0,
                "join_negations": True,
                # Scores untempered: what version 1 reported (they came later, with these settings).
                "entity_score_temperature": 1.0,
                "entity_score_shift": 0.0,
                "relation_score_temperature": 1.0,
                "relation_score_shift": 0.0,
                # Every entity's copy runs (the paper's way): gates came later.
                "copy_gate": 0.0,
                "copy_context": 0,
                # Every relation decided is kept, whatever its score.
                "min_relation_score": 0.0,
            }
        ),
    }
)
DECODING_VERSION = max(DEFAULTS)
_NOW = DEFAULTS[DECODING_VERSION]


class NewerDecoding(ValueError):
    """A decoding written by a newer version of renersans, with defaults this one does not know."""


@dataclass(frozen=True)
class Decoding:
    """The decoding settings, checked on construction (ValueError naming the setting and what it takes).
    The defaults are this version's row of `DEFAULTS`, chosen on the dev split (training/RESULTS.md)."""

    # Entity tags as the best well-formed sequence ("viterbi"), or each word's best tag ("argmax"); Viterbi
    # raised both NER and end-to-end F1 on dev.
    bio: str = _NOW["bio"]
    # One relation decision per pair of entities from both of its copies' probabilities ("pair"), or every
    # type either copy reads ("either"); one decision per pair raised end-to-end F1 on dev.
    pairs: str = _NOW["pairs"]
    # Added to the log-probability of `O` before decoding entity tags (above 0: fewer, surer entities). Any
    # bias lowered NER F1 on dev, so it is 0.
    o_bias: float = _NOW["o_bias"]
    # The weight of 'no relation' in one-per-pair decisions (below 1: more relations); 0.8 raised relation
    # F1 on dev, given gold entities and end to end.
    none_weight: float = _NOW["none_weight"]
    # Entities whose tags' mean probability is below this are dropped before the relation stage and from
    # the output (the paper's "keep only confident entities"); 0 keeps every decoded entity. Every bar from
    # 0.5 up lowered NER and end-to-end F1 on dev, so it is off.
    min_entity_prob: float = _NOW["min_entity_prob"]
    # A decoded entity that is a bare negation particle ("не") joins the word after it, as the annotators'
    # guidelines have it (`app.text.tags.attach_negations`); it raised NER F1 on dev.
    join_negations: bool = _NOW["join_negations"]
    # The scores reported, not the decisions: each score p becomes sigmoid(logit(p) / T + shift), fitted on
    # the dev split so that scores match the share of right answers (training/scripts/calibration.py).
    entity_score_temperature: float = _NOW["entity_score_temperature"]
    entity_score_shift: float = _NOW["entity_score_shift"]
    relation_score_temperature: float = _NOW["relation_score_temperature"]
    relation_score_shift: float = _NOW["relation_score_shift"]
    # An entity's relation copy runs only where the entity model's gate head gives it at least this
    # probability of taking part in a relation (`app.text.tags.relation_gate`); 0 runs every copy, the
    # paper's way. A bundle sets it with its gate (training/scripts/gate.py), chosen on dev to keep a share
    # of the dev relations within reach of a copy, or to hold end-to-end F1 (models/default: 0.30, 41 % of
    # the dev copies skipped, training/RESULTS.md "The copy gate again"). It gates the entities found;
    # given entities (`/relations`) run every copy, since their gate would cost an entity-model pass.
    copy_gate: float = _NOW["copy_gate"]
    # The pieces of a relation copy around its marked entity (0: as many as the relation model takes). A
    # partner outside a copy's window is read from its own copy only.
    copy_context: int = _NOW["copy_context"]
    # A relation is kept where its score reaches this bar; 0 keeps every relation decided. Its score is the
    # chance that it is right as found: its pair decision's probability times its two entities' scores (all
    # as mapped above; an entity given to `/relations` counts as certain), since end to end a relation is
    # right only where both of its entities are. F1 is best where a decision is kept at a chance of about
    # half the F1 reached; a bundle sets it from dev (training/scripts/decoding_ablation.py --relation-bars;
    # models/default: 0.1, which changed no relation given gold entities).
    min_relation_score: float = _NOW["min_relation_score"]

    def __post_init__(self) -> None:
        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"decoding {key} is {getattr(self, key)!r}; it takes one of {list(choices)}")
        for key, (low, high) in NUMBERS.items():
            value = getattr(self, key)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not low <= value <= high:
                raise ValueError(f"decoding {key} is {value!r}; it takes a number from {low} to {high}")
            object.__setattr__(self, key, float(value))  # 1 and 1.0 are one setting, written as 1.0
        for key, (low, high) in WHOLE.items():
            value = getattr(self, key)
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not whole or not low <= value <= high:
                raise ValueError(f"decoding {key} is {value!r}; it takes a whole number from {low} to {high}")
        for key in FLAGS:
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"decoding {key} is {getattr(self, key)!r}; it takes true or false")

    @classmethod
    def read(cls, entry: Mapping[str, Any]) -> Decoding:
        """The decoding a manifest's entry describes: the settings it leaves out take the defaults of its
        `version` (1 where it names none). ValueError for an unknown version or setting, or a bad value."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"decoding must be an object of settings, not {type(entry).__name__}")
        version = entry.get("version", 1)
        if version not in DEFAULTS:
            raise NewerDecoding(
                f"decoding version {version!r} is newer than this installation's (it reads versions "
                f"{list(DEFAULTS)}): upgrade renersans to serve this bundle"
            )
        settings = {key: value for key, value in entry.items() if key != "version"}
        known = names()
        for key in settings:
            if key not in known:
                raise ValueError(f"unknown decoding setting {key!r}; this version knows {list(known)}")
        return cls(**{**DEFAULTS[version], **settings})

    def stored(self) -> dict[str, Any]:
        """The manifest's entry: every setting, and the version whose defaults they were filled from."""
        return {"version": DECODING_VERSION, **self.settings()}

    def decisions(self) -> dict[str, Any]:
        """The settings that decide what is found: all but the score temperatures, which change only the
        scores reported, so that dev F1 measured with one decoding holds for the other."""
        return {k: v for k, v in self.settings().items() if k not in SCORE_ONLY}

    def settings(self) -> dict[str, Any]:
        """Every setting by name (what the service reports and `renersans bundle decoding` prints)."""
        return dataclasses.asdict(self)


def names() -> tuple[str, ...]:
    """The settings' names, in the order they are written."""
    return tuple(f.name for f in dataclasses.fields(Decoding))
