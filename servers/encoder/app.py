"""The encoder's HTTP API: OpenAI-compatible embeddings, models, health and Prometheus metrics.

``create_app(model, settings)`` builds the FastAPI app around a loaded model, so tests can
drive it in-process through ``httpx.ASGITransport``. Every error, the framework's own (404,
405) and unexpected ones (500) included, is OpenAI-shaped:
``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status. The OpenAPI
schema at ``/openapi.json`` describes the request body that the handler checks by hand
(the body is read in chunks, so that the size limit holds without a Content-Length).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping
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
from starlette.exceptions import HTTPException as StarletteHTTPException

from servers.encoder.batcher import BatchStats, MicroBatcher, QueueFull
from servers.encoder.model import EncoderModel

MiB = 1024 * 1024
_ALLOWED_KEYS = {"input", "model", "encoding_format", "user", "dimensions"}


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


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.message, self.type, self.param, self.code, headers=self.headers
        )


def error_response(
    status: int,
    message: str,
    type: str,
    param: str | None = None,
    code: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---- the OpenAPI description of what the handlers check by hand ----------------------------

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "Invalid request",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Request body too large",
        503: "Queue full",
    }
    return {
        s: {
            "description": what[s],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for s in statuses
    }


def _embeddings_request_schema(model: EncoderModel, settings: EncoderSettings) -> dict[str, Any]:
    ids = {
        "type": "array",
        "minItems": 1,
        "maxItems": model.max_seq_length,
        "items": {"type": "integer", "minimum": 0, "maximum": model.vocab_size - 1},
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["input"],
        "properties": {
            "input": {
                "description": "A string, strings, token ids, or lists of token ids; at most "
                f"{model.max_seq_length} tokens each",
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": settings.max_items,
                        "items": {"type": "string", "minLength": 1},
                    },
                    ids,
                    {"type": "array", "minItems": 1, "maxItems": settings.max_items, "items": ids},
                ],
            },
            "model": {"type": ["string", "null"], "enum": [settings.served_name, None]},
            "encoding_format": {"type": ["string", "null"], "enum": ["float", "base64", None]},
            "dimensions": {"type": ["integer", "null"], "enum": [model.dim, None]},
            "user": {"type": ["string", "null"]},
        },
    }


_EMBEDDINGS_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "object": {"const": "embedding"},
                    "index": {"type": "integer"},
                    "embedding": {
                        "anyOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string"},
                        ]
                    },
                },
            },
        },
        "model": {"type": "string"},
        "usage": {
            "type": "object",
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}


class _Metrics:
    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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


def _token_id(t: Any) -> int | None:
    """An int, or a float without a fraction (JSON Schema's integers include ``3.0``)."""
    if type(t) is int:
        return t
    if type(t) is float and t.is_integer():
        return int(t)
    return None


def _check_ids(seq: list[Any], vocab: int, where: str) -> list[int]:
    if not seq:
        raise ApiError(400, f"{where} is an empty list of token ids", param="input")
    out: list[int] = []
    for t in seq:
        i = _token_id(t)
        if i is None:
            raise ApiError(400, f"{where}: token ids must be integers", param="input")
        if not 0 <= i < vocab:
            raise ApiError(
                400,
                f"{where}: token id {i} is outside the vocabulary (0..{vocab - 1})",
                param="input",
            )
        out.append(i)
    return out


def _check_text(s: str, where: str) -> None:
    """JSON may escape a lone surrogate (``"\\ud800"``), which no tokenizer can encode."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            400,
            f"{where} is not valid Unicode text (a lone surrogate at character {e.start})",
            param="input",
        ) from None


def parse_input(value: Any, vocab: int) -> tuple[list[str | list[int]], str]:
    """Normalise ``input`` to a list of strings or token-id lists; return it and its form
    (``text``, ``ids``). The four OpenAI forms: a string, a list of strings, a list of token
    ids, a list of token-id lists."""
    if isinstance(value, str):
        if not value:
            raise ApiError(400, "input is an empty string", param="input")
        _check_text(value, "input")
        return [value], "text"
    if not isinstance(value, list):
        raise ApiError(
            400,
            "input must be a string, a list of strings, a list of token ids or a list of "
            f"token-id lists, not {type(value).__name__}",
            param="input",
        )
    if not value:
        raise ApiError(400, "input is an empty list", param="input")
    first = value[0]
    if isinstance(first, str):
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise ApiError(400, f"input[{i}]: expected a string like input[0]", param="input")
            if not v:
                raise ApiError(400, f"input[{i}] is an empty string", param="input")
            _check_text(v, f"input[{i}]")
        return list(value), "text"
    if _token_id(first) is not None:
        return [_check_ids(value, vocab, "input")], "ids"
    if isinstance(first, list):
        out: list[str | list[int]] = []
        for i, v in enumerate(value):
            if not isinstance(v, list):
                raise ApiError(400, f"input[{i}]: expected a list of token ids", param="input")
            out.append(_check_ids(v, vocab, f"input[{i}]"))
        return out, "ids"
    raise ApiError(
        400,
        f"input[0] must be a string, a token id or a list of token ids, not {type(first).__name__}",
        param="input",
    )


def create_app(model: EncoderModel, settings: EncoderSettings) -> FastAPI:
    """The FastAPI app of one encoder tenant around a loaded model."""
    metrics = _Metrics(settings.max_batch)
    batcher = MicroBatcher(
        model.embed,
        max_batch=settings.max_batch,
        window_s=settings.batch_window_ms / 1000.0,
        max_queue=settings.max_queue,
        on_batch=metrics.on_batch,
        on_queue=metrics.queue_depth.set,
    )
    tokenizer_pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="encoder-tokenizer"
    )
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.aclose()
        tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="cotenant encoder",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.model = model
    app.state.settings = settings

    # ---- errors: always OpenAI-shaped ----

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

    def _authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong API key (Authorization: Bearer ...)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def _read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
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

    # ---- routes ----

    secured = settings.api_key is not None
    security: dict[str, Any] = {"security": [{"bearer": []}]} if secured else {}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
            if secured:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health", responses={200: {"description": "Serving"}})
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text format"}},
    )
    async def prometheus() -> Response:
        metrics.queue_depth.set(batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=_errors(401) if secured else {}, openapi_extra=security)
    async def models(request: Request) -> Response:
        _authorize(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": settings.served_name,
                        "object": "model",
                        "created": created,
                        "owned_by": "cotenant",
                        "max_model_len": model.max_seq_length,
                        "embedding_dimension": model.dim,
                    }
                ],
            }
        )

    @app.post(
        "/v1/embeddings",
        responses={
            200: {
                "description": "Embeddings",
                "content": {"application/json": {"schema": _EMBEDDINGS_RESPONSE}},
            },
            **_errors(400, 404, 413, 503, *((401,) if secured else ())),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _embeddings_request_schema(model, settings)}
                },
            },
            **security,
        },
    )
    async def embeddings(request: Request) -> Response:
        t0 = time.monotonic()
        status = "error"
        try:
            resp = await _embeddings(request)
            status = str(resp.status_code)
            return resp
        except ApiError as e:
            status = str(e.status)
            raise
        finally:
            metrics.request_latency.labels(status=status).observe(time.monotonic() - t0)
            metrics.requests.labels(status=status).inc()

    async def _embeddings(request: Request) -> Response:
        _authorize(request)
        raw = await _read_body(request)
        try:
            body = json.loads(raw)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers > 4300 digits
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        except RecursionError:
            raise ApiError(400, "request body is not valid JSON: nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        unknown = sorted(set(body) - _ALLOWED_KEYS)
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
        for key in ("model", "encoding_format", "user"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(
                    400, f"{key} must be a string, not {type(body[key]).__name__}", param=key
                )
        name = body.get("model")
        if name is not None and name != settings.served_name:
            raise ApiError(
                404,
                f"The model `{name}` does not exist. This server serves `{settings.served_name}`.",
                param="model",
                code="model_not_found",
            )
        fmt = body.get("encoding_format")
        fmt = "float" if fmt is None else fmt
        if fmt not in ("float", "base64"):
            raise ApiError(
                400,
                f"encoding_format must be 'float' or 'base64', not {fmt!r}",
                param="encoding_format",
            )
        dims = body.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or dims != model.dim):
            raise ApiError(
                400,
                f"this model has {model.dim} dimensions and cannot return {dims!r}",
                param="dimensions",
            )
        if "input" not in body:
            raise ApiError(400, "missing field: input", param="input")
        items, form = parse_input(body["input"], model.vocab_size)
        if len(items) > settings.max_items:
            raise ApiError(
                400,
                f"{len(items)} inputs; at most {settings.max_items} per request",
                param="input",
                code="too_many_inputs",
            )
        if form == "text":
            loop = asyncio.get_running_loop()
            texts = [str(x) for x in items]
            seqs = await loop.run_in_executor(tokenizer_pool, model.tokenize, texts)
        else:
            seqs = [list(x) for x in items if isinstance(x, list)]
        for i, s in enumerate(seqs):
            if len(s) > model.max_seq_length:
                raise ApiError(
                    400,
                    f"input[{i}] has {len(s)} tokens; this model takes at most "
                    f"{model.max_seq_length}",
                    param="input",
                    code="context_length_exceeded",
                )
        try:
            emb = await batcher.submit(seqs)
        except QueueFull as e:
            raise ApiError(
                503, f"server busy: {e}", type="server_error", code="queue_full"
            ) from None
        tokens = sum(len(s) for s in seqs)
        return _embedding_response(emb, fmt, settings.served_name, tokens)

    return app


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
