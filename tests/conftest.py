"""Fixtures shared by the whole suite: tiny, real, generated image folders."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "data" / "demo" / "sign_language_digits"

# Each class is a shape a small CNN separates in one epoch: distinct colour and geometry.
TINY_CLASSES = {"circle": (220, 40, 40), "square": (40, 180, 40), "triangle": (40, 60, 220)}


def draw_shape(label: str, size: int, rng: random.Random) -> Image.Image:
    """A `size`-pixel RGB image of the class `label` with random position, scale and noise."""
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.25, 0.4) * size
    cx, cy = (rng.uniform(0.4, 0.6) * size for _ in range(2))
    colour = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in TINY_CLASSES[label])
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if label == "circle":
        draw.ellipse(box, fill=colour)
    elif label == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], colour
        )
    return image


def make_image_folder(root: Path, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """Write `<root>/<label>/<n>.jpg` for every tiny class; returns `root`."""
    rng = random.Random(seed)
    for label in TINY_CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            draw_shape(label, size, rng).save(root / label / f"{index:03d}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_image_folder(tmp_path: Path) -> Path:
    """Three classes × 12 JPEGs of 40 px in `<tmp>/images/<label>/`."""
    return make_image_folder(tmp_path / "images")
