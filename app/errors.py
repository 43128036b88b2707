"""The project's exceptions, one tree:

RenersansError
├── BratFormatError      a .ann/.txt pair that cannot be read as brat standoff
├── InputError           a request or file a client sent that we cannot process
└── BundleError          a model bundle that is missing, broken or of the wrong version
"""


class RenersansError(Exception):
    """Base class: every error the project raises on purpose."""


class BratFormatError(RenersansError, ValueError):
    """Malformed brat standoff; the message names the file and line."""


class InputError(RenersansError, ValueError):
    """Client input we refuse; the message says what is wrong and what to send instead."""


class BundleError(RenersansError):
    """A model bundle that cannot be loaded; the message names the file."""
