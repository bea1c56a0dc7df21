"""The encoder's HTTP API as pydantic models: the request it takes, the answers it gives, and
how a request that does not fit becomes one OpenAI-shaped error.

``request_model(limits)`` builds the ``POST /v1/embeddings`` body of one server: its served
name, the model's dimension and vocabulary, and the item and token limits are part of the
model, so the validation and the OpenAPI schema (``/openapi.json``) are one and the same.
``request_error`` turns pydantic's errors into the one ``ApiError`` the client sees, with
the message, ``param`` and ``code`` OpenAI's API would give, in the order the checks run:
unknown fields, the types of ``model``/``encoding_format``/``user``, the model's name (404),
``encoding_format``, ``dimensions``, a missing ``input``, then ``input`` itself (its items
in order, then their number, then their lengths).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
)
from pydantic_core import ErrorDetails

Form = Literal["text", "ids"]

# ---- errors --------------------------------------------------------------------------------


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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


_WHAT = {
    400: "Invalid request",
    401: "Missing or wrong API key",
    404: "Unknown model",
    413: "Request body too large",
    503: "Queue full",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses (FastAPI takes the schema from
    ``Error``)."""
    return {s: {"model": Error, "description": _WHAT[s]} for s in statuses}


# ---- answers -------------------------------------------------------------------------------


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


# ---- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one server accepts: the part of the request model that is not OpenAI's."""

    served_name: str
    dim: int
    vocab_size: int
    max_seq_length: int
    max_items: int


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request (strict JSON types, no unknown fields); ``request_model``
    narrows ``input``, ``model`` and ``dimensions`` to one server."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None

    def items(self) -> tuple[list[str] | list[list[int]], Form]:
        """``input`` as a list of strings or of token-id lists, and which of the two."""
        value = self.input
        if isinstance(value, str):
            return [value], "text"
        if isinstance(value[0], str):
            return list(value), "text"
        if isinstance(value[0], int):
            return [list(value)], "ids"
        return [list(v) for v in value], "ids"


def _token_id(t: Any) -> int | None:
    """An int, or a float without a fraction (JSON Schema's integers include ``3.0``)."""
    if type(t) is int:
        return t
    if type(t) is float and t.is_integer():
        return int(t)
    return None


def _integral(t: Any) -> Any:
    i = _token_id(t)
    return t if i is None else i


def _form(value: Any) -> str | None:
    """Which of OpenAI's four ``input`` forms a value takes, told by its first item: a
    string, strings, token ids, lists of token ids (None: none of them)."""
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        return None
    if not value or isinstance(value[0], str):
        return "texts"
    if _token_id(value[0]) is not None:
        return "ids"
    if isinstance(value[0], list):
        return "batch"
    return None


def request_model(limits: Limits) -> type[EmbeddingsRequest]:
    """The body model of ``POST /v1/embeddings`` on one server."""
    token_id: Any = Annotated[
        int, Field(ge=0, le=limits.vocab_size - 1), BeforeValidator(_integral)
    ]
    ids: Any = Annotated[
        list[token_id],
        Field(min_length=1, max_length=limits.max_seq_length),
    ]
    text: Any = Annotated[str, Field(min_length=1)]
    many = Field(min_length=1, max_length=limits.max_items)
    forms: Any = (
        Annotated[text, Tag("text")]
        | Annotated[list[text], many, Tag("texts")]
        | Annotated[ids, Tag("ids")]
        | Annotated[list[ids], many, Tag("batch")]
    )
    description = (
        "A string, strings, token ids, or lists of token ids; at most "
        f"{limits.max_seq_length} tokens each"
    )
    served: Any = Literal[limits.served_name]
    dim: Any = Literal[limits.dim]
    model: type[EmbeddingsRequest] = create_model(
        "EmbeddingsRequest",
        __base__=EmbeddingsRequest,
        input=(Annotated[forms, Discriminator(_form), Field(description=description)], ...),
        model=(served | None, None),
        dimensions=(dim | None, None),
    )
    return model


# ---- from pydantic's errors to OpenAI's one --------------------------------------------------


def request_error(exc: ValidationError, limits: Limits) -> ApiError:
    """The one error to answer for a request that does not validate (see the module's note
    on the order)."""
    errors = exc.errors(include_url=False)
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return ApiError(400, f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
    first = min(enumerate(errors), key=lambda ie: (_rank(ie[1]), ie[0]))[1]
    return _field_error(first, limits)


def _rank(e: ErrorDetails) -> int:
    loc = e["loc"]
    if not loc:
        return 0  # not a JSON object
    field = loc[0]
    if field in ("model", "encoding_format", "user"):
        return 2 if isinstance(e["input"], str) else 1  # a wrong type before a wrong value
    if field == "dimensions":
        return 3
    if e["type"] == "missing":
        return 4
    if e["type"] == "too_long":
        return 6 if loc[1:] in (("texts",), ("batch",)) else 7  # too many, then too long
    return 5


def _field_error(e: ErrorDetails, limits: Limits) -> ApiError:
    loc, value = e["loc"], e["input"]
    if not loc:
        return ApiError(400, "request body must be a JSON object")
    field = str(loc[0])
    if field in ("model", "encoding_format", "user") and not isinstance(value, str):
        return ApiError(400, f"{field} must be a string, not {type(value).__name__}", param=field)
    if field == "model":
        return ApiError(
            404,
            f"The model `{value}` does not exist. This server serves `{limits.served_name}`.",
            param="model",
            code="model_not_found",
        )
    if field == "encoding_format":
        return ApiError(
            400,
            f"encoding_format must be 'float' or 'base64', not {value!r}",
            param="encoding_format",
        )
    if field == "dimensions":
        return ApiError(
            400,
            f"this model has {limits.dim} dimensions and cannot return {value!r}",
            param="dimensions",
        )
    if e["type"] == "missing":
        return ApiError(400, "missing field: input", param="input")
    return _input_error(e, limits)


def _input_error(e: ErrorDetails, limits: Limits) -> ApiError:
    kind, value, loc = e["type"], e["input"], e["loc"]
    form, path = (loc[1], loc[2:]) if len(loc) > 1 else (None, ())
    item = path[0] if form in ("texts", "batch") and path else None
    where = "input" if item is None else f"input[{item}]"
    if form is None:  # none of the four forms
        if not isinstance(value, list):
            return _bad_input(
                "input must be a string, a list of strings, a list of token ids or a list of "
                f"token-id lists, not {type(value).__name__}"
            )
        return _bad_input(
            "input[0] must be a string, a token id or a list of token ids, "
            f"not {type(value[0]).__name__}"
        )
    if kind == "too_long" and not path and form in ("texts", "batch"):
        n, most = len(value), limits.max_items
        return _bad_input(f"{n} inputs; at most {most} per request", code="too_many_inputs")
    if kind == "too_long":
        return _bad_input(
            f"input[{item or 0}] has {len(value)} tokens; this model takes at most "
            f"{limits.max_seq_length}",
            code="context_length_exceeded",
        )
    if form in ("text", "texts"):
        return _bad_input(_text_problem(kind, value, where))
    return _bad_input(_ids_problem(kind, value, where, limits))


def _bad_input(message: str, *, code: str | None = None) -> ApiError:
    return ApiError(400, message, param="input", code=code)


def _text_problem(kind: str, value: Any, where: str) -> str:
    if kind == "too_short":
        return "input is an empty list"
    if kind == "string_too_short":
        return f"{where} is an empty string"
    if kind == "string_unicode":  # JSON may escape a lone surrogate, which no tokenizer takes
        return f"{where} is not valid Unicode text (a lone surrogate at character {_bad(value)})"
    return f"{where}: expected a string like input[0]"


def _ids_problem(kind: str, value: Any, where: str, limits: Limits) -> str:
    if kind == "list_type":
        return f"{where}: expected a list of token ids"
    if kind == "too_short":
        return f"{where} is an empty list of token ids"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"{where}: token id {value} is outside the vocabulary (0..{limits.vocab_size - 1})"
    return f"{where}: token ids must be integers"


def _bad(s: str) -> int:
    """Where the first character that UTF-8 cannot encode is (a lone surrogate)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return 0
