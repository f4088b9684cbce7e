"""The embedded server refuses every malformed request with a 4xx and an OpenAI-style error body
(never a 500, never a traceback), refuses a prompt longer than its window with vLLM's message, and
truncates only when configured to, saying so in the response. The server runs in process on
127.0.0.1, port 0; every request has a timeout."""
from __future__ import annotations

import http.client
import json
import socket

import pytest

from evals.model import ModelConfig, TinyIndexerLM
from evals.server import CompletionService, ServerThread

WINDOW = 200
NAME = "tiny-indexer-lm"


@pytest.fixture(scope="module")
def model():
    return TinyIndexerLM(ModelConfig(max_model_len=WINDOW))


@pytest.fixture(scope="module")
def server(model):
    with ServerThread(CompletionService(model), max_body_bytes=300_000) as s:
        yield s


@pytest.fixture(scope="module")
def truncating(model):
    with ServerThread(CompletionService(model, truncate_prompts=True)) as s:
        yield s


def post(server, body, path="/v1/completions", raw: bytes | None = None, method="POST", headers=None):
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, text, resp


def raw_exchange(server, request: bytes, half_close: bool = False) -> bytes:
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except ConnectionResetError:
                break
            if not c:
                break
            chunks.append(c)
    return b"".join(chunks)


def assert_error(status, text, want_status, param=None):
    assert status == want_status, text
    assert "Traceback" not in text and ".py" not in text
    err = json.loads(text)["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == want_status
    # vLLM's names where it has one; else the status's reason phrase (413's differs across Pythons)
    assert err["type"] in {400: ["BadRequestError"], 404: ["NotFoundError"], 500: ["InternalServerError"],
                           405: ["Method Not Allowed"],
                           413: ["Request Entity Too Large", "Content Too Large"]}[want_status], err
    if param is not None:
        assert err["param"] == param, err
    return err


def ok(**extra):
    return {"model": NAME, "prompt": "hello", "max_tokens": 2, "temperature": 0, **extra}


MALFORMED = [
    # (body, param): each one 400
    (ok(stop=7), "stop"),
    (ok(stop=["a", 3]), "stop"),
    (ok(stop={"a": 1}), "stop"),
    ({"model": NAME, "max_tokens": 2}, "prompt"),
    (ok(prompt=None), "prompt"),
    (ok(prompt=5), "prompt"),
    (ok(prompt=[]), "prompt"),
    (ok(prompt=["a", 1]), "prompt"),
    (ok(prompt=[1, 2, 3]), "prompt"),
    (ok(prompt=[[1, 2]]), "prompt"),
    (ok(prompt=""), "prompt"),
    (ok(prompt=["fine", ""]), "prompt"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}]}, "prompt"),
    (ok(max_tokens=-1), "max_tokens"),
    (ok(max_tokens=0), "max_tokens"),
    (ok(max_tokens="16"), "max_tokens"),
    (ok(max_tokens=1.5), "max_tokens"),
    (ok(max_tokens=2.0), "max_tokens"),
    (ok(max_tokens=True), "max_tokens"),
    (ok(max_tokens=[2]), "max_tokens"),
    (ok(temperature="hot"), "temperature"),
    (ok(temperature=-1), "temperature"),
    (ok(temperature=0.7), "temperature"),
    (ok(temperature=True), "temperature"),
    (ok(n=2), "n"),
    (ok(n="1"), "n"),
    (ok(stream=True), "stream"),
    (ok(echo=True), "echo"),
    (ok(logprobs=1), "logprobs"),
    (ok(seed="x"), "seed"),
    (ok(model=5), "model"),
    ([ok()], None),
    ("just a string", None),
    (None, None),
]


@pytest.mark.parametrize("body, param", MALFORMED, ids=[f"{i}-{p}" for i, (_, p) in enumerate(MALFORMED)])
def test_malformed_request_is_400(server, body, param):
    assert_error(*post(server, body)[:2], 400, param)


@pytest.mark.parametrize("raw", [
    b"not json", b'{"prompt": "hi"', b"\xff\xfe{\x00", b"[" * 100_000, b"",
    b'{"model": "tiny-indexer-lm", "prompt": "hi", "temperature": NaN}',
    b'{"model": "tiny-indexer-lm", "prompt": "hi", "temperature": Infinity}',
], ids=["text", "truncated", "not-utf8", "deep-nesting", "empty", "nan", "infinity"])
def test_body_that_is_not_a_json_object_is_400(server, raw):
    assert_error(*post(server, None, raw=raw)[:2], 400)


def test_max_tokens_beyond_the_window_is_refused_with_vllms_message(server):
    status, text, _ = post(server, ok(max_tokens=100_000_000))
    err = assert_error(status, text, 400)
    # vLLM, vllm/entrypoints/openai/serving_engine.py (_validate_input): prompt + max_tokens > max_model_len
    assert err["message"] == (f"This model's maximum context length is {WINDOW} tokens. However, you requested "
                              f"100000005 tokens (5 in the messages, 100000000 in the completion). Please reduce "
                              f"the length of the messages or completion.")
    err = assert_error(*post(server, ok(max_tokens=10**30))[:2], 400)
    assert "maximum context length is 200 tokens" in err["message"]


def test_long_prompt_is_refused_not_silently_cut(server):
    prompt = "x" * 200_000
    err = assert_error(*post(server, ok(prompt=prompt))[:2], 400, "prompt")
    assert err["message"].startswith(f"This model's maximum context length is {WINDOW} tokens. However, you "
                                     f"requested 200002 tokens (200000 in the messages, 2 in the completion).")
    # the boundary is vLLM's: prompt + max_tokens <= max_model_len is served, one more token is not
    status, text, _ = post(server, ok(prompt="y" * (WINDOW - 2)))
    assert status == 200, text
    assert json.loads(text)["usage"]["prompt_tokens"] == WINDOW - 2
    assert_error(*post(server, ok(prompt="y" * (WINDOW - 1)))[:2], 400, "prompt")
    # one prompt of a batch that does not fit refuses the request
    assert_error(*post(server, ok(prompt=["short", "z" * WINDOW]))[:2], 400, "prompt")


def test_truncation_when_configured_is_reported(truncating):
    prompt = "x" * 200_000
    status, text, resp = post(truncating, ok(prompt=[prompt, "short"]))
    assert status == 200, text
    body = json.loads(text)
    kept = WINDOW - 2
    assert [c["prompt_tokens"] for c in body["choices"]] == [kept, 5]
    assert [c["truncated_prompt_tokens"] for c in body["choices"]] == [200_000 - kept, 0]
    assert body["usage"]["prompt_tokens"] == kept + 5 and body["usage"]["truncated_prompt_tokens"] == 200_000 - kept
    assert resp.getheader("X-Truncated-Prompts") == "1"
    assert truncating.service.info()["stats"]["truncated_prompts"] >= 1
    # a completion that leaves no room for even one prompt token is refused all the same
    assert_error(*post(truncating, ok(max_tokens=WINDOW))[:2], 400, "max_tokens")


def test_wrong_model_is_404_as_in_vllm(server):
    err = assert_error(*post(server, ok(model="deepseek-ai/DeepSeek-V3.2"))[:2], 404, "model")
    assert err["message"] == "The model `deepseek-ai/DeepSeek-V3.2` does not exist."


@pytest.mark.parametrize("method, path, want", [
    ("POST", "/v1/chat/completions", 404), ("POST", "/nowhere", 404), ("GET", "/nowhere", 404),
    ("PUT", "/v1/completions", 405), ("DELETE", "/v1/completions", 405), ("BREW", "/v1/completions", 405),
])
def test_unknown_endpoint_or_method(server, method, path, want):
    assert_error(*post(server, ok(), path=path, method=method)[:2], want)


def test_oversized_body_is_413(server):
    body = json.dumps(ok(prompt="x" * 400_000)).encode()
    status, text, _ = post(server, None, raw=body)
    err = assert_error(status, text, 413)
    assert "300000" in err["message"]


@pytest.mark.parametrize("request_bytes, half_close", [
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", False),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", False),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", False),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"", True),
    (b"GARBAGE\r\n\r\n", False),
    (b"GET / HTTP/1.1 extra words\r\n\r\n", False),
], ids=["length-not-int", "length-negative", "chunked", "no-length", "short-body", "request-line", "bad-syntax"])
def test_malformed_http_is_400(server, request_bytes, half_close):
    reply = raw_exchange(server, request_bytes, half_close)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", reply[:300]
    assert_error(400, body.decode(), 400)


def test_crashing_model_is_a_500_without_traceback():
    class Broken:
        class cfg:
            max_model_len = WINDOW

        class indexer:
            calls = oob_calls = 0

        def describe(self):
            return {"name": "broken"}

        def generate(self, *a, **k):
            raise RuntimeError("kernel exploded")

    with ServerThread(CompletionService(Broken())) as s:
        status, text, _ = post(s, ok())
        assert status == 500 and "Traceback" not in text and "server.py" not in text
        assert json.loads(text)["error"]["message"].endswith("RuntimeError: kernel exploded")
        assert s.service.stats["errors"] == 1


def test_still_serves_after_refusals(server):
    before = server.service.info()["stats"]
    assert_error(*post(server, ok(stop=7))[:2], 400, "stop")  # its own refusal: the test runs alone too
    status, text, _ = post(server, ok(stop=["\n"]))
    assert status == 200, text
    body = json.loads(text)
    assert body["choices"][0]["prompt_tokens"] == 5 and body["model"] == NAME
    after = server.service.info()["stats"]
    assert after["requests"] == before["requests"] + 1 and after["errors"] == 0
    assert after["refused"] == before["refused"] + 1
    models = json.loads(post(server, None, path="/v1/models", method="GET", raw=b"")[1])
    assert models["data"][0]["max_model_len"] == WINDOW
