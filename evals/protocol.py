"""The OpenAI ``/v1/completions`` request as the embedded server accepts it, and the error bodies it
answers with: every malformed request is refused with a 4xx and an OpenAI-style body, never a 500.

Error bodies follow vLLM's (``ErrorResponse(error=ErrorInfo(message, type, param, code))``,
``vllm/entrypoints/openai/engine/protocol.py``): ``{"error": {"message", "type", "param", "code"}}``
with ``code`` the HTTP status, ``type`` ``BadRequestError`` for 400 and ``NotFoundError`` for 404.
A prompt that does not fit the model's window is refused with vLLM's wording (``_validate_input``
of ``vllm/entrypoints/openai/serving_engine.py``), so that a client that recognises vLLM's
context-length error recognises ours."""
from __future__ import annotations

import math
from dataclasses import dataclass
from http import HTTPStatus

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status (4xx), ``param`` the field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status) or HTTPStatus(status).phrase
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def context_length_message(max_model_len: int, prompt_tokens: int, max_tokens: int) -> str:
    """vLLM's refusal of a request whose prompt plus completion exceeds ``max_model_len`` (the form
    for a request that names ``max_tokens``, which lm-eval always does)."""
    return (f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{max_tokens + prompt_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            f"completion). Please reduce the length of the messages or completion.")


@dataclass(frozen=True)
class CompletionParams:
    prompts: list[str]
    max_tokens: int
    stop: list[str]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def parse_completion(body, served_name: str) -> CompletionParams:
    """Checks every field the server acts on; anything else is ignored, as vLLM ignores extra
    fields. Raises :class:`RequestError` naming the field and what was expected."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise RequestError(f"model must be a string, got {type(model).__name__}", "model")
        if model != served_name:
            raise RequestError(f"The model `{model}` does not exist.", "model", 404)
    if "prompt" not in body or body["prompt"] is None:
        raise RequestError("prompt is required: a string or a non-empty list of strings", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    elif isinstance(prompt, list) and prompt and all(_is_int(p) or isinstance(p, list) for p in prompt):
        raise RequestError("prompt as token ids is not accepted: send text (a string or a list of strings)", "prompt")
    else:
        raise RequestError(f"prompt must be a string or a non-empty list of strings, got "
                           f"{'an empty list' if prompt == [] else type(prompt).__name__}", "prompt")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise RequestError(f"prompt {empty[0]} is empty: the decoder prompt cannot be empty", "prompt")

    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    elif not _is_int(max_tokens):
        raise RequestError(f"max_tokens must be an integer >= 1, got {max_tokens!r}", "max_tokens")
    elif max_tokens < 1:
        raise RequestError(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")

    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature):
            raise RequestError(f"temperature must be a finite number, got {temperature!r}", "temperature")
        if temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {temperature}", "temperature")
        if temperature != 0:
            raise RequestError(f"only greedy decoding is served: temperature must be 0, got {temperature}",
                               "temperature")

    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = list(stop)
    else:
        raise RequestError(f"stop must be a string or a list of strings, got {stop!r}"[:200], "stop")

    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise RequestError(f"only n=1 is served, got {n!r}", "n")
    for flag in ("stream", "echo"):
        value = body.get(flag)
        if value not in (None, False):
            raise RequestError(f"{flag} is not supported (generation tasks only), got {value!r}", flag)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        raise RequestError(f"logprobs are not supported (generation tasks only), got {logprobs!r}", "logprobs")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise RequestError(f"seed must be an integer, got {seed!r}", "seed")
    return CompletionParams(prompts, max_tokens, stop)
