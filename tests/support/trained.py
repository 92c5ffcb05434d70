"""Real weights files for the model, predict and evaluate tests: a model whose head is fitted on
tiny generated images (the fixtures are re-exported by those folders' conftest.py).

Fitting only the head (on the frozen random backbone's features) takes a fraction of a second and
separates the three colour-coded shapes, so accuracy checks are meaningful without training.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from imgclf.imaging import open_rgb
from imgclf.model.factory import build_model, head
from imgclf.model.preprocessing import EvalPreset, Preprocessing
from imgclf.model.weights import WeightsFile, save_weights
from tests.conftest import ROOT, TINY_CLASSES, make_image_folder

TRAIN_PER_CLASS = 8


def tiny_split(root: Path) -> dict[str, list[list[str]]]:
    """First TRAIN_PER_CLASS images of each class for train, the rest for test."""
    parts: dict[str, list[list[str]]] = {"train": [], "valid": [], "test": []}
    for label in TINY_CLASSES:
        for index, path in enumerate(sorted((root / label).glob("*.jpg"))):
            part = "train" if index < TRAIN_PER_CLASS else "test"
            parts[part].append([path.relative_to(root).as_posix(), label])
    return parts


def fit_head(model: torch.nn.Module, arch: str, images: torch.Tensor, labels: torch.Tensor):
    """Fit the classification layer on the frozen backbone's features (full-batch LBFGS).

    The random backbone's BatchNorm statistics are first measured on `images`: with the
    default ones (mean 0, variance 1) activations vanish through the depth of the network.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    with torch.no_grad():
        model.train()(images)
    layer = head(model, arch)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    with torch.no_grad():
        model.eval()(images)
    hook.remove()
    features = captured[0].detach()
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=100)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(features), labels)
        loss.backward()
        return loss

    optimizer.step(closure)


def write_weights(
    path: Path,
    root: Path,
    *,
    arch: str,
    img_size: int,
    fitted: bool = True,
) -> Path:
    """Save a weights file for the tiny folder `root` with its split and training counts."""
    torch.manual_seed(0)
    classes = sorted(TINY_CLASSES)
    model = build_model(arch, len(classes))
    parts = tiny_split(root)
    preprocessing = Preprocessing.for_img_size(img_size)
    preset = EvalPreset(preprocessing)
    if fitted:
        images = torch.stack([preset(open_rgb(root / rel)) for rel, _ in parts["train"]])
        labels = torch.tensor([classes.index(label) for _, label in parts["train"]])
        fit_head(model, arch, images, labels)
    counts = {label: sum(1 for _, lab in parts["train"] if lab == label) for label in classes}
    return save_weights(
        path,
        WeightsFile(
            arch=arch,
            classes=classes,
            state_dict=model.state_dict(),
            preprocessing=preprocessing,
            split={"root": str(root), "parts": parts},
            class_counts={"train": counts, "test": {label: 4 for label in classes}},
        ),
    )


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Three classes x 12 generated JPEGs (8 train, 4 test per class), shared by the session."""
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "images")


@pytest.fixture(scope="session")
def fitted_weights(tmp_path_factory, tiny_root) -> Path:
    """resnet18 at 32 px, head fitted on the tiny train split: classifies its test split right."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    return write_weights(path, tiny_root, arch="resnet18", img_size=32)


@pytest.fixture(scope="session")
def mobilenet_weights(tmp_path_factory, tiny_root) -> Path:
    """mobilenet_v3_small at 64 px, head fitted on the tiny train split (random backbone)."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v3_small.pth"
    return write_weights(path, tiny_root, arch="mobilenet_v3_small", img_size=64)


def load_cli():
    """utils/inference.py as a module (utils/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("inference_cli", ROOT / "utils" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cli():
    """utils/inference.py: `cli.main([...])` runs it in-process and returns the exit code."""
    return load_cli()
