"""`python utils/search.py add-class NAME FILES...`: a new class from a few images.

The images (files, folders, URLs, expanded like `--predict`) are embedded with the index's
weights and added to the gallery under NAME, and NAME gets a prototype (their mean embedding,
re-normalised), so `query` can answer NAME without retraining. Refused with nothing changed:
a name the index has, no images, or images that all fail to read or decode. When only some
fail, the others are added and the failures listed (exit code 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import InputError
from imgclf.predict.inputs import expand_inputs
from imgclf.search.embedding import EmbedderSettings, embed_items, read_and_hash
from imgclf.search.gallery import Record, add_class, check_new_class
from imgclf.search.querying import open_index
from imgclf.search.store import ADDED_SPLIT


@dataclass
class AddClassResult:
    """How many images were added, and the (source, reason) of those that failed."""

    added: int
    failed: list[tuple[str, str]]
    classes: list[str]


def add_class_from(
    index: str | Path,
    name: str,
    sources: list[str],
    *,
    backend: str | None = None,
    settings: EmbedderSettings | None = None,
) -> AddClassResult:
    """Add class `name` to the index from `sources`; see the module docstring."""
    gallery, model = open_index(index, None, backend)
    check_new_class(gallery, name, index)
    items = expand_inputs(sources)
    settings = settings or EmbedderSettings(progress=None)
    readable, failed = read_and_hash(items, block_private=settings.block_private)
    embedded = embed_items(model.predictor, [item for item, _ in readable], settings)
    failures = list(failed.items())
    records, vectors = [], {}
    for n, (item, sha256) in enumerate(readable):
        if n in embedded.errors:
            failures.append((item.source, embedded.errors[n]))
            continue
        records.append(Record(item.source, name, sha256, ADDED_SPLIT, item.source))
        vectors[sha256] = (embedded.embeddings[n], embedded.logits[n])
    if not records:
        first = f" (first: {failures[0][0]}: {failures[0][1]})" if failures else ""
        raise InputError(
            f"None of the {len(items)} image(s) given for class {name!r} could be read and "
            f"decoded{first}; nothing changed. Pass image files, folders or URLs."
        )
    updated = add_class(index, gallery, name, records, vectors, model.info)
    return AddClassResult(len(records), failures, list(updated.prototype_classes))
