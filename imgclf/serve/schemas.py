"""The shapes of the service's answers, for the OpenAPI page (/docs) and its fuzzing.

The answers themselves are built as plain dicts (the /predict results are `--predict --json`'s,
from imgclf.predict.prediction); these models document them, and schemathesis checks that every
answer matches its model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """Any refusal: one sentence saying what was wrong and what to do."""

    detail: str


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class")
    probability: float


class ImageLatency(BaseModel):
    read: float = Field(description="ms to fetch the image (URL inputs; 0 for uploads)")
    preprocess: float = Field(description="ms to check, decode and preprocess the image")
    model: float = Field(description="ms: this image's share of its batch's engine call")


class ImageAnswer(BaseModel):
    """What every per-image answer says: which input, and why it failed (if it did)."""

    input: str = Field(description="the uploaded file's name, or the URL")
    error: str | None = Field(None, description="the reason word and its explanation")
    reason: str | None = Field(None, description="the downloader's reason word, e.g. not_image")


class ImageResult(ImageAnswer):
    """One image: its top classes, or why it could not be classified."""

    top: list[ClassProbability] | None = None
    latency_ms: ImageLatency | None = None


class LatencySummary(BaseModel):
    median: float
    p95: float


class PredictResponse(BaseModel):
    """`utils/inference.py --predict --json`'s payload plus the model's identity."""

    arch: str
    weights_sha256: str
    model: str
    backend: str
    tta: bool = Field(description="each image averaged with its mirror")
    batch_size: int = Field(description="the service's maximum batch size")
    images: int
    failed: int
    seconds: float
    latency: dict[str, LatencySummary]
    results: list[ImageResult]


class Health(BaseModel):
    status: str


class Preprocessing(BaseModel):
    img_size: int
    resize_size: int
    mean: list[float]
    std: list[float]


class SearchIndex(BaseModel):
    path: str
    items: int
    dim: int
    kind: str
    prototype_classes: list[str]


class Info(BaseModel):
    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    weights: str
    weights_sha256: str
    backend: str
    tta: bool
    search: bool
    search_index: SearchIndex | None = None
    limits: dict[str, float | int | bool]
    server: dict[str, str]
    versions: dict[str, str]


class Neighbour(BaseModel):
    rank: int
    id: int
    score: float = Field(description="cosine similarity")
    label: str
    path: str


class PrototypeMatch(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class")
    score: float = Field(description="cosine similarity with the class prototype")


class SearchResult(ImageAnswer):
    """One image: its neighbours, nearest prototype and classifier class, or why it failed."""

    neighbours: list[Neighbour] | None = None
    prototype: PrototypeMatch | None = None
    classifier: ClassProbability | None = None


class SearchResponse(BaseModel):
    """Per image `utils/search.py query --json`'s answer, plus the model's identity."""

    arch: str
    weights_sha256: str
    index: str
    gallery_items: int
    k: int
    failed: int
    results: list[SearchResult]
