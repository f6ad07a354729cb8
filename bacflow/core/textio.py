"""Reading possibly compressed text files, with the compression detected from the content."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from pathlib import Path

from bacflow.core.errors import InputError

_MAGIC = {
    b"\x1f\x8b": ("gzip", gzip.decompress),
    b"BZh": ("bzip2", bz2.decompress),
    b"\xfd7zXZ\x00": ("xz", lzma.decompress),
}


def read_text(path: str | Path) -> str:
    """Return the whole text of `path`, decompressing gzip, bzip2 or xz whatever the file is called.

    Windows line endings are turned into plain newlines. Raises `InputError` for a missing, unreadable,
    truncated, empty or binary file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read file ({error.strerror})") from None
    for magic, (name, decompress) in _MAGIC.items():
        if raw.startswith(magic):
            try:
                raw = decompress(raw)
            except (EOFError, OSError, zlib.error, lzma.LZMAError) as error:
                raise InputError(f"{path}: truncated or corrupt {name} file ({error})") from None
            break
    if not raw.strip():
        raise InputError(f"{path}: file is empty")
    if b"\x00" in raw:
        raise InputError(f"{path}: binary content, not a sequence file")
    # Stray non-UTF-8 bytes in a header must not stop a run; junk is caught later by the format check.
    text = raw.decode("utf-8", errors="replace")
    # Windows editors may begin UTF-8 text with a byte-order mark; it would hide the first line's '>'.
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text
