"""Loading the pickles skeleton datasets ship (label files, pyskl annotations) without running code.

A pickle can call any importable function while it loads; data files downloaded from elsewhere
only need containers, numbers, strings and numpy arrays, so nothing else is allowed.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

from .file_kinds import describe

_ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("_codecs", "encode"),  # how protocol 2 stores bytes
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}
_UNREADABLE = (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
               TypeError, ValueError, UnicodeDecodeError)


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, **kwargs):
        super().__init__(file, **kwargs)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"it asks to load {module}.{name}; a data file needs only lists, dicts, numbers, "
                "strings and numpy arrays, so it is refused (re-save it from those types)")
        return super().find_class(module, name)


def load_data_pickle(path, what: str = "pickle"):
    """The object in a data pickle. Python-2 pickles (old ST-GCN / 2s-AGCN label files) hold byte
    strings that only decode as latin-1, so that is the second try."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the {what} {path}: {error.strerror}") from error
    try:
        try:
            return _DataUnpickler(io.BytesIO(raw), path).load()
        except UnicodeDecodeError:
            return _DataUnpickler(io.BytesIO(raw), path, encoding="latin1").load()
    except _UNREADABLE as error:
        if raw[:1] != b"\x80":  # not a pickle of protocol 2+; a failed protocol 0 one is text
            raise ValueError(f"the {what} {path} {describe(path)}, not a pickle") from error
        raise ValueError(f"the {what} {path} cannot be read as a data pickle: {error}") from error


def summary(content) -> str:
    """What a loaded pickle holds, in a few words: ``'a dict of 16 entries'``, ``'a tuple of 3
    items'``, ``'a pair of 16 and 15 items'``."""
    kind = type(content).__name__
    if isinstance(content, dict):
        return f"a {kind} of {len(content)} entr{'y' if len(content) == 1 else 'ies'}"
    if isinstance(content, (list, tuple)):
        if len(content) == 2 and all(hasattr(part, "__len__") for part in content):
            return f"a pair of {len(content[0])} and {len(content[1])} items"
        return f"a {kind} of {len(content)} item{'' if len(content) == 1 else 's'}"
    return f"a {kind}"
