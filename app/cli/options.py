"""What the command modules share: the type of the group they register into, and repeated options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

# `ArgumentParser.add_subparsers()`'s result: each command module adds its commands to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

CORPUS = Path("../shared/rurebus")  # the RuREBus training corpus beside the checkout (README)
CACHE_DIR_HELP = "default: $RENERSANS_CACHE_DIR, else ~/.cache/renersans (the service's)"


def names(text: str | None) -> list[str] | None:
    """A comma-separated option (`--models ner,re`) as a list; None where it was not given."""
    return text.split(",") if text else None
