"""Every command the README shows is run by a test, by `make demo` or by CI, so none can rot.

README.md and any docs/*.md are read. Commands are the lines of
```bash blocks (comments after `#` dropped, `\\` continuations joined, a leading `$ ` removed),
compared after shell tokenising so spacing and quoting style do not matter.

COVERAGE is the reviewed map from each command to what runs it:
- "demo": one of the commands `make demo` runs (checked against the demo's own list);
- "ci": a command .ci/run runs, or a `python -m pytest PATH` over existing paths (CI runs them);
- "record": the command that produced a number the docs report (minutes of CPU, not rerun); the
  programs and project files it names must exist;
- "tests/<file>.py::<test>": a test that runs it (the test must exist and mention the program).
A new README command without an entry fails `test_every_readme_command_is_covered`; an entry
whose command left the docs fails `test_coverage_map_has_no_stale_entries`.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import pytest

from imgclf.demo.pipeline import pipeline_steps

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

DEMO_TEST = "tests/demo/test_demo_pipeline.py::"
DOCKER_TEST = "tests/docker/test_docker_scripts.py::"
CONTAINERS_TEST = "tests/docker/test_containers.py::"
DEMO_IN_CONTAINER = "test_quick_demo_runs_over_a_mounted_folder_with_the_demo_data_copied_in"
PODMAN_TEST = "tests/docker/test_podman_setup.py::"
TRAIN_TEST = "tests/train/test_train_run.py::"
FAULTS_TEST = "tests/acquire/test_download_faults.py::"
INPUT_TEST = "tests/acquire/test_download_input.py::"
RAY_TEST = "tests/acquire/test_download_ray.py::"
EVALUATION_TEST = "tests/evaluate/test_evaluate_evaluation.py::"
PREDICT_TEST = "tests/predict/test_predict_prediction.py::"
EXPORT_TEST = "tests/model/test_model_export.py::"
SEARCH_TEST = "tests/search/test_search_cli.py::"
SERVE_TEST = "tests/serve/test_service_http.py::"
COVERAGE: dict[str, str] = {
    # README.md (quick start), CI
    "make test": "ci",
    # README.md and docs/download.md
    "python utils/download_data.py --urls data/urls --out data/images": (
        FAULTS_TEST + "test_run_completes_with_one_row_per_url_in_input_order"
    ),
    "python utils/download_data.py --urls list.csv --out data/images --resize 512": (
        FAULTS_TEST + "test_resize_stores_a_smaller_jpeg"
    ),
    "python utils/download_data.py --urls list.csv --out data/images --retry-failed": (
        "tests/acquire/test_download_resume.py::"
        "test_rerun_fetches_nothing_retries_failures_on_request_and_repairs_damage"
    ),
    "python utils/download_data.py --import fetched.zip --out data/images": (
        INPUT_TEST + "test_import_brings_files_through_the_same_validation_and_layout"
    ),
    "python utils/download_data.py --help": (
        INPUT_TEST + "test_help_lists_every_option_with_its_default"
    ),
    # docs/download.md: on a Ray cluster
    "python utils/download_data.py --urls list.csv --out /shared/images --distributor ray": (
        RAY_TEST + "test_ray_run_leaves_the_same_manifest_and_files_and_reruns_like_one"
    ),
    "python utils/download_data.py --urls list.csv --out /shared/images --distributor ray "
    "--ray-address auto": RAY_TEST
    + "test_a_cluster_started_with_ray_start_is_joined_by_auto_and_by_its_address",
    # how the download benchmark table in docs/benchmarks.md was produced
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/download.py": "record",
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/download.py --images 30000 "
    "--skip-naive --ray --latency 0 --img2dataset /tmp/i2d/bin/img2dataset": "record",
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/download.py --images 30000 "
    "--skip-naive --ray --latency 0.05": "record",
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/download.py --images 2000 "
    "--skip-naive --latency 0 --driver-memory 100000 1000000": "record",
    # README.md and docs/training.md
    "catalyst-dl run --config configs/config.yaml": (
        TRAIN_TEST + "test_run_leaves_weights_picture_logs_and_table"
    ),
    "catalyst-dl run --config configs/config.yaml configs/resnet18.yaml": (
        "tests/train/test_train_configs.py::test_every_config_builds_its_components"
    ),
    "catalyst-dl run --config configs/config.yaml configs/ddp.yaml": (
        TRAIN_TEST + "test_ddp_two_cpu_processes_train_head_and_train_stages"
    ),
    "catalyst-dl run --config configs/config.yaml --resume logs/train/checkpoints/last_full.pth": (
        TRAIN_TEST + "test_interrupted_run_resumes_the_remaining_epochs_only"
    ),
    "python -m imgclf.train.reexport logs/train": (
        TRAIN_TEST + "test_reexport_writes_the_weights_file_again_from_the_logdir"
    ),
    "python -m imgclf.train.reexport logs/train/checkpoints/train.7.pth --out epoch7.pth": (
        TRAIN_TEST + "test_reexport_of_a_damaged_checkpoint_is_one_sentence"
    ),
    ".venv/bin/python -m pytest tests/train -q": "ci",
    ".venv/bin/python -m pytest tests/train -q -m 'not slow'": "ci",
    # docs/development.md: the dataset tests
    ".venv/bin/python -m pytest tests/dataset -q": "ci",
    # the BatchNorm momentum comparison in docs/training.md (bn.yaml: the reader's paths)
    "flock /tmp/imgclf-cpu.lock .venv/bin/catalyst-dl run --config configs/config.yaml bn.yaml": (
        "record"
    ),
    # README.md and docs/evaluation.md
    "python utils/inference.py --split valid": (
        EVALUATION_TEST + "test_bad_input_is_one_line_and_exit_2"
    ),
    "python utils/inference.py --data path/to/labelled_images": (
        EVALUATION_TEST + "test_report_on_a_data_folder_with_a_corrupt_image"
    ),
    "python utils/inference.py --out reports/ --pictures pictures/ --bootstrap 1000 --seed 0": (
        EVALUATION_TEST + "test_report_on_the_stored_split"
    ),
    "python utils/inference.py --predict photo.jpg some/folder/ https://example.com/cat.jpg": (
        PREDICT_TEST + "test_predict_files_folders_and_urls"
    ),
    "python utils/inference.py --predict some/folder/ --topk 3 --json": (
        PREDICT_TEST + "test_predict_files_folders_and_urls"
    ),
    "python utils/inference.py --predict photo.jpg --weights weights/mobilenet_v3_small.onnx": (
        EXPORT_TEST + "test_cli_export_and_predict_with_the_export"
    ),
    "python utils/inference.py --export onnx": (
        EXPORT_TEST + "test_exports_match_eager_torch_on_real_photos"
    ),
    "python utils/inference.py --export torchscript": (
        EXPORT_TEST + "test_cli_export_and_predict_with_the_export"
    ),
    "python utils/inference.py --export torchscript --export-to deploy/classifier.ts": (
        "tests/commands/test_commands_inference_outputs.py::"
        "test_export_to_chooses_the_exported_file"
    ),
    "python utils/inference.py --backend onnxruntime": (
        EVALUATION_TEST + "test_every_backend_gives_the_same_report"
    ),
    "python utils/inference.py --tta": (
        EVALUATION_TEST + "test_report_with_tta_averages_each_photo_with_its_mirror"
    ),
    "python utils/inference.py --no-tta": (
        EVALUATION_TEST + "test_report_follows_the_weights_files_tta_unless_told"
    ),
    # how the model quality table in docs/benchmarks.md was produced
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/quality.py --setting low": ("record"),
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting low "
    "--epochs 25 --label base": "record",
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting low "
    "--epochs 25 --config trivial.yaml --label trivial": "record",
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting imbalanced "
    "--epochs 25 --config balanced.yaml --label balanced": "record",
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting low "
    "--epochs 100 --config before.yaml --label before": "record",
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/quality.py --setting full": ("record"),
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting low --epochs 25 "
    "--label after": "record",
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting full --label after": (
        "record"
    ),
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting low --epochs 25 "
    "--config noema.yaml --label noema": "record",
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting full --seeds 0 "
    "--epochs 20 --config before.yaml --label t-before --workdir /tmp/q2b": "record",
    "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality.py --setting full --seeds 0 "
    "--epochs 20 --label t-after --workdir /tmp/q2a": "record",
    # how the inference benchmark table in docs/benchmarks.md was produced
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/inference.py": "record",
    # README.md, docs/development.md (make demo) and docs/docker.md
    "make demo": DEMO_TEST + "test_make_demo_runs_the_whole_pipeline",
    "make demo 'DEMO_ARGS=--per-class 20 --config my_quick.yaml'": (
        DEMO_TEST + "test_make_demo_runs_the_whole_pipeline"
    ),
    ".venv/bin/python tools/demo.py --help": DEMO_TEST + "test_help_lists_every_option",
    "python utils/download_data.py --urls data/demo/urls/urls.csv --out data/demo/images": "demo",
    "catalyst-dl run --config configs/config.yaml configs/demo.yaml": "demo",
    "python utils/inference.py": "demo",
    "docker/build.sh": DOCKER_TEST + "test_build_uses_the_project_as_context_from_any_directory",
    "docker/run.sh": DOCKER_TEST + "test_run_without_a_command_serves_on_the_published_port",
    "docker/run.sh make demo": (
        DOCKER_TEST + "test_run_starts_a_throwaway_container_with_the_command"
    ),
    "docker/run_volume.sh": (
        DOCKER_TEST + "test_run_volume_mounts_the_projects_data_folder_by_default"
    ),
    "docker/run_volume.sh '~/pets' python utils/download_data.py --urls data/urls.csv": (
        DOCKER_TEST + "test_run_volume_resolves_a_relative_folder_and_passes_the_command"
    ),
    # docs/search.md
    "python utils/search.py build --weights weights/mobilenet_v3_small.pth "
    "--data data/demo/sign_language_digits --index index/": (
        SEARCH_TEST + "test_build_stores_the_weights_split_and_a_rerun_embeds_nothing"
    ),
    "python utils/search.py query data/demo/sign_language_digits/3/IMG_1121.jpg "
    "https://example.com/hand.jpg --index index/ --k 5": (
        SEARCH_TEST + "test_query_files_folders_and_urls_ranks_like_numpy"
    ),
    "python utils/search.py query some/folder/ --index index/ --json": (
        SEARCH_TEST + "test_query_files_folders_and_urls_ranks_like_numpy"
    ),
    "python utils/search.py evaluate --index index/": (
        SEARCH_TEST + "test_evaluate_reports_retrieval_beside_the_classifier"
    ),
    "python utils/search.py add-class NAME some/folder/ --index index/": (
        SEARCH_TEST + "test_add_class_then_query_answers_the_new_class"
    ),
    "python utils/search.py --help": SEARCH_TEST + "test_help_lists_every_command",
    # docs/search.md: the few-shot run and the search benchmark (minutes of CPU: not rerun)
    "OMP_NUM_THREADS=1 catalyst-dl run --config configs/config.yaml configs/fewshot.yaml": (
        "record"
    ),
    "python utils/search.py build --weights logs/fewshot/fewshot_mobilenet_v3_small.pth "
    "--data data/demo/sign_language_digits --index index/fewshot": "record",
    "python utils/search.py evaluate --index index/fewshot --data data/demo/sign_language_digits "
    "--out reports/fewshot_before --pictures reports/fewshot_before": "record",
    "python utils/search.py add-class 8 "
    "data/demo/sign_language_digits/8/IMG_1126.jpg "
    "data/demo/sign_language_digits/8/IMG_1136.jpg "
    "data/demo/sign_language_digits/8/IMG_1146.jpg "
    "data/demo/sign_language_digits/8/IMG_1156.jpg "
    "data/demo/sign_language_digits/8/IMG_1166.jpg "
    "--index index/fewshot": "record",
    "python utils/search.py add-class 9 "
    "data/demo/sign_language_digits/9/IMG_1127.jpg "
    "data/demo/sign_language_digits/9/IMG_1137.jpg "
    "data/demo/sign_language_digits/9/IMG_1147.jpg "
    "data/demo/sign_language_digits/9/IMG_1157.jpg "
    "data/demo/sign_language_digits/9/IMG_1168.jpg "
    "--index index/fewshot": "record",
    "python utils/search.py evaluate --index index/fewshot --data data/demo/sign_language_digits "
    "--out reports/fewshot --pictures reports/fewshot": "record",
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/search.py --part synthetic": "record",
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/search.py --part build": "record",
    # docs/docker.md: build arguments, the CA bundle, the demo over a mounted folder, podman
    "docker/build.sh --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu": (
        DOCKER_TEST + "test_build_passes_options_and_takes_the_image_name_from_the_environment"
    ),
    "docker/build.sh --build-arg INDEX_URL=https://mirror.example/simple "
    "--build-arg EXTRA_INDEX_URLS=https://mirror.example/extra/simple": (
        DOCKER_TEST + "test_build_passes_options_and_takes_the_image_name_from_the_environment"
    ),
    "IMGCLF_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt docker/build.sh": (
        DOCKER_TEST + "test_build_gives_a_ca_bundle_as_the_build_secret"
    ),
    "mkdir -p '~/imgclf-data'": CONTAINERS_TEST + DEMO_IN_CONTAINER,
    "cp -r data/demo '~/imgclf-data/'": CONTAINERS_TEST + DEMO_IN_CONTAINER,
    "docker/run_volume.sh '~/imgclf-data' make demo": CONTAINERS_TEST + DEMO_IN_CONTAINER,
    "eval '$(tools/podman_setup.sh)'": (
        PODMAN_TEST + "test_eval_of_its_output_puts_the_docker_shim_first_and_the_shim_runs_podman"
    ),
    "IMGCLF_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt make test-docker": (
        PODMAN_TEST + "test_make_test_docker_without_an_engine_skips_and_says_how_to_get_one"
    ),
    # docs/serve.md: the HTTP service, its tests and its benchmark
    "python utils/serve.py --weights weights/mobilenet_v3_small.pth --port 8000": (
        SERVE_TEST + "test_predict_answers_exactly_like_the_cli"
    ),
    "python utils/serve.py --weights weights/mobilenet_v3_small.pth --index index/ --port 8000": (
        SERVE_TEST + "test_search_answers_exactly_like_the_cli"
    ),
    "curl -F file=@photo.jpg http://127.0.0.1:8000/predict": (
        SERVE_TEST + "test_the_documented_curl_commands"
    ),
    "curl -F file=@photo.jpg 'http://127.0.0.1:8000/search?k=5'": (
        SERVE_TEST + "test_the_documented_curl_commands"
    ),
    ".venv/bin/python -m pytest tests/serve -q": "ci",
    "flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/serve.py --requests 200 600 1500 "
    "--row-seconds 25": "record",
}

FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGUAGES = {"bash", "sh", "shell"}


def shell_lines(markdown: str) -> list[str]:
    """The logical lines of the markdown's bash code blocks, continuations joined."""
    lines: list[str] = []
    language = None
    pending = ""
    for raw in markdown.splitlines():
        fence = FENCE.match(raw.strip())
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language not in SHELL_LANGUAGES:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return lines


def normalise(line: str) -> str:
    """The command on `line` in a canonical spelling; empty for blank and comment lines."""
    line = line.strip()
    if line.startswith("$ "):
        line = line[2:]
    return shlex.join(shlex.split(line, comments=True))


def documented_commands() -> dict[str, list[str]]:
    """Every command in the README and its parts, with the files that show it."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        if doc.exists():
            for line in shell_lines(doc.read_text()):
                command = normalise(line)
                if command:
                    found.setdefault(command, []).append(str(doc.relative_to(ROOT)))
    return found


def test_markdown_parsing_handles_comments_continuations_and_other_blocks():
    markdown = "\n".join(
        [
            "Text `make nothing`.",
            "```bash",
            "make demo        # the whole pipeline",
            "# a comment line",
            "",
            "$ python utils/inference.py \\",
            '    --weights "weights/my model.pth"',
            "```",
            "```yaml",
            "data: {root: data/images}",
            "```",
            "```",
            "not a shell block",
            "```",
        ]
    )
    commands = [normalise(line) for line in shell_lines(markdown)]
    assert [command for command in commands if command] == [
        "make demo",
        "python utils/inference.py --weights 'weights/my model.pth'",
    ]


def test_every_readme_command_is_covered():
    missing = {
        command: docs for command, docs in documented_commands().items() if command not in COVERAGE
    }
    assert not missing, (
        "add these README commands to COVERAGE in tests/test_readme.py with the test that runs "
        f"them (or 'demo' / 'ci' / 'record'): {missing}"
    )


def test_coverage_map_has_no_stale_entries():
    stale = sorted(set(COVERAGE) - set(documented_commands()))
    assert not stale, f"these commands left the docs; remove them from COVERAGE: {stale}"


def words_of(command: str) -> list[str]:
    """The command's words without wrappers (`flock LOCK`, `time`) and leading VAR=value."""
    words = shlex.split(command)
    while words and (words[0] in ("flock", "time") or re.match(r"^\w+=", words[0])):
        words = words[2:] if words[0] == "flock" else words[1:]
    return words


def subject(command: str) -> str:
    """What a command runs: the script after `python`, the module after `-m`, the make target."""
    words = [word for word in words_of(command) if not re.match(r"^\w+=", word)]
    if Path(words[0]).name.startswith("python"):
        return words[2] if words[1] == "-m" else words[1]
    return words[1] if words[0] == "make" else Path(words[0]).name


def aliases(program: str) -> list[str]:
    """Names a test may use for `program`: its file name, and for a thin entry script the imgclf
    modules it delegates to (tests often call `imgclf.commands.download.main` in-process)."""
    names = [Path(program).name]
    script = ROOT / program
    if script.suffix == ".py" and script.is_file():
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgclf."):
                names.append(node.module)
    return names


def long_options(command: str) -> set[str]:
    """The `--option` names a command uses (values and `--opt=value` forms reduced to names)."""
    return {word.split("=")[0] for word in shlex.split(command) if word.startswith("--")}


def sources_of(test_file: Path) -> str:
    """The test file and the helpers beside it (conftest.py, *_helpers.py) that build commands."""
    helpers = [p for p in sorted(test_file.parent.glob("*.py")) if not p.name.startswith("test_")]
    return "\n".join(path.read_text() for path in [test_file, *helpers])


def runs_the_test_suite(command: str) -> bool:
    """`python -m pytest PATH...` over existing paths: CI runs every test (`make test`)."""
    words = shlex.split(command)
    if subject(command) != "pytest":
        return False
    paths = [word for word in words[3:] if not word.startswith("-") and "/" in word]
    return all((ROOT / path).exists() for path in paths)


@pytest.mark.parametrize("command", sorted(COVERAGE))
def test_coverage_entry_points_at_what_really_runs_it(command):
    where = COVERAGE[command]
    if where == "demo":
        assert command in [step.command for step in pipeline_steps()]
    elif where == "record":
        # The provenance of a measured number: minutes of CPU, so no test reruns it; what it
        # names must still exist, so a rename in the project breaks this test, not the docs.
        program = subject(command)
        assert (Path(sys.executable).parent / program).exists() or (ROOT / program).exists()
        for word in words_of(command):
            if word.startswith(("configs/", "utils/", "benchmarks/", "tools/")):
                assert (ROOT / word).exists(), f"{command}: {word} does not exist"
    elif where == "ci":
        ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
        assert command in ci_lines or runs_the_test_suite(command)
    else:
        path, _, name = where.partition("::")
        test_file = ROOT / path
        assert test_file.is_file(), f"{where}: no such test file"
        assert re.search(rf"^def {re.escape(name)}\(", test_file.read_text(), re.MULTILINE), (
            f"{where}: no such test"
        )
        # A cheap guard against a stale or careless entry: the test (or its helpers) names the
        # program and every option the command uses.
        source = sources_of(test_file)
        names = aliases(subject(command))
        assert any(name in source for name in names), f"{where} never mentions any of {names}"
        unused = sorted(option for option in long_options(command) if f'"{option}"' not in source)
        assert not unused, f"{where} never passes {unused}"


def test_every_command_the_demo_runs_is_documented():
    documented = documented_commands()
    for step in pipeline_steps():
        assert step.command in documented, f"document `{step.command}` (make demo runs it)"
        assert COVERAGE[step.command] == "demo"
