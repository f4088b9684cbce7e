"""An OpenAI-compatible ``/v1/completions`` server for the embedded model (stdlib only), so lm-eval
reaches it over HTTP exactly as it reaches vLLM.

A request's prompt list is decoded as one batch, its order the row order of every decode call
(lm-eval's ``batch_size``). Requests are served one at a time: the model is not re-entrant, and a
fixed batch composition is what makes two runs comparable row for row. Each request is logged
(prompt hashes, outputs) so ``compare`` can replay a batch.

Malformed requests get a 4xx with an OpenAI-style error body (:mod:`evals.protocol`), never a 500.
A prompt that does not fit ``max_model_len`` with its ``max_tokens`` is refused as vLLM refuses it
(400), unless the server was started with ``truncate_prompts``: then it keeps the prompt's last
tokens and says so, per choice (``truncated_prompt_tokens``), in ``usage`` and in the
``X-Truncated-Prompts`` header, and counts it in ``/info``; a run's manifest reports it."""
from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from evals.protocol import RequestError, context_length_message, error_body, parse_completion

MAX_BODY_BYTES = 64 * 2**20  # a batch of 64 prompts of 32K tokens is ~10 MB
DRAIN_CHUNK = 2**20


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def count_prompt_tokens(model, prompt: str) -> int:
    """Tokens the model sees for ``prompt``: its own ``encode`` where it has one, else the byte-level
    tokenizer the embedded model uses (one token per UTF-8 byte)."""
    encode = getattr(model, "encode", None)
    return len(encode(prompt)) if callable(encode) else len(prompt.encode("utf-8"))


class BadRequest(RequestError):  # kept for callers that caught the old name
    pass


class CompletionService:
    def __init__(self, model, name: str = "tiny-indexer-lm", log_path: str | None = None,
                 truncate_prompts: bool = False):
        self.model, self.name, self.log_path = model, name, log_path
        self.truncate_prompts = truncate_prompts
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "errors": 0, "refused": 0, "prompts": 0, "truncated_prompts": 0}
        self.last_refusal: str | None = None
        self.log: list[dict] = []

    @property
    def max_model_len(self) -> int:
        return self.model.cfg.max_model_len

    def info(self) -> dict:
        ind = self.model.indexer
        return {**self.model.describe(), "served_name": self.name, "truncate_prompts": self.truncate_prompts,
                "last_refusal": self.last_refusal,
                "stats": {**self.stats, "indexer_calls": ind.calls, "indexer_oob_calls": ind.oob_calls}}

    def refused(self, exc: RequestError) -> None:
        with self.lock:
            self.stats["refused"] += 1
            self.last_refusal = exc.message

    def check_window(self, prompts: list[str], max_tokens: int) -> list[int]:
        """Each prompt's token count; refuses (vLLM's message) what does not fit unless truncating."""
        counts = [count_prompt_tokens(self.model, p) for p in prompts]
        window = self.max_model_len
        for n in counts:
            # Truncating keeps at least one prompt token, so max_tokens itself must leave room for it.
            if n + max_tokens > window and (not self.truncate_prompts or max_tokens >= window):
                raise RequestError(context_length_message(window, n, max_tokens),
                                   "max_tokens" if max_tokens >= window else "prompt")
        return counts

    def complete(self, body) -> dict:
        params = parse_completion(body, self.name)
        self.check_window(params.prompts, params.max_tokens)
        with self.lock:
            self.stats["requests"] += 1
            number = self.stats["requests"]
            try:
                outs = self.model.generate(params.prompts, params.max_tokens, params.stop)
            except Exception:
                self.stats["errors"] += 1
                raise
            self.stats["prompts"] += len(params.prompts)
            self.stats["truncated_prompts"] += sum(o["truncated_prompt_tokens"] > 0 for o in outs)
            entry = {"request": number, "prompts": [prompt_hash(p) for p in params.prompts],
                     "max_tokens": params.max_tokens, "stop": params.stop, "texts": [o["text"] for o in outs],
                     "prompt_tokens": [o["prompt_tokens"] for o in outs],
                     "truncated_prompt_tokens": [o["truncated_prompt_tokens"] for o in outs]}
            self.log.append(entry)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
        usage = {"prompt_tokens": sum(o["prompt_tokens"] for o in outs),
                 "completion_tokens": sum(o["completion_tokens"] for o in outs),
                 "truncated_prompt_tokens": sum(o["truncated_prompt_tokens"] for o in outs)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        # Per choice, beyond OpenAI's fields: the tokens this prompt had (after any truncation) and
        # how many were cut, so a batched client can attribute counts to prompts.
        return {"id": f"cmpl-{number}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "usage": usage,
                "choices": [{"index": i, "text": o["text"], "finish_reason": o["finish_reason"], "logprobs": None,
                             "prompt_tokens": o["prompt_tokens"],
                             "truncated_prompt_tokens": o["truncated_prompt_tokens"]}
                            for i, o in enumerate(outs)]}


def make_handler(service: CompletionService, max_body_bytes: int = MAX_BODY_BYTES):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 120  # a client that stops sending mid-body does not hold a thread forever

        def _send(self, code: int, obj: dict, headers: dict | None = None):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, message: str, param: str | None = None):
            self._send(status, error_body(status, message, param))

        def send_error(self, code, message=None, explain=None):
            """The base class's own refusals (bad request line, oversized headers, unknown method)
            as JSON error bodies rather than HTML."""
            self.close_connection = True
            if self.request_version == "HTTP/0.9":  # the request line did not parse: answer as HTTP/1.0
                self.request_version = "HTTP/1.0"
            if code == 501:  # an unknown method is the client's fault, not the server's
                code, message = 405, f"method {self.command!r} is not served"
            self._error(int(code), message or explain or "malformed request")

        def _route(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/")

        def do_GET(self):
            route = self._route()
            if route in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif route == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": service.name, "object": "model",
                                                             "max_model_len": service.max_model_len}]})
            elif route == "/info":
                self._send(200, service.info())
            else:
                self._error(404, f"no route GET {self.path}")

        def _not_allowed(self):
            self.close_connection = True
            self._error(405, f"method {self.command} is not served; use POST /v1/completions or GET /v1/models")

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_allowed

        def _drain(self, n: int) -> None:
            """Reads and drops ``n`` body bytes, so the refusal reaches a client that is still
            sending (closing on unread data resets the connection before it reads the answer)."""
            while n > 0:
                chunk = self.rfile.read(min(DRAIN_CHUNK, n))
                if not chunk:
                    break
                n -= len(chunk)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise RequestError("chunked request bodies are not accepted: send Content-Length")
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise RequestError("the request has no body (Content-Length missing): send a JSON object")
            try:
                length = int(raw)
                if length < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True  # the body's extent is unknown
                raise RequestError(f"Content-Length must be a non-negative integer, got {raw!r}") from None
            if length > max_body_bytes:
                self.close_connection = True
                self._drain(length)
                raise RequestError(f"request body of {length} bytes exceeds the server's limit of "
                                   f"{max_body_bytes} bytes", status=413)
            data = self.rfile.read(length)
            if len(data) < length:
                self.close_connection = True
                raise RequestError(f"request body ended after {len(data)} of {length} bytes")
            return data

        def do_POST(self):
            route = self._route()
            try:
                data = self._body()
                if route != "/v1/completions":
                    raise RequestError(f"no route POST {self.path}; the embedded server serves /v1/completions",
                                       status=404)
                try:
                    body = json.loads(data)
                except (ValueError, RecursionError) as exc:  # ValueError covers JSON and UTF-8 errors
                    raise RequestError(f"the request body is not valid JSON: {str(exc)[:200]}") from None
                result = service.complete(body)
            except RequestError as exc:
                service.refused(exc)
                self._send(exc.status, exc.body())
                return
            except Exception as exc:  # a crashing backend: a server error, reported without a traceback
                traceback.print_exc(file=sys.stderr)
                self._error(500, f"internal error in the model: {type(exc).__name__}: {str(exc)[:300]}")
                return
            truncated = sum(c["truncated_prompt_tokens"] > 0 for c in result["choices"])
            self._send(200, result, {"X-Truncated-Prompts": str(truncated)} if truncated else None)

        def log_message(self, *args):  # lm-eval's progress bar is the progress
            pass

    return Handler


class ServerThread:
    """The server on 127.0.0.1 in a daemon thread (port 0: a free one)."""

    def __init__(self, service: CompletionService, host: str = "127.0.0.1", port: int = 0,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.service = service
        self.httpd = ThreadingHTTPServer((host, port), make_handler(service, max_body_bytes))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1/completions"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
