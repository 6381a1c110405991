"""OpenAI request bodies (validated with pydantic, strict JSON types) and the error envelope.

Fields the engine cannot honour (n > 1, logprobs, echo, best_of > 1, penalties, logit_bias, tools, ...)
are rejected with a 400 naming the field instead of being silently ignored; unknown extra fields are
ignored, as OpenAI-compatible servers commonly do.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

INT32_MAX = 2**31 - 1
SEED_MAX = 2**64 - 1
MAX_STOPS = 4


class ApiError(Exception):
    """An error the client caused (or a 503): rendered as OpenAI's ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def type(self) -> str:
        return {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
                413: "invalid_request_error", 503: "server_overloaded"}.get(self.status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)  # -1 and 0: no top-k filter
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # accepted only at their neutral values
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)
    logit_bias: dict | None = Field(None, max_length=0)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    logprobs: int | None = Field(None, le=0)
    echo: bool = Field(False, le=False)
    best_of: int | None = Field(None, ge=1, le=1)
    suffix: str | None = Field(None, max_length=0)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError("one prompt per request (n = 1; send a string or a list of token ids)")
            return v[0]
        return v


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: bool = Field(False, le=False)
    tools: list | None = Field(None, max_length=0)

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """Validate a JSON body; the first problem becomes a 400 naming the field."""
    if not body.strip():
        raise ApiError(400, "the request body is empty; expected a JSON object")
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"] if not _union_branch(p))
        if err["type"] == "json_invalid":
            raise ApiError(400, f"the request body is not valid JSON ({err['msg']})") from None
        if err["type"] == "model_type" and not loc:
            raise ApiError(400, "the request body must be a JSON object") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{loc}: {msg}" if loc else msg, param=loc or None) from None


def _union_branch(part) -> bool:
    """pydantic names union branches in locations (``str``, ``list[int]``); the client's field name does not."""
    return isinstance(part, str) and (part in ("str", "int", "function-after[_stops(), ...]") or "[" in part)
