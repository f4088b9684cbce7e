"""An OpenAI-compatible ``/v1/completions`` server for the embedded model (stdlib only), so lm-eval
reaches it over HTTP exactly as it reaches vLLM.

A request's prompt list is decoded as one batch, its order the row order of every decode call
(lm-eval's ``batch_size``). Requests are served one at a time: the model is not re-entrant, and a
fixed batch composition is what makes two runs comparable row for row. Each request is logged
(prompt hashes, outputs) so ``compare`` can replay a batch."""
from __future__ import annotations

import hashlib
import json
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from evals.model import TinyIndexerLM


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


class BadRequest(ValueError):
    pass


class CompletionService:
    def __init__(self, model: TinyIndexerLM, name: str = "tiny-indexer-lm", log_path: str | None = None):
        self.model, self.name, self.log_path = model, name, log_path
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "errors": 0, "prompts": 0, "truncated_prompts": 0}
        self.log: list[dict] = []

    def info(self) -> dict:
        ind = self.model.indexer
        return {**self.model.describe(), "served_name": self.name,
                "stats": {**self.stats, "indexer_calls": ind.calls, "indexer_oob_calls": ind.oob_calls}}

    @staticmethod
    def parse(body: dict) -> tuple[list[str], int, list[str]]:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        else:
            raise BadRequest("prompt must be a string or a non-empty list of strings (token ids are not accepted)")
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if float(body.get("temperature", 0) or 0) != 0.0:
            raise BadRequest("only greedy decoding is served: temperature must be 0")
        if body.get("echo") or body.get("logprobs"):
            raise BadRequest("echo and logprobs are not supported (generation tasks only)")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or a list of strings")
        return prompts, max_tokens, stop

    def complete(self, body: dict) -> dict:
        prompts, max_tokens, stop = self.parse(body)
        with self.lock:
            self.stats["requests"] += 1
            number = self.stats["requests"]
            try:
                outs = self.model.generate(prompts, max_tokens, stop)
            except Exception:
                self.stats["errors"] += 1
                raise
            self.stats["prompts"] += len(prompts)
            self.stats["truncated_prompts"] += sum(o["truncated_prompt_tokens"] > 0 for o in outs)
            entry = {"request": number, "prompts": [prompt_hash(p) for p in prompts], "max_tokens": max_tokens,
                     "stop": stop, "texts": [o["text"] for o in outs]}
            self.log.append(entry)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
        usage = {"prompt_tokens": sum(o["prompt_tokens"] for o in outs),
                 "completion_tokens": sum(o["completion_tokens"] for o in outs)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"cmpl-{number}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "usage": usage,
                "choices": [{"index": i, "text": o["text"], "finish_reason": o["finish_reason"], "logprobs": None}
                            for i, o in enumerate(outs)]}


def make_handler(service: CompletionService):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, obj: dict):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": service.name, "object": "model"}]})
            elif self.path.rstrip("/") == "/info":
                self._send(200, service.info())
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/completions":
                self._send(404, {"error": {"message": f"no route {self.path}; use /v1/completions"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not isinstance(body, dict):
                    raise BadRequest("the request body must be a JSON object")
                self._send(200, service.complete(body))
            except (BadRequest, json.JSONDecodeError) as exc:
                self._send(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
            except Exception as exc:  # a crashing backend is a server error the client must see
                self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error",
                                           "traceback": traceback.format_exc()[-2000:]}})

        def log_message(self, *args):  # lm-eval's progress bar is the progress
            pass

    return Handler


class ServerThread:
    """The server on 127.0.0.1 in a daemon thread (port 0: a free one)."""

    def __init__(self, service: CompletionService, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self.httpd = ThreadingHTTPServer((host, port), make_handler(service))
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
