"""A model stand-in for the index tests: each file's embedding is a function of its bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from imgclf.search.gallery import Embedded, ModelInfo, Record

DIM = 8
MODEL = ModelInfo(weights="w.pth", sha256="a" * 64, arch="fake", classes=("cat", "dog"))
OTHER_MODEL = ModelInfo(weights="v.pth", sha256="b" * 64, arch="fake", classes=("cat", "dog"))


def vector_of(data: bytes) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class FakeEmbed:
    """Embeds files by their bytes, `batch` at a time, as a stream like the real embedder;
    files starting with b"bad" fail; counts what it embedded; after `stop_after` batches it
    raises KeyboardInterrupt (an interrupted build)."""

    def __init__(self, stop_after: int | None = None, batch: int = 4) -> None:
        self.sources: list[str] = []
        self.calls = 0
        self.stop_after = stop_after
        self.batch = batch

    def __call__(self, sources: Sequence[str]) -> Iterator[tuple[int, Embedded]]:
        for start in range(0, len(sources), self.batch):
            if self.stop_after is not None and self.calls >= self.stop_after:
                raise KeyboardInterrupt
            self.calls += 1
            yield start, self._embed(sources[start : start + self.batch])

    def _embed(self, sources: Sequence[str]) -> Embedded:
        self.sources += list(sources)
        embeddings = np.full((len(sources), DIM), np.nan, dtype=np.float32)
        logits = np.full((len(sources), 2), np.nan, dtype=np.float32)
        errors = {}
        for i, source in enumerate(sources):
            data = Path(source).read_bytes()
            if data.startswith(b"bad"):
                errors[i] = "not an image"
                continue
            embeddings[i] = vector_of(data)
            logits[i] = embeddings[i][:2]
        return Embedded(embeddings, logits, errors)


def write_files(root: Path, names: dict[str, bytes]) -> list[Record]:
    """Write `<root>/<label>/<name>` files; records in the given order, split "train"."""
    records = []
    for relative, data in names.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        records.append(
            Record(
                path=relative,
                label=relative.split("/")[0],
                sha256=hashlib.sha256(data).hexdigest(),
                split="train",
                source=str(path),
            )
        )
    return records
