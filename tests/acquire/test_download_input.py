"""URL list formats, streaming, malformed input (exit 2, one sentence), labels, --import."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from imgclf.acquire.labels import LabelFolders, safe_label
from imgclf.acquire.reader import iter_url_rows, scan_urls
from imgclf.acquire.reasons import REASONS
from imgclf.commands.download import main
from imgclf.errors import InputError
from tests.acquire import sample_images as images
from tests.acquire.faults import read_rows

ROOT = Path(__file__).resolve().parents[2]


def rows_of(path: Path) -> list[tuple[str, str, str]]:
    return [(row.url, row.label, row.split) for row in iter_url_rows(path)]


def test_csv_tsv_jsonl_and_gzip_give_the_same_rows(tmp_path):
    expected = [("http://a/1.jpg", "cat", "train"), ("http://a/2.jpg", "dog", "")]
    (tmp_path / "list.csv").write_text(
        "label,url,split,comment\ncat,http://a/1.jpg,train,x\n\ndog, http://a/2.jpg ,,y\n"
    )
    (tmp_path / "list.tsv").write_text(
        "url\tlabel\tsplit\nhttp://a/1.jpg\tcat\ttrain\nhttp://a/2.jpg\tdog\t\n"
    )
    records = [{"url": u, "label": lab, **({"split": s} if s else {})} for u, lab, s in expected]
    jsonl = "\n".join(json.dumps(r) for r in records) + "\n"
    (tmp_path / "list.jsonl").write_text(jsonl)
    with gzip.open(tmp_path / "list.jsonl.gz", "wt") as handle:
        handle.write(jsonl)
    for name in ("list.csv", "list.tsv", "list.jsonl", "list.jsonl.gz"):
        assert rows_of(tmp_path / name) == expected, name


def test_a_folder_of_label_files_skips_blanks_and_comments(tmp_path):
    (tmp_path / "dog.txt").write_text("# dogs\nhttp://a/d1.jpg\n\n  http://a/d2.jpg  \n")
    with gzip.open(tmp_path / "cat.txt.gz", "wt") as handle:
        handle.write("http://a/c1.jpg\n")
    (tmp_path / "notes.md").write_text("ignored: not a list format")
    assert rows_of(tmp_path) == [
        ("http://a/c1.jpg", "cat", ""),
        ("http://a/d1.jpg", "dog", ""),
        ("http://a/d2.jpg", "dog", ""),
    ]
    assert [row.index for row in iter_url_rows(tmp_path)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "url,class\nhttp://a/1.jpg,cat\n", "a.csv:1: the header has no label column"),
        ("b.csv", "url,label\nhttp://a/1.jpg,cat\nhttp://a/2.jpg,\n", "b.csv:3: empty label"),
        (
            "c.jsonl",
            '{"url": "http://a/1.jpg", "label": "x"}\n{"url": \n',
            "c.jsonl:2: invalid JSON",
        ),
        ("d.jsonl", '{"url": "http://a/1.jpg"}\n', "d.jsonl:1: no label key"),
        ("e.jsonl", '["http://a/1.jpg", "cat"]\n', "e.jsonl:1: expected a JSON object"),
        ("f.csv", "", "f.csv:1: empty file"),
        ("g.csv", "url,label\nhttp://a/1.jpg,a/b\nhttp://a/2.jpg,a_b\n", "would share the folder"),
        ("h.csv", "url,label\nhttp://a/1.jpg,Cat\nhttp://a/2.jpg,cat\n", "would share the folder"),
        ("i.csv", "url,label\n", "holds no URLs"),
    ],
)
def test_malformed_input_stops_before_any_download_naming_file_and_line(
    tmp_path, capsys, name, content, message
):
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "out"
    assert main(["--urls", str(path), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1, "one sentence, no traceback"
    assert not out.exists(), "nothing was started"


def test_unreadable_inputs_are_input_errors(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("url,label\nhttp://a/1.jpg,caf\xe9\n".encode("latin-1"))
    (tmp_path / "broken.csv.gz").write_bytes(b"not gzip at all")
    (tmp_path / "urls.xlsx").write_bytes(b"")
    (tmp_path / "huge.csv").write_text("url,label\nhttp://a/1.jpg," + "c" * 200_000 + "\n")
    for name, message in [
        ("huge.csv", "the label is 200,000 characters long"),
        ("latin1.csv", "is not UTF-8"),
        ("broken.csv.gz", "cannot be read"),
        ("urls.xlsx", "unknown list format"),
        ("absent.csv", "no such file or folder"),
    ]:
        with pytest.raises(InputError, match=message):
            scan_urls(tmp_path / name)


def test_entry_script_exits_2_without_traceback_for_bad_arguments(tmp_path):
    script = ROOT / "utils" / "download_data.py"
    for args in (
        ["--urls", str(tmp_path / "absent.csv")],
        ["--concurrency", "0"],
        ["--max-bytes", "lots"],
    ):
        done = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=ROOT, check=False)  # fmt: skip
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().count("\n") <= 1 or "usage:" in done.stderr


def test_help_lists_every_option_with_its_default():
    script = ROOT / "utils" / "download_data.py"
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                          cwd=ROOT, check=True)  # fmt: skip
    text = " ".join(done.stdout.split())
    for option in ("--urls", "--out", "--import", "--concurrency", "--per-host", "--timeout",
                   "--connect-timeout", "--retries", "--max-bytes", "--max-pixels", "--min-side",
                   "--resize", "--retry-failed", "--ignore-opt-out", "--block-private", "--quiet",
                   "--workers", "--validate-timeout"):  # fmt: skip
        assert option in text
    assert "(default: data/urls)" in text and "(default: data/images)" in text
    assert "(default: 20971520)" in text and "(default: 32)" in text


def test_nothing_of_the_downloader_imports_torch():
    code = (
        "import sys, imgclf.commands.download, imgclf.acquire.pipeline, imgclf.acquire.importer;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_safe_labels():
    assert safe_label("../evil") == "_evil"
    assert safe_label("a/b\\c") == "a_b_c"
    assert safe_label(".hidden") == "hidden"
    assert safe_label("..") == "_"
    assert safe_label("CON") == "_CON"
    assert safe_label("cafe\u0301") == "caf\u00e9"  # NFC
    assert len(safe_label("é" * 200).encode()) <= 100
    folders = LabelFolders()
    assert folders.folder("caf\u00e9", "a.csv:2") == "caf\u00e9"
    # Two spellings of one word would merge two classes into one folder: refuse.
    with pytest.raises(InputError, match=r"^a.csv:3: .* \(a.csv:2\) would share the folder"):
        folders.folder("cafe\u0301", "a.csv:3")


@pytest.mark.parametrize(
    "count", [200_000, pytest.param(1_000_000, marks=pytest.mark.slow, id="one-million")]
)
def test_url_lists_are_streamed_not_loaded(tmp_path, count):
    path = tmp_path / "big.csv.gz"
    with gzip.open(path, "wt", compresslevel=1) as handle:
        handle.write("url,label\n")
        for index in range(count):
            handle.write(f"http://example.com/images/{index:07d}.jpg,class{index % 50}\n")
    tracemalloc.start()
    summary = scan_urls(path)
    rows = sum(1 for _ in iter_url_rows(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert summary.rows == rows == count
    # The whole list as Python objects would take well over 50 MB.
    assert peak < 5 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# -- --import ---------------------------------------------------------------------------------


def make_handover(root: Path) -> dict[str, bytes]:
    """A teammate's folder: <label>/<file>, one broken file, one non-image, one README."""
    files = {
        "dataset/cat/1.jpg": images.jpeg(seed=300),
        "dataset/cat/2.png": images.png(seed=301),
        "dataset/dog/1.jpg": images.jpeg(seed=302),
        "dataset/dog/broken.jpg": images.truncated_jpeg(),
        "dataset/dog/notes.txt": b"taken in the park",
        "README": b"top-level file: no label, skipped",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "folder"])
def test_import_brings_files_through_the_same_validation_and_layout(tmp_path, kind):
    source = tmp_path / "handover"
    files = make_handover(source)
    if kind == "zip":
        archive = tmp_path / "handover.zip"
        with zipfile.ZipFile(archive, "w") as handle:
            for name in files:
                handle.write(source / name, name)
    elif kind == "tar.gz":
        archive = tmp_path / "handover.tar.gz"
        with tarfile.open(archive, "w:gz") as handle:
            for name in files:
                handle.add(source / name, name)
    else:
        archive = source
    out = tmp_path / "out"
    assert main(["--import", str(archive), "--out", str(out), "--quiet", "--min-side", "8"]) == 0
    rows = read_rows(out)
    assert [(row["label"], row["status"], row["reason"]) for row in rows] == [
        ("cat", "ok", ""),
        ("cat", "ok", ""),
        ("dog", "ok", ""),
        ("dog", "failed", "corrupt"),
        ("dog", "failed", "not_image"),
    ]
    assert rows[0]["url"].startswith("file://") and rows[0]["url"].endswith("cat/1.jpg")
    assert rows[1]["path"].startswith("cat/") and rows[1]["path"].endswith(".png")
    assert (out / rows[2]["path"]).read_bytes() == files["dataset/dog/1.jpg"]
    # Importing again keeps everything and reads nothing new.
    assert main(["--import", str(archive), "--out", str(out), "--quiet", "--min-side", "8"]) == 0
    assert read_rows(out) == rows


def test_the_documented_reasons_are_the_vocabulary():
    documented = (ROOT / "docs" / "download.md").read_text(encoding="utf-8")
    for reason in REASONS:
        assert f"| `{reason}` |" in documented, f"{reason} is missing from docs/download.md"
