"""`python utils/search.py` end to end on a real (head-fitted) model and tiny real images."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.search.store import read_gallery, read_meta
from tests.conftest import ROOT
from tests.support.loopback import LoopbackServer, respond


def load_search_cli():
    """utils/search.py as a module (utils/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("search_cli", ROOT / "utils" / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli():
    return load_search_cli()


@pytest.fixture
def built(cli, fitted_weights, tiny_root, tmp_path) -> Path:
    """An index of the tiny folder (8 train + 4 test images per class) in a fresh folder."""
    index = tmp_path / "index"
    assert cli.main(build_arguments(fitted_weights, tiny_root, index)) == 0
    return index


def build_arguments(weights: Path, data: Path, index: Path) -> list[str]:
    """`utils/search.py build` of data into index, decoding in-process (no loader workers)."""
    arguments = ["build", "--weights", str(weights), "--data", str(data), "--index", str(index)]
    return [*arguments, "--workers", "0"]


def yellow_images(folder: Path, count: int) -> list[Path]:
    """`count` plain yellow JPEGs with a little noise: a class the model was never shown."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for n in range(count):
        pixels = np.clip(rng.normal((230, 210, 30), 12, size=(40, 40, 3)), 0, 255)
        path = folder / f"{n}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def test_build_stores_the_weights_split_and_a_rerun_embeds_nothing(
    cli, built, fitted_weights, tiny_root, capsys
):
    gallery = read_gallery(built)
    assert len(gallery.items) == 36 and gallery.dim == 512  # resnet18's penultimate size
    assert sum(it.split == "train" for it in gallery.items) == 24
    assert sum(it.split == "test" for it in gallery.items) == 12
    np.testing.assert_allclose(np.linalg.norm(gallery.embeddings, axis=1), 1.0, atol=1e-5)
    capsys.readouterr()
    assert cli.main(build_arguments(fitted_weights, tiny_root, built)) == 0
    out = capsys.readouterr().out
    assert "(0 embedded now, 36 reused, 0 dropped)" in out
    assert "exact IndexFlatIP (36 items <= 50,000)" in out


def test_query_files_folders_and_urls_ranks_like_numpy(cli, built, tiny_root, tmp_path, capsys):
    square = (tiny_root / "square" / "010.jpg").read_bytes()
    with LoopbackServer({"/square.jpg": respond(square)}) as server:
        code = cli.main(
            [
                "query",
                str(tiny_root / "circle" / "009.jpg"),
                server.url("/square.jpg"),
                str(tmp_path / "missing.jpg"),
                str(tiny_root / "triangle"),
                "--index",
                str(built),
                "--k",
                "4",
                "--json",
                "--allow-private-urls",
                "--workers",
                "0",
                "--pictures",
                str(tmp_path / "pictures"),
            ]
        )
    assert code == 1  # the missing file
    payload = json.loads(capsys.readouterr().out)
    results = payload["results"]
    assert len(results) == 3 + 12 and payload["failed"] == 1
    assert results[2]["error"] == "no such file, folder or http(s) URL"
    gallery = read_gallery(built)
    row_of = {it.path: r for r, it in enumerate(gallery.items)}
    # A gallery image's nearest neighbour is itself at cosine 1, and the ranking is numpy's.
    first = results[0]["neighbours"]
    assert first[0]["path"] == str(tiny_root / "circle" / "009.jpg")
    assert first[0]["score"] == pytest.approx(1.0, abs=1e-5)
    query = gallery.embeddings[row_of["circle/009.jpg"]]
    scores = gallery.embeddings @ query
    want = np.lexsort((np.arange(len(scores)), -scores))[:4]
    assert [n["id"] for n in first] == [gallery.items[r].id for r in want]
    np.testing.assert_allclose([n["score"] for n in first], scores[want], atol=1e-5)
    assert results[1]["neighbours"][0]["path"].endswith("square/010.jpg")
    assert results[0]["prototype"]["class"] == "circle"
    # A random backbone with a fitted head: its prototypes are right for most triangles.
    assert [r["prototype"]["class"] for r in results[3:]].count("triangle") >= 10
    assert (tmp_path / "pictures" / "similar.png").stat().st_size > 1000


def test_evaluate_reports_retrieval_beside_the_classifier(cli, built, tmp_path, capsys):
    code = cli.main(
        [
            "evaluate",
            "--index",
            str(built),
            "--out",
            str(tmp_path / "reports"),
            "--pictures",
            str(tmp_path / "pictures"),
            "--bootstrap",
            "200",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "reports" / "retrieval.json").read_text())
    assert report["gallery_items"] == 24 and report["queries"] == 12
    group = report["groups"]["all"]
    for name in (
        "recall@1",
        "recall@5",
        "recall@10",
        "MAP@R",
        "knn5_accuracy",
        "prototype_accuracy",
        "classifier_accuracy",
    ):
        assert group[name]["ci_low"] <= group[name]["value"] <= group[name]["ci_high"]
    assert group["classifier_accuracy"]["value"] == 1.0  # the head was fitted to these shapes
    assert group["recall@10"]["value"] >= group["recall@1"]["value"]
    assert "prototype_accuracy" in capsys.readouterr().out
    assert (tmp_path / "pictures" / "embeddings.png").stat().st_size > 1000


def test_add_class_then_query_answers_the_new_class(cli, built, tmp_path, capsys):
    shots = yellow_images(tmp_path / "yellow", 6)
    assert (
        cli.main(
            ["add-class", "yellow", *map(str, shots[:5]), "--index", str(built), "--workers", "0"]
        )
        == 0
    )
    assert read_meta(built)["prototype_classes"][-1] == "yellow"
    capsys.readouterr()
    assert (
        cli.main(
            ["query", str(shots[5]), "--index", str(built), "--json", "--pictures", str(tmp_path)]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["prototype"]["class"] == "yellow"
    assert result["neighbours"][0]["label"] == "yellow"


def test_add_class_refusals_change_nothing(cli, built, tiny_root, tmp_path, capsys):
    before = read_meta(built)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in [
        (["circle", str(tiny_root / "circle" / "000.jpg")], "Class 'circle' already exists"),
        (["new", str(empty)], "None of the 1 image(s) given for class 'new'"),
        (["new", str(broken), str(tmp_path / "gone.jpg")], "nothing changed"),
    ]:
        capsys.readouterr()
        assert cli.main(["add-class", *args, "--index", str(built), "--workers", "0"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert read_meta(built) == before


def test_foreign_weights_damage_and_missing_index_exit_2_with_one_line(
    cli, built, mobilenet_weights, tiny_root, tmp_path, capsys
):
    image = str(tiny_root / "circle" / "000.jpg")
    cases = [
        (
            ["query", image, "--index", str(built), "--weights", str(mobilenet_weights)],
            "was built with",
        ),
        (["query", image, "--index", str(tmp_path / "nowhere")], "holds no search index"),
        (["evaluate", "--index", str(tmp_path / "nowhere")], "holds no search index"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    damaged = tmp_path / "damaged"
    shutil.copytree(built, damaged)
    embeddings = next(damaged.glob("gen-*")) / "embeddings.npy"
    embeddings.write_bytes(embeddings.read_bytes()[:-40])
    capsys.readouterr()
    assert cli.main(["query", image, "--index", str(damaged)]) == 2
    assert "is truncated or corrupt" in capsys.readouterr().err
    # A same-size change passes the size check a query makes; --verify checks the sha256.
    flipped = tmp_path / "flipped"
    shutil.copytree(built, flipped)
    embeddings = next(flipped.glob("gen-*")) / "embeddings.npy"
    data = bytearray(embeddings.read_bytes())
    data[-5] ^= 0x01
    embeddings.write_bytes(bytes(data))
    assert cli.main(["query", image, "--index", str(flipped), "--verify"]) == 2
    assert "is truncated or corrupt" in capsys.readouterr().err


def test_an_empty_data_folder_is_refused_and_writes_no_index(
    cli, fitted_weights, tmp_path, capsys
):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir()
    code = cli.main(build_arguments(fitted_weights, tmp_path / "data", tmp_path / "index"))
    assert code == 2
    assert "has no images" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_help_lists_every_command(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"], description=cli.__doc__)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("build", "query", "evaluate", "add-class"):
        assert f"python utils/search.py {command}" in out
