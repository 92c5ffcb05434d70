"""The index folder: incremental, resumable builds; damaged or foreign indexes are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgclf.errors import InputError
from imgclf.search.gallery import add_class, build_gallery
from imgclf.search.store import check_dim, check_weights, read_gallery, read_meta
from tests.search.fake_embedder import MODEL, OTHER_MODEL, FakeEmbed, vector_of, write_files

FILES = {f"{label}/{n}.jpg": f"{label}-{n}".encode() for label in ("cat", "dog") for n in range(6)}


def test_build_writes_items_embeddings_and_prototypes(tmp_path):
    records = write_files(tmp_path / "data", FILES)
    report = build_gallery(tmp_path / "index", records, FakeEmbed(), MODEL, chunk=5)
    gallery = read_gallery(tmp_path / "index")
    assert [it.id for it in gallery.items] == list(range(12))
    assert [it.path for it in gallery.items] == list(FILES)
    assert gallery.meta["weights_sha256"] == MODEL.sha256 and gallery.dim == 8
    assert gallery.meta["index"]["kind"] == "exact"
    np.testing.assert_allclose(gallery.embeddings[3], vector_of(FILES["cat/3.jpg"]), atol=1e-6)
    cat = gallery.embeddings[:6].mean(axis=0)
    np.testing.assert_allclose(gallery.prototypes[0], cat / np.linalg.norm(cat), atol=1e-6)
    assert gallery.prototype_classes == ["cat", "dog"]
    assert report.embedded == 12 and report.failed == []
    assert not list((tmp_path / "index").glob(".partial-*")), "checkpoint left after commit"


def test_rebuild_on_a_grown_folder_embeds_only_new_images_and_drops_removed(tmp_path):
    records = write_files(tmp_path / "data", FILES)
    build_gallery(tmp_path / "index", records, FakeEmbed(), MODEL)
    grown = write_files(tmp_path / "data", {"dog/new.jpg": b"dog-new", "cat/copy.jpg": b"cat-0"})
    kept = [r for r in records if r.path != "dog/0.jpg"] + grown
    embed = FakeEmbed()
    report = build_gallery(tmp_path / "index", kept, embed, MODEL)
    assert embed.sources == [str(tmp_path / "data" / "dog/new.jpg")]  # the copy's sha is known
    gallery = read_gallery(tmp_path / "index")
    paths = {it.path: it.id for it in gallery.items}
    assert "dog/0.jpg" not in paths and report.dropped == 1
    assert paths["cat/1.jpg"] == 1, "a kept item keeps its id"
    assert paths["dog/new.jpg"] >= 12 and paths["cat/copy.jpg"] >= 12
    assert len(list((tmp_path / "index").glob("gen-*"))) == 1


def test_interrupted_build_is_finished_by_a_rerun_without_embedding_twice(tmp_path):
    records = write_files(tmp_path / "data", FILES)
    with pytest.raises(KeyboardInterrupt):
        build_gallery(tmp_path / "index", records, FakeEmbed(stop_after=2), MODEL, chunk=4)
    assert not (tmp_path / "index" / "meta.json").exists(), "an interrupted build committed"
    embed = FakeEmbed()
    build_gallery(tmp_path / "index", records, embed, MODEL, chunk=4)
    assert len(embed.sources) == 4, "the two finished chunks were embedded again"
    assert len(read_gallery(tmp_path / "index").items) == 12


def test_an_interrupted_rebuild_leaves_the_committed_index_readable(tmp_path, monkeypatch):
    records = write_files(tmp_path / "data", FILES)
    build_gallery(tmp_path / "index", records, FakeEmbed(), MODEL)
    before = read_meta(tmp_path / "index")
    import imgclf.search.store as store

    def crash(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "atomic_write_json", crash)  # dies right before the commit
    grown = write_files(tmp_path / "data", {"dog/new.jpg": b"dog-new"})
    with pytest.raises(KeyboardInterrupt):
        build_gallery(tmp_path / "index", records + grown, FakeEmbed(), MODEL)
    monkeypatch.undo()
    assert read_meta(tmp_path / "index") == before
    assert len(read_gallery(tmp_path / "index").items) == 12


def test_failed_images_are_listed_and_left_out(tmp_path):
    records = write_files(tmp_path / "data", {**FILES, "dog/broken.jpg": b"bad bytes"})
    report = build_gallery(tmp_path / "index", records, FakeEmbed(), MODEL)
    assert report.failed == [("dog/broken.jpg", "not an image")]
    assert len(report.gallery.items) == 12


def test_a_gallery_where_nothing_embeds_is_refused_and_nothing_written(tmp_path):
    records = write_files(tmp_path / "data", {"cat/a.jpg": b"bad 1", "dog/b.jpg": b"bad 2"})
    with pytest.raises(InputError, match="None of the 2 images could be embedded"):
        build_gallery(tmp_path / "index", records, FakeEmbed(), MODEL)
    assert not (tmp_path / "index" / "meta.json").exists()


@pytest.mark.parametrize("damage", ["truncate", "delete", "table"])
def test_the_cheap_read_of_a_query_refuses_a_truncated_file_or_a_changed_table(tmp_path, damage):
    build_gallery(tmp_path / "index", write_files(tmp_path / "data", FILES), FakeEmbed(), MODEL)
    generation = next((tmp_path / "index").glob("gen-*"))
    target = generation / "embeddings.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-4])
    elif damage == "delete":
        target.unlink()
    else:  # a size edited to match a truncated file: the table's checksum no longer holds
        target.write_bytes(target.read_bytes()[:-4])
        meta_path = tmp_path / "index" / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["files"]["embeddings.npy"]["bytes"] -= 4
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError) as error:
        read_gallery(tmp_path / "index", checksums=False)
    assert "rebuild it with: python utils/search.py build" in str(error.value)


def test_a_same_size_byte_flip_needs_the_checksums_to_be_caught(tmp_path):
    build_gallery(tmp_path / "index", write_files(tmp_path / "data", FILES), FakeEmbed(), MODEL)
    target = next((tmp_path / "index").glob("gen-*")) / "embeddings.npy"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0x01  # the last embedding's last float: the file still parses
    target.write_bytes(bytes(data))
    assert len(read_gallery(tmp_path / "index", checksums=False).items) == 12
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_gallery(tmp_path / "index")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_a_damaged_index_is_refused_with_one_sentence(tmp_path, damage):
    build_gallery(tmp_path / "index", write_files(tmp_path / "data", FILES), FakeEmbed(), MODEL)
    generation = next((tmp_path / "index").glob("gen-*"))
    target = generation / "faiss.index"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        (generation / "items.csv").unlink()
    else:
        (tmp_path / "index" / "meta.json").write_text('{"format": "imgclf-sea')
    with pytest.raises(InputError) as error:
        read_gallery(tmp_path / "index")
    message = str(error.value)
    assert "rebuild it with: python utils/search.py build" in message
    assert "\n" not in message


def test_no_index_and_foreign_meta_are_refused(tmp_path):
    with pytest.raises(InputError, match="holds no search index"):
        read_gallery(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="is not an imgclf search index"):
        read_gallery(tmp_path)


def test_other_weights_and_other_embedding_sizes_are_refused(tmp_path):
    build_gallery(tmp_path / "index", write_files(tmp_path / "data", FILES), FakeEmbed(), MODEL)
    meta = read_meta(tmp_path / "index")
    check_weights(meta, MODEL.sha256, MODEL.weights, tmp_path / "index")
    with pytest.raises(InputError, match=r"was built with w\.pth .* not with v\.pth"):
        check_weights(meta, OTHER_MODEL.sha256, OTHER_MODEL.weights, tmp_path / "index")
    with pytest.raises(InputError, match="holds 8-d embeddings but the model gives 512-d"):
        check_dim(meta, 512, tmp_path / "index")


def test_a_build_with_other_weights_embeds_everything_again(tmp_path):
    records = write_files(tmp_path / "data", FILES)
    build_gallery(tmp_path / "index", records, FakeEmbed(), MODEL)
    embed = FakeEmbed()
    report = build_gallery(tmp_path / "index", records, embed, OTHER_MODEL)
    assert len(embed.sources) == 12 and "not reusing the existing index" in report.notes[0]
    assert read_meta(tmp_path / "index")["weights_sha256"] == OTHER_MODEL.sha256


def test_add_class_adds_a_prototype_and_survives_a_rebuild(tmp_path):
    records = write_files(tmp_path / "data", FILES)
    build_gallery(tmp_path / "index", records, FakeEmbed(), MODEL)
    gallery = read_gallery(tmp_path / "index")
    new = write_files(tmp_path / "new", {"bird/1.jpg": b"bird-1", "bird/2.jpg": b"bird-2"})
    vectors = {r.sha256: (vector_of(r.path.encode()), np.zeros(2)) for r in new}
    add_class(tmp_path / "index", gallery, "bird", new, vectors, MODEL)
    with pytest.raises(InputError, match="already exists"):
        add_class(tmp_path / "index", read_gallery(tmp_path / "index"), "cat", new, vectors, MODEL)
    with pytest.raises(InputError, match="nothing changed"):
        add_class(tmp_path / "index", read_gallery(tmp_path / "index"), "fish", [], {}, MODEL)
    build_gallery(tmp_path / "index", records, FakeEmbed(), MODEL)
    gallery = read_gallery(tmp_path / "index")
    assert gallery.prototype_classes == ["cat", "dog", "bird"]
    assert sum(it.label == "bird" and it.split == "added" for it in gallery.items) == 2
