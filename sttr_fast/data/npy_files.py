""".npy files as memory maps: reading arrays inside .npz archives, writing row by row, shrinking.

CTR-GCN's NTU archives are tens of GB; ``np.savez`` stores members uncompressed, so a member can be
mapped where it lies instead of being read into memory.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header; name and extra field follow


def npz_member(path, key: str) -> np.ndarray:
    """Array ``key`` of an .npz archive: memory-mapped when stored uncompressed, read otherwise."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz archive: {error}") from error
    with archive:
        names = [name.removesuffix(".npy") for name in archive.namelist()]
        if key not in names:
            raise ValueError(f"{path} has no array {key!r}; it holds {names}")
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path) as arrays:  # a compressed member has to be inflated
            return arrays[key]
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        local_header = file.read(_LOCAL_HEADER_SIZE)
        name_length = int.from_bytes(local_header[26:28], "little")
        extra_length = int.from_bytes(local_header[28:30], "little")
        file.seek(info.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length)
        shape, fortran_order, dtype = read_npy_header(file, f"{path}[{key}]")
        offset = file.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")


def read_npy_header(file, what: str):
    try:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(file)
        return np.lib.format.read_array_header_2_0(file)
    except ValueError as error:
        raise ValueError(f"{what} is not a .npy array: {error}") from error


class NpyRowWriter:
    """Fills a float32 .npy file of shape (rows, *row_shape) one row at a time, in order.

    The file is created with ``open_memmap``; each row is written through a memory map of that row
    alone, so memory stays at one row however large the file. ``finish`` shrinks the file to the rows
    written (samples that failed leave no gap).
    """

    def __init__(self, path, rows: int, row_shape: tuple[int, ...], rows_done: int = 0):
        self.path, self.rows, self.row_shape = Path(path), rows, tuple(row_shape)
        if rows_done == 0:
            np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32,
                                      shape=(rows,) + self.row_shape).flush()
        with open(self.path, "rb") as file:
            shape, _, dtype = read_npy_header(file, str(self.path))
            self.data_offset = file.tell()
        if shape != (rows,) + self.row_shape or dtype != np.float32:
            raise ValueError(f"{self.path} holds a {dtype} array {shape}, expected float32 "
                             f"{(rows,) + self.row_shape}")
        self.row_bytes = int(np.prod(self.row_shape)) * 4
        self.rows_done = rows_done

    def append(self, row: np.ndarray) -> None:
        if self.rows_done >= self.rows:
            raise ValueError(f"{self.path} is full ({self.rows} rows)")
        mapped = np.memmap(self.path, dtype=np.float32, mode="r+", shape=self.row_shape,
                           offset=self.data_offset + self.rows_done * self.row_bytes)
        mapped[...] = row
        del mapped
        self.rows_done += 1

    def sync(self) -> None:
        """Make the rows written so far durable (written rows survive a crash of this process
        anyway: they are in the kernel's page cache)."""
        with open(self.path, "rb+") as file:
            os.fsync(file.fileno())

    def finish(self) -> None:
        """Rewrite the header for the rows written and cut the file after them."""
        if self.rows_done != self.rows:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                         "fortran_order": False, "shape": (self.rows_done,) + self.row_shape})
            # numpy pads headers so the first dimension can grow to 21 digits: same length.
            if len(header.getvalue()) != self.data_offset:
                raise ValueError(f"cannot shrink {self.path} in place: its header is "
                                 f"{self.data_offset} bytes, the new one {len(header.getvalue())}")
            with open(self.path, "rb+") as file:
                file.write(header.getvalue())
                file.truncate(self.data_offset + self.rows_done * self.row_bytes)
        self.sync()
