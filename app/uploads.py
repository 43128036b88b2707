"""Uploaded files: UTF-8 text exactly as sent, and a zip of `.txt` files read safely into a zip of `.ann`."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import PurePosixPath

from app.errors import InputError
from app.text.brat import decode_text

# A zip may expand to at most this many times the request limit, and hold at most this many files.
ZIP_EXPANSION = 20
ZIP_MAX_FILES = 1000


def safe_stem(stem: str) -> str:
    """A file name's stem, reduced to characters that are safe in a Content-Disposition header."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:200] or "document"


def annotate_zip(data: bytes, max_bytes: int, annotate: Callable[[str], str]) -> bytes:
    """A zip of .txt in, a zip of their .ann out (each document through `annotate`, in the archive's order).
    Archives that cannot be read, that expand past `max_bytes`, hold paths that escape (absolute, `..`) or
    members compressed other than by deflate are refused (InputError) before anything is decompressed;
    nothing is written to disk."""
    archive, members = _checked(data, max_bytes)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as result:
        for m in members:
            path = PurePosixPath(m.filename)
            if path.suffix.lower() != ".txt":
                continue
            try:
                raw = archive.read(m)  # at most m.file_size bytes: zipfile stops there and checks the CRC
            except Exception as exc:  # corrupt data: BadZipFile, zlib.error, EOFError, ...
                raise InputError(f"{m.filename}: cannot be decompressed ({exc})") from None
            if len(raw) != m.file_size:
                raise InputError(f"{m.filename}: its size does not match the archive's record")
            result.writestr(str(path.with_suffix(".ann")), annotate(decode_text(raw, m.filename)))
    return out.getvalue()


def _checked(data: bytes, max_bytes: int) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except Exception:  # zipfile raises a dozen exception types for malformed archives, not only BadZipFile
        raise InputError("the upload is not a readable .zip archive") from None
    if len(members) > ZIP_MAX_FILES:
        raise InputError(f"the zip holds {len(members)} files; at most {ZIP_MAX_FILES} per request")
    if sum(m.file_size for m in members) > max_bytes:
        raise InputError(f"the zip expands past {max_bytes:,} bytes; send smaller batches")
    for m in members:
        path = PurePosixPath(m.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in m.filename:
            raise InputError(f"{m.filename}: paths inside the zip must be relative, without '..'")
        # Deflate is what zip tools write; other methods (bzip2, lzma) can expand a small read far more.
        if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or m.flag_bits & 0x1:
            raise InputError(f"{m.filename}: only unencrypted members, stored or deflated, can be read")
    return archive, members
