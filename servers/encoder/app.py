"""The encoder's HTTP API: OpenAI-compatible embeddings, models, health and Prometheus metrics.

``create_app(model, settings)`` builds the FastAPI app around a loaded model, so tests can
drive it in-process through ``httpx.ASGITransport``. Every error, the framework's own (404,
405) and unexpected ones (500) included, is OpenAI-shaped:
``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status. The request and
answer models are in ``servers.encoder.api``; the handler reads the body itself, in chunks,
so that the size limit holds without a Content-Length, then validates it with the request
model, whose schema ``/openapi.json`` shows.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from servers.encoder.api import (
    ApiError,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Limits,
    error_response,
    error_responses,
    request_error,
    request_model,
)
from servers.encoder.batcher import BatchStats, MicroBatcher, QueueFull
from servers.encoder.model import CUDA_ALLOCATOR_STATS, EncoderModel, cuda_allocator_stats

MiB = 1024 * 1024


@dataclass(frozen=True)
class EncoderSettings:
    served_name: str
    max_batch: int = 64
    batch_window_ms: float = 5.0
    max_queue: int = 4096
    max_items: int = 2048
    max_body_bytes: int = 16 * MiB
    api_key: str | None = None
    memory_share: float | None = None


class _CudaAllocator:
    """Prometheus collector of the caching allocator's counts at scrape time
    (``encoder_cuda_<stat>``), on a CUDA device only."""

    def __init__(self, device: str) -> None:
        self.device = device

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = cuda_allocator_stats(self.device) or {}
        for key, value in stats.items():
            name = "encoder_cuda_" + key.replace(".all.current", "").replace(".", "_")
            yield GaugeMetricFamily(name, CUDA_ALLOCATOR_STATS[key], value=value)


class _Metrics:
    def __init__(self, max_batch: int, device: str = "cpu") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if device.startswith("cuda"):
            r.register(_CudaAllocator(device))
        self.request_latency = Histogram(
            "encoder_request_duration_seconds",
            "Time from a request's arrival to its answer",
            ["status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch})
        self.batch_size = Histogram(
            "encoder_batch_size", "Items per forward pass", buckets=sizes, registry=r
        )
        self.batch_duration = Histogram(
            "encoder_batch_duration_seconds",
            "Forward pass time of a batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.queue_wait = Histogram(
            "encoder_queue_wait_seconds",
            "Wait of a batch's oldest item before its forward pass",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self.queue_depth = Gauge("encoder_queue_depth", "Items waiting for a batch", registry=r)
        self.items = Counter("encoder_items_embedded", "Items embedded", registry=r)
        self.tokens = Counter("encoder_tokens_embedded", "Tokens embedded (no padding)", registry=r)
        self.requests = Counter("encoder_requests", "Requests answered", ["status"], registry=r)

    def on_batch(self, s: BatchStats) -> None:
        self.batch_size.observe(s.size)
        self.batch_duration.observe(s.compute_s)
        self.queue_wait.observe(s.queue_wait_s)
        self.items.inc(s.size)
        self.tokens.inc(s.tokens)


def create_app(model: EncoderModel, settings: EncoderSettings) -> FastAPI:
    """The FastAPI app of one encoder tenant around a loaded model."""
    service = _Service(model, settings)
    app = FastAPI(
        title="cotenant encoder",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=service.lifespan,
    )
    app.state.batcher = service.batcher
    app.state.metrics = service.metrics
    app.state.model = model
    app.state.settings = settings
    _add_error_handlers(app)
    _add_routes(app, service)
    secured = settings.api_key is not None
    app.openapi = lambda: _openapi(app, service.request_model, secured)  # type: ignore[method-assign]
    return app


# ---- errors: always OpenAI-shaped ------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        # keep the framework's headers (405's Allow)
        return error_response(exc.status_code, str(exc.detail), kind, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, str(exc), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises it after this answer, so the server's log has the traceback
        return error_response(
            500, f"internal error: {type(exc).__name__}", "server_error", code="internal_error"
        )


# ---- routes and their schema -----------------------------------------------------------------


def _add_routes(app: FastAPI, service: _Service) -> None:
    secured = service.settings.api_key is not None
    security: dict[str, Any] = {"security": [{"bearer": []}]} if secured else {}
    keyed = (401,) if secured else ()
    app.add_api_route(
        "/health", service.health, methods=["GET"], responses={200: {"description": "Serving"}}
    )
    app.add_api_route(
        "/metrics",
        service.prometheus,
        methods=["GET"],
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text format"}},
    )
    app.add_api_route(
        "/v1/models",
        service.models,
        methods=["GET"],
        responses=error_responses(*keyed),
        openapi_extra=security,
    )
    app.add_api_route(
        "/v1/embeddings",
        service.embeddings,
        methods=["POST"],
        responses={
            200: {"model": EmbeddingsResponse, "description": "Embeddings"},
            **error_responses(400, 404, 413, 503, *keyed),
        },
        openapi_extra=security,
    )


def _openapi(app: FastAPI, body: type[EmbeddingsRequest], secured: bool) -> dict[str, Any]:
    """FastAPI's schema of the routes, with the request body the handler validates (it reads
    the body itself, so FastAPI does not see the model) and, with a key, the bearer scheme."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {})
        request = body.model_json_schema(ref_template="#/components/schemas/{model}")
        components.setdefault("schemas", {}).update(request.pop("$defs", {}))
        content = {"application/json": {"schema": request}}
        schema["paths"]["/v1/embeddings"]["post"]["requestBody"] = {
            "required": True,
            "content": content,
        }
        if secured:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
    return app.openapi_schema


# ---- the service behind the routes -----------------------------------------------------------


class _Service:
    """One loaded model behind the routes: its batcher, tokenizer thread, metrics, limits."""

    def __init__(self, model: EncoderModel, settings: EncoderSettings) -> None:
        self.model = model
        self.settings = settings
        self.metrics = _Metrics(settings.max_batch, model.device)
        self.batcher = MicroBatcher(
            model.embed,
            max_batch=settings.max_batch,
            window_s=settings.batch_window_ms / 1000.0,
            max_queue=settings.max_queue,
            on_batch=self.metrics.on_batch,
            on_queue=self.metrics.queue_depth.set,
        )
        self.tokenizer_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="encoder-tokenizer"
        )
        self.limits = Limits(
            served_name=settings.served_name,
            dim=model.dim,
            vocab_size=model.vocab_size,
            max_seq_length=model.max_seq_length,
            max_items=settings.max_items,
        )
        self.request_model = request_model(self.limits)
        self.created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        yield
        await self.batcher.aclose()
        self.tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    async def health(self) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(self) -> Response:
        self.metrics.queue_depth.set(self.batcher.depth)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        entry = {
            "id": self.settings.served_name,
            "object": "model",
            "created": self.created,
            "owned_by": "cotenant",
            "max_model_len": self.model.max_seq_length,
            "embedding_dimension": self.model.dim,
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def embeddings(self, request: Request) -> Response:
        t0 = time.monotonic()
        status = "error"
        try:
            resp = await self._embeddings(request)
            status = str(resp.status_code)
            return resp
        except ApiError as e:
            status = str(e.status)
            raise
        finally:
            self.metrics.request_latency.labels(status=status).observe(time.monotonic() - t0)
            self.metrics.requests.labels(status=status).inc()

    async def _embeddings(self, request: Request) -> Response:
        self._authorize(request)
        body = self._validate(await self._read_body(request))
        items, form = body.items()
        if form == "text":
            loop = asyncio.get_running_loop()
            texts = [str(x) for x in items]
            seqs = await loop.run_in_executor(self.tokenizer_pool, self.model.tokenize, texts)
        else:
            seqs = [list(x) for x in items if isinstance(x, list)]
        most = self.model.max_seq_length
        for i, s in enumerate(seqs):
            if len(s) > most:
                raise ApiError(
                    400,
                    f"input[{i}] has {len(s)} tokens; this model takes at most {most}",
                    param="input",
                    code="context_length_exceeded",
                )
        try:
            emb = await self.batcher.submit(seqs)
        except QueueFull as e:
            raise ApiError(
                503, f"server busy: {e}", type="server_error", code="queue_full"
            ) from None
        tokens = sum(len(s) for s in seqs)
        fmt = body.encoding_format or "float"
        return _embedding_response(emb, fmt, self.settings.served_name, tokens)

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong API key (Authorization: Bearer ...)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ApiError(400, "bad Content-Length header") from None
            if size > limit:
                raise ApiError(
                    413,
                    f"request body of {size} bytes exceeds the limit of {limit} bytes",
                    code="request_too_large",
                )
        chunks: list[bytes] = []
        got = 0
        async for chunk in request.stream():
            got += len(chunk)
            if got > limit:
                raise ApiError(
                    413,
                    f"request body exceeds the limit of {limit} bytes",
                    code="request_too_large",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _validate(self, raw: bytes) -> EmbeddingsRequest:
        """The body as the request model, or the ApiError to answer."""
        try:
            body = json.loads(raw)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers > 4300 digits
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        except RecursionError:
            raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
        try:
            return self.request_model.model_validate(body)
        except ValidationError as e:
            raise request_error(e, self.limits) from None


def _embedding_response(emb: np.ndarray, fmt: str, name: str, tokens: int) -> Response:
    if fmt == "base64":
        le = emb.astype("<f4", copy=False)
        values: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in le]
    else:
        values = emb.tolist()
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)],
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")
