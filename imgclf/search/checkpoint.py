"""Embeddings of an unfinished build, kept in chunks so a rerun embeds only what is missing.

`index/.partial-<weights sha256 prefix>/chunk-<n>.npz` holds, per embedded image, its sha256, its
embedding and its logits. Each chunk is written atomically as soon as it is computed; a rerun with
the same weights loads every complete chunk and skips those images. A chunk that cannot be read
(a foreign file) is ignored and its images are embedded again. The folder is removed once the
build is committed.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np

from imgclf.fileio import atomic_write_bytes


class EmbeddingCheckpoint:
    """Chunks of (sha256, embedding, logits) for one index folder and one weights file."""

    def __init__(self, index_folder: str | Path, weights_sha256: str) -> None:
        self.folder = Path(index_folder) / f".partial-{weights_sha256[:16]}"

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """sha256 → (embedding, logits) of every readable chunk."""
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for path in sorted(self.folder.glob("chunk-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as chunk:
                    shas, embeddings, logits = (
                        chunk["sha256"],
                        chunk["embeddings"],
                        chunk["logits"],
                    )
            except Exception:  # damaged or foreign: its images are simply embedded again
                continue
            for sha, embedding, row in zip(shas, embeddings, logits, strict=True):
                found[str(sha)] = (embedding, row)
        return found

    def save(self, shas: list[str], embeddings: np.ndarray, logits: np.ndarray) -> Path:
        """Write one chunk atomically; returns its path."""
        number = len(list(self.folder.glob("chunk-*.npz")))
        buffer = io.BytesIO()
        np.savez(
            buffer,
            sha256=np.array(shas, dtype="U64"),
            embeddings=np.asarray(embeddings, np.float32),
            logits=np.asarray(logits, np.float32),
        )
        return atomic_write_bytes(self.folder / f"chunk-{number:06d}.npz", buffer.getvalue())

    def clear(self) -> None:
        """Remove the chunks (after the build they belong to is committed)."""
        shutil.rmtree(self.folder, ignore_errors=True)
