"""The project's exceptions, one tree, and the HTTP status each maps to:

RenersansError
├── BratFormatError           a .ann/.txt pair that cannot be read as brat standoff   422
├── InputError                a request or file we cannot process                     400
│   ├── BadEncoding           a file that is not UTF-8 text                           400
│   ├── InvalidEntities       given entities outside the text, unknown, overlapping   422
│   ├── PayloadTooLarge       a body over the configured size                         413
│   └── UnsupportedMediaType  a content type the endpoint does not read               415
├── BundleError               a model bundle missing, broken or of the wrong version  503
└── InferenceError            the models failed on one request                        503
"""


class RenersansError(Exception):
    """Base class: every error the project raises on purpose."""

    status = 500


class BratFormatError(RenersansError, ValueError):
    """Malformed brat standoff; the message names the file and line."""

    status = 422


class InputError(RenersansError, ValueError):
    """Client input we refuse; the message says what is wrong and what to send instead."""

    status = 400


class BadEncoding(InputError):
    status = 400


class InvalidEntities(InputError):
    status = 422


class PayloadTooLarge(InputError):
    status = 413


class UnsupportedMediaType(InputError):
    status = 415


class BundleError(RenersansError):
    """A model bundle that cannot be loaded; the message names the file."""

    status = 503


class InferenceError(RenersansError):
    """The models failed on one request; other requests are unaffected."""

    status = 503
