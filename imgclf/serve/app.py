"""The FastAPI app: routes, OpenAPI page (/docs), and the middleware around them.

Endpoints: POST /predict, POST /search, GET /health/live, /health/ready, /metrics, /info.
Every refusal is JSON `{"detail": "<one sentence>"}`; an unexpected failure is a 500 with a
sentence too (the traceback goes to the log, never into a response).
"""

from __future__ import annotations

import json
import logging
import platform
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from imgclf import __version__
from imgclf.model.predictor import Predictor
from imgclf.search.store import Gallery
from imgclf.serve.access_log import AccessLog
from imgclf.serve.limits import RequestLimits
from imgclf.serve.multipart import MultipartError, TooManyFiles, parse_multipart
from imgclf.serve.schemas import Health, Info, PredictResponse, Problem, SearchResponse
from imgclf.serve.server import loop_and_parser
from imgclf.serve.service import ImageInput, Service
from imgclf.serve.settings import RETRY_AFTER_S, ServiceSettings

logger = logging.getLogger("imgclf.serve")
ENDPOINTS = frozenset(
    {"/predict", "/search", "/health/live", "/health/ready", "/metrics", "/info", "/docs"}
)
FILE_FIELD = "file"
MAX_TOPK = 1000
SEARCH_OFF = (
    "POST /search needs a search index: build one with python utils/search.py build "
    "--weights WEIGHTS --index index/, then start the service with --index index/"
)


def _problem(description: str) -> dict:
    return {"description": description, "model": Problem}


def _refused_or_failed(description: str, answer: type = PredictResponse) -> dict:
    """A refusal (Problem), or the full `answer` when every image of it failed."""
    return {"description": description, "model": Problem | answer}


WORK_ERRORS = {
    413: _problem("request body larger than --max-body-bytes"),
    503: _problem(
        "not ready (warming up, shutting down, an inference process down) or queue full; "
        "see Retry-After"
    ),
    504: _problem("the request exceeded its deadline (--deadline-ms or timeout_ms)"),
}
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    FILE_FIELD: {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "format": "binary"},
                        "description": "one part per image: curl -F file=@a.jpg -F file=@b.jpg",
                    }
                },
                "required": [FILE_FIELD],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "urls": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string"},
                        "description": "http(s) image URLs (only with --allow-urls)",
                    }
                },
                "required": ["urls"],
            }
        },
    },
}


class RequestProblem(Exception):
    """A refusal with a status and one sentence, raised by the request parsing."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def create_app(
    settings: ServiceSettings, predictor: Predictor, gallery: Gallery | None = None
) -> FastAPI:
    """The app serving `predictor` (and /search over `gallery`, verified against it) with
    `settings`; the model and the index are loaded by the caller."""
    service = Service(settings, predictor, gallery)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="imgclf",
        version=__version__,
        summary="Image classification (and similar-image search) over imgclf weights.",
        lifespan=lifespan,
    )
    app.state.service = service

    def deadline_query() -> Any:
        """The `timeout_ms` query parameter of /predict and /search, at most --deadline-ms."""
        return Query(
            None,
            ge=1,
            le=settings.deadline_ms,
            description="this request's deadline (default and maximum: --deadline-ms)",
        )

    @app.exception_handler(RequestProblem)
    async def refused(_request: Request, problem: RequestProblem) -> JSONResponse:
        return JSONResponse({"detail": problem.detail}, problem.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_sentence(error)}, 422)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        logger.exception(f"{request.method} {request.url.path} failed")
        detail = (
            f"the service failed on this request ({type(error).__name__}); "
            "the error is in the service's log"
        )
        return JSONResponse({"detail": detail}, 500)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        openapi_extra={"requestBody": PREDICT_BODY},
        responses={
            403: _problem("URL inputs are off (start with --allow-urls)"),
            400: _problem("a multipart body that cannot be parsed"),
            415: _refused_or_failed("not multipart or JSON; or no image is in a format we read"),
            422: _refused_or_failed("no image or too many; or no image could be classified"),
            **WORK_ERRORS,
        },
    )
    async def predict(
        request: Request,
        topk: int = Query(settings.topk, ge=1, le=MAX_TOPK, description="classes per image"),
        timeout_ms: int | None = deadline_query(),
    ) -> JSONResponse:
        """Top-k classes of each image, uploaded as multipart `file` parts (or, with
        --allow-urls, a JSON body `{"urls": [...]}`). An image that cannot be classified is a
        result with its `error` and `reason`; the status is 200 unless none could be."""
        del timeout_ms  # enforced by RequestLimits before the body is read
        with service.receiving() as arriving:
            images = await _request_images(request, service)
            answer = await service.predict(images, topk, arriving)
        return JSONResponse(answer.payload, answer.status)

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses={
            404: _problem("the service was started without --index"),
            403: _problem("URL inputs are off (start with --allow-urls)"),
            400: _problem("a multipart body that cannot be parsed"),
            415: _refused_or_failed(
                "not multipart or JSON; or no image is in a format we read", SearchResponse
            ),
            422: _refused_or_failed(
                "no image or too many, k out of range; or no image could be embedded",
                SearchResponse,
            ),
            **WORK_ERRORS,
        },
        openapi_extra={"requestBody": PREDICT_BODY},
    )
    async def search(
        request: Request,
        k: int = Query(5, ge=1, le=MAX_TOPK, description="similar gallery images per image"),
        timeout_ms: int | None = deadline_query(),
    ) -> JSONResponse:
        """The k most similar gallery images (id, path, label, cosine score) and the nearest
        class prototype of each image, as `utils/search.py query --json` answers; only with
        --index. Inputs and per-image errors as for /predict."""
        del timeout_ms  # enforced by RequestLimits before the body is read
        if service.gallery is None:
            return JSONResponse({"detail": SEARCH_OFF}, 404)
        with service.receiving(search=True) as arriving:
            images = await _request_images(request, service)
            answer = await service.search(images, k, arriving)
        return JSONResponse(answer.payload, answer.status)

    @app.get("/health/live", response_model=Health)
    async def live() -> dict:
        """200 while the process answers."""
        return {"status": "alive"}

    @app.get(
        "/health/ready",
        response_model=Health,
        responses={
            503: _problem("warming up, shutting down, or an inference process cannot be replaced")
        },
    )
    async def ready() -> JSONResponse:
        """200 when the model is loaded and warmed up; 503 before that, while draining and
        while a dead inference process cannot be replaced."""
        if service.state.ready:
            return JSONResponse({"status": "ready"})
        detail = service.state.not_ready_reason()
        return JSONResponse({"detail": detail}, 503, {"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/info", response_model=Info)
    async def info() -> dict:
        """The model, its preprocessing, the limits and the versions serving it."""
        return _info(service)

    app.add_middleware(
        RequestLimits, settings=settings, state=service.state, metrics=service.metrics
    )
    app.add_middleware(
        AccessLog, metrics=service.metrics, endpoints=ENDPOINTS, json_lines=settings.log_json
    )
    return app


async def _request_images(request: Request, service: Service) -> list[ImageInput]:
    """The images of a /predict request; raises RequestProblem for a body we cannot use."""
    settings = service.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        images = await _uploaded_images(request, settings.max_images)
    elif content_type == "application/json":
        if not service.urls_allowed:
            raise RequestProblem(
                403,
                "URL inputs are off; upload the images as multipart file parts "
                "(curl -F file=@photo.jpg), or start the service with --allow-urls",
            )
        urls = _json_urls(await request.body(), settings.max_images)
        return await service.fetch(urls)
    else:
        raise RequestProblem(
            415,
            f"the body is {content_type or 'untyped'}; send images as multipart/form-data "
            f"parts named {FILE_FIELD!r} (curl -F file=@photo.jpg) or a JSON body "
            '{"urls": [...]} (with --allow-urls)',
        )
    return images


async def _uploaded_images(request: Request, max_images: int) -> list[ImageInput]:
    # The body is capped by RequestLimits while it is read (413), so it fits in memory.
    body = await request.body()
    try:
        # Plain fields beyond a few are noise; files beyond the cap are answered below.
        parts = parse_multipart(
            request.headers["content-type"], body, max_files=max_images + 1, max_fields=16
        )
    except TooManyFiles as error:
        raise RequestProblem(422, _too_many(None, max_images)) from error
    except MultipartError as error:  # malformed multipart: the parser's message names it
        raise RequestProblem(
            400,
            f"the multipart body cannot be read ({error}); send it as curl -F file=@photo.jpg "
            "does",
        ) from error
    files = [part for part in parts if part.name == FILE_FIELD]
    if not files:
        raise RequestProblem(
            422,
            f"no image in the request: send each image as a multipart part named "
            f"{FILE_FIELD!r} (curl -F file=@photo.jpg)",
        )
    if len(files) > max_images:
        raise RequestProblem(422, _too_many(len(files), max_images))
    images = []
    for number, part in enumerate(files, 1):
        if part.filename is not None:
            images.append(ImageInput(part.filename or f"file {number}", part.data))
        else:  # a plain form value: its bytes are the "image", which then fails as not_image
            images.append(ImageInput(f"field {number}", part.data))
    return images


def _too_many(count: int | None, max_images: int) -> str:
    got = f"{count} images" if count is not None else "more images"
    return (
        f"{got} in one request, at most {max_images} are taken (--max-images); "
        "split them over several requests"
    )


def _json_urls(body: bytes, max_images: int) -> list[str]:
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise RequestProblem(422, f"the JSON body cannot be parsed ({error})") from error
    urls = payload.get("urls") if isinstance(payload, dict) else None
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise RequestProblem(
            422, 'the JSON body must be {"urls": ["https://...", ...]}: a list of strings'
        )
    if not urls:
        raise RequestProblem(422, 'no image in the request: "urls" is empty')
    if len(urls) > max_images:
        raise RequestProblem(422, _too_many(len(urls), max_images))
    return urls


def validation_sentence(error: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one sentence, e.g. `topk: Input should be
    greater than or equal to 1 (got '0')`."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
        got = f" (got {problem['input']!r})" if "input" in problem else ""
        parts.append(f"{where}: {problem.get('msg', 'invalid')}{got}")
    return "; ".join(parts) + "; see /docs for the parameters"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _search_index(service: Service) -> dict | None:
    gallery = service.gallery
    if gallery is None:
        return None
    return {
        "path": service.settings.index,
        "items": len(gallery.items),
        "dim": gallery.dim,
        "kind": gallery.meta.get("index", {}).get("kind", "exact"),
        "prototype_classes": gallery.prototype_classes,
    }


def _info(service: Service) -> dict:
    spec, settings = service.predictor.spec, service.settings
    loop, http = loop_and_parser(settings.loop, settings.http)
    return {
        "arch": spec.arch,
        "classes": list(spec.classes),
        "preprocessing": spec.preprocessing.to_dict(),
        "weights": service.predictor.source,
        "weights_sha256": service.weights_sha256,
        "backend": service.predictor.backend,
        "tta": service.predictor.tta,
        "search": service.gallery is not None,
        "search_index": _search_index(service),
        "limits": {
            "max_batch_size": settings.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "max_queue": settings.max_queue,
            "max_body_bytes": settings.max_body_bytes,
            "max_images": settings.max_images,
            "deadline_ms": settings.deadline_ms,
            "allow_urls": settings.allow_urls,
        },
        "server": {"loop": loop, "http": http},
        "versions": {
            "imgclf": __version__,
            "python": platform.python_version(),
            **{
                name: _package_version(name)
                for name in (
                    "torch",
                    "torchvision",
                    "onnxruntime",
                    "fastapi",
                    "uvicorn",
                    "uvloop",
                    "httptools",
                )
            },
        },
    }
