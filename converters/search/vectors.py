"""The index's embeddings in memory: L2-normalized float16 rows, and their int8 codes for the scan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Int8Codes:
    """The vectors as int8 with one float32 scale per vector, laid out [D, N] for the int8 scan."""

    codes: np.ndarray  # int8 [D, N]
    scales: np.ndarray  # float32 [N]


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


def int8_codes(vectors: np.ndarray, chunk: int = 65_536) -> Int8Codes:
    """The int8 codes of every row, laid out [D, N] for the scan, chunk by chunk to bound the memory."""
    codes = Int8Codes(np.empty((vectors.shape[1], len(vectors)), np.int8), np.empty(len(vectors), np.float32))
    for start in range(0, len(vectors), chunk):
        part, codes.scales[start : start + chunk] = quantize(vectors[start : start + chunk])
        codes.codes[:, start : start + chunk] = part.T
    return codes
