"""The index's embeddings: L2-normalized float16 rows, read from the file on demand, and int8 codes for the scan."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Int8Codes:
    """The vectors as int8 with one float32 scale per vector, laid out [D, N] for the int8 scan."""

    codes: np.ndarray  # int8 [D, N]
    scales: np.ndarray  # float32 [N]


class VectorFile:
    """The index's float16 vectors [N, D], read from the file on demand with `pread`.

    A search reads only the rows it rescores. A memory map would do the same,
    but keeps every page it faulted in (and the kernel's read-ahead around
    it) in the process's resident memory: measured, 1M x 512 grew by about
    40 MB per query, past 1.5 GB after 20 queries.
    """

    def __init__(self, file: Path, offset: int, count: int, dim: int):
        self._handle = open(file, "rb")
        self.offset, self.count, self.dim = offset, count, dim
        self.dtype = np.dtype(np.float16)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.count, self.dim)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key) -> np.ndarray:
        """Rows by slice, index array or int, like an array's first axis."""
        if isinstance(key, slice):
            return self._read_rows(np.arange(*key.indices(self.count)))
        rows = np.asarray(key, dtype=np.int64)
        if rows.size and (rows.min() < -self.count or rows.max() >= self.count):
            raise IndexError(f"row out of range for {self.count} vectors")
        rows = np.where(rows < 0, rows + self.count, rows)
        return self._read_rows(rows[None])[0] if rows.ndim == 0 else self._read_rows(rows)

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), self.dtype)
        if not len(rows):
            return out
        row_bytes = self.dim * self.dtype.itemsize
        # One read per run of consecutive rows: the kept rows of an update are long runs.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            size = int(stop - start) * row_bytes
            data = os.pread(self._handle.fileno(), size, self.offset + int(rows[start]) * row_bytes)
            out[start:stop] = np.frombuffer(data, self.dtype).reshape(-1, self.dim)
        return out



def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, D] → int8 codes [n, D] and scales [n], with vector ≈ codes × scale.

    A scale per vector (its largest magnitude / 127) rather than one for the
    whole index keeps every vector's full 8-bit range; the scan only proposes
    candidates, which are then rescored on the float16 vectors.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    scales = np.abs(vectors).max(axis=1, initial=0.0) / np.float32(127)
    scales[scales == 0] = 1
    codes = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales.astype(np.float32)
