"""What a file is, told from its first bytes, for error messages about a file given in the wrong
place: a text file named ``*.npy``, a label pickle passed as a data array, an .npz as a checkpoint."""
from __future__ import annotations

from pathlib import Path

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"   # torch.save's format since PyTorch 1.6, and .npz archives
PICKLE_PROTOCOL = 0x80      # first byte of a pickle of protocol 2 or later


def text_beginning(head: bytes) -> str | None:
    """The first line of ``head`` (cut to 40 characters) if ``head`` reads as text, else None."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip() or any(not (c.isprintable() or c in "\t\r\n") for c in text):
        return None
    first = text.strip().splitlines()[0]
    return first if len(first) <= 40 else first[:40] + "…"


def describe(path) -> str:
    """``'is a text file (it begins ...)'``, ``'is empty (0 bytes)'``, ``'is a pickle'``, ..."""
    path = Path(path)
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(NPY_MAGIC):
        return "is a numpy .npy array"
    if head.startswith(ZIP_MAGIC):
        return "is a zip archive (a torch checkpoint or an .npz)"
    if head[0] == PICKLE_PROTOCOL:
        return "is a Python pickle (a label or score file?)"
    text = text_beginning(head)
    if text is not None:
        return f"is a text file (it begins {text!r})"
    return f"is of an unknown format (it begins with the bytes {head[:8].hex(' ')})"
