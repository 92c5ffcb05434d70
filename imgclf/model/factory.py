"""One factory for every supported architecture: `build_model(arch, num_classes, pretrained)`."""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models

from imgclf.errors import InputError
from imgclf.model.tensorfile import load_tensor_file

# arch name → (torchvision builder, ImageNet weights enum)
ARCHITECTURES = {
    "mobilenet_v3_small": (
        models.mobilenet_v3_small,
        models.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
    ),
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
}


def head(model: nn.Module, arch: str) -> nn.Linear:
    """The classification layer: `classifier[3]` for mobilenet_v3_small, `fc` for resnet18."""
    return model.classifier[3] if arch == "mobilenet_v3_small" else model.fc


def _set_head(model: nn.Module, arch: str, layer: nn.Module) -> None:
    if arch == "mobilenet_v3_small":
        model.classifier[3] = layer
    else:
        model.fc = layer


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    _set_head(model, arch, nn.Linear(head(model, arch).in_features, num_classes))


class WithEmbedding(nn.Module):
    """A classifier answering (logits, embedding): the embedding is what its head reads, the
    penultimate features (1,024-d for mobilenet_v3_small, 512-d for resnet18).

    Works on a copy: `model` itself stays a one-output classifier.
    """

    def __init__(self, model: nn.Module, arch: str) -> None:
        super().__init__()
        body = copy.deepcopy(model)
        self.head = head(body, arch)
        _set_head(body, arch, nn.Identity())
        self.body = body

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.body(images)
        return self.head(embedding), embedding


def with_embedding(model: nn.Module, arch: str) -> WithEmbedding:
    """`model` (built by build_model) as a two-output module; one already wrapped as is."""
    return model if isinstance(model, WithEmbedding) else WithEmbedding(model, arch)


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    weights = ARCHITECTURES[arch][1]
    try:
        return weights.get_state_dict(progress=True)
    except (URLError, OSError) as error:
        raise InputError(
            f"Could not download the ImageNet weights for {arch} from {weights.url} ({error}); "
            f"download that file on a machine with internet and set model.pretrained to its path."
        ) from error


def _local_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise InputError(
            f"model.pretrained is {path!r}, which is neither 'imagenet' nor an existing file; "
            "give a path to a torchvision state dict or 'imagenet'."
        )
    state = load_tensor_file(
        path, "PyTorch state dict", "point model.pretrained at a torchvision state dict."
    )
    # Accept our own weights files too: their state dict sits under "state_dict".
    return state.get("state_dict", state) if isinstance(state, dict) else state


def build_model(arch: str, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Build `arch` with a fresh `num_classes`-way head.

    pretrained: None / "none" for random initialisation, "imagenet" for torchvision's ImageNet
    weights (downloaded when online), or a path to a local state dict. Pretrained head weights
    whose shape does not fit `num_classes` are dropped; the new head starts from scratch.
    """
    if arch not in ARCHITECTURES:
        raise InputError(
            f"Unknown architecture {arch!r}; "
            f"model.arch must be one of: {', '.join(ARCHITECTURES)}."
        )
    if num_classes < 2:
        raise InputError(f"A classifier needs at least two classes, got {num_classes}.")
    builder = ARCHITECTURES[arch][0]
    model = builder(weights=None)
    if pretrained not in (None, "", "none", False):
        state = (
            _imagenet_state_dict(arch)
            if pretrained == "imagenet"
            else _local_state_dict(pretrained)
        )
        own = model.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in fitting]
        head_prefix = "classifier.3." if arch == "mobilenet_v3_small" else "fc."
        if any(not k.startswith(head_prefix) for k in missing):
            raise InputError(
                f"The pretrained weights {pretrained!r} do not fit {arch} "
                f"(e.g. no tensor for {missing[0]!r}); point model.pretrained at {arch} weights."
            )
        model.load_state_dict(fitting, strict=False)
    _replace_head(model, arch, num_classes)
    return model


def freeze_backbone(model: nn.Module, arch: str, frozen: bool = True) -> nn.Module:
    """Freeze (or unfreeze) every parameter but the head's; returns `model`.

    Used by the head-only first stage when starting from pretrained weights: the new random
    head learns first, so its large early gradients don't wreck the pretrained features.
    """
    for parameter in model.parameters():
        parameter.requires_grad = not frozen
    for parameter in head(model, arch).parameters():
        parameter.requires_grad = True
    return model


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> nn.Module:
    """Set the running-statistics momentum of every BatchNorm layer; returns `model`.

    torchvision's mobilenet_v3 uses 0.01, tuned for long ImageNet runs. Trained from scratch for
    a few hundred steps, its eval-mode statistics then lag far behind the weights and the
    validation predictions collapse to one class; 0.1 (PyTorch's default) tracks them.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
    return model
