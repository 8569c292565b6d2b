"""API keys and every error case of the gateway, over HTTP against a live deployment (broker and
mock workers as processes): each error in the OpenAI error format with its HTTP status, and the
gateway keeps serving afterwards."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
from gateway_support import running_gateway

from tsslurm.gateway.keys import create_key, keys_file

pytestmark = pytest.mark.timeout(120)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def served(deployment):
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    with running_gateway(d) as gateway, httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield d, gateway, client


def test_no_key_no_service(served) -> None:
    _d, gateway, client = served
    body = {"model": gateway.model, "prompt": "hi", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer tss-wrong"}, {"Authorization": gateway.key},
                    {"Authorization": "Basic " + gateway.key}):
        for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models"),
                             ("GET", "/metrics"), ("POST", "/v1/chat/completions")):
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (headers, path)
            assert error_of(response)["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers=gateway.headers).status_code == 200
    assert client.get("/health").status_code == 200, "health needs no key"


def test_keys_are_read_again_when_the_file_changes(served) -> None:
    d, gateway, client = served
    other = create_key(d.state_root, "late")
    headers = {"Authorization": f"Bearer {other}"}
    assert _eventually(lambda: client.get("/v1/models", headers=headers).status_code == 200)
    file = keys_file(d.state_root)
    file.write_text("".join(line + "\n" for line in file.read_text().splitlines()
                            if not line.startswith("late ")))
    assert _eventually(lambda: client.get("/v1/models", headers=headers).status_code == 401)
    assert client.get("/v1/models", headers=gateway.headers).status_code == 200
    file.chmod(0o644)
    response = _settled(lambda: client.get("/v1/models", headers=gateway.headers), 401)
    assert "chmod 600" in error_of(response)["message"], "an unsafe key file admits no one"


def test_each_error_has_its_status_and_code(served) -> None:
    _d, gateway, client = served
    post = lambda path, **kw: client.post(path, headers=gateway.headers, **kw)
    model = gateway.model
    cases = [
        (post("/v1/completions", content=b'{"model": '), 400, None),
        (post("/v1/completions", content=b""), 400, None),
        (post("/v1/completions", json={"prompt": "hi"}), 400, None),
        (post("/v1/completions", json={"model": model, "prompt": 42}), 400, None),
        (post("/v1/chat/completions", json={"model": model, "messages": "hi"}), 400, None),
        (post("/v1/completions", json={"model": "gpt-x", "prompt": "hi"}), 404, "model_not_found"),
        (client.get("/v1/models/gpt-x", headers=gateway.headers), 404, "model_not_found"),
        (post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 5000}),
         400, "context_length_exceeded"),
        (post("/v1/completions", json={"model": model, "prompt": "x" * 5000}),
         400, "context_length_exceeded"),
        (post("/v1/chat/completions", json={"model": model, "max_completion_tokens": 4090,
                                            "messages": [{"role": "user", "content": "hi"}]}),
         400, "context_length_exceeded"),
        (post("/v1/completions", json={"model": model, "prompt": "hi", "n": 2}), 400, None),
        (post("/v1/completions", json={"model": model, "prompt": "hi", "logprobs": 2}),
         400, "unsupported_parameter"),
        (post("/v1/completions", json={"model": model, "prompt": ["a", "b"]}), 400, None),
        (post("/v1/completions", json={"model": model, "prompt": "hi", "temperature": 3}),
         400, None),
        (post("/v1/completions", json={"model": model, "prompt": "hi", "stop": [""]}), 400, None),
        (post("/v1/completions", json={"model": model, "prompt": [1, 300]}), 400, None),
        (post("/v1/completions", json={"model": model, "prompt": "x" * 300_000}),
         400, "context_length_exceeded"),
        (post("/v1/completions", content=b" " * (9 << 20)), 413, "request_too_large"),
        (post("/v1/nowhere", json={}), 404, "not_found"),
        (client.get("/v1/completions", headers=gateway.headers), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert error_of(response)["code"] == code, response.text
    assert "context length is 4096 tokens" in error_of(cases[7][0])["message"]
    assert error_of(cases[10][0])["param"] == "n"
    done = post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 3})
    assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 3


def test_overloaded_gateway_answers_429_with_retry_after(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    with running_gateway(d, "--max-in-flight", "1") as gateway, \
            httpx.Client(base_url=gateway.url, headers=gateway.headers, timeout=60) as client:
        long = {"model": gateway.model, "prompt": "a", "max_tokens": 300, "stream": True}
        with client.stream("POST", "/v1/completions", json=long) as first:
            assert first.status_code == 200
            busy = client.post("/v1/completions",
                               json={"model": gateway.model, "prompt": "b", "max_tokens": 2})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert error_of(busy)["code"] == "overloaded"


def test_request_timeout_is_504(deployment) -> None:
    d = deployment()
    d.start_broker()  # no worker: the request waits until its deadline
    with running_gateway(d, "--timeout", "1") as gateway, \
            httpx.Client(base_url=gateway.url, headers=gateway.headers, timeout=60) as client:
        started = time.monotonic()
        response = client.post("/v1/completions",
                               json={"model": gateway.model, "prompt": "hi", "max_tokens": 3})
        assert response.status_code == 504 and error_of(response)["code"] == "timeout"
        assert 0.9 < time.monotonic() - started < 10


def test_health_says_whether_workers_serve(deployment) -> None:
    d = deployment()
    d.start_broker()
    with running_gateway(d) as gateway, httpx.Client(base_url=gateway.url, timeout=60) as client:
        down = client.get("/health")
        assert down.status_code == 503 and "retry-after" in down.headers
        assert (down.json()["status"], down.json()["broker"]) == ("unavailable", "reachable")
        d.start_worker("d1", "decode")
        up = _settled(lambda: client.get("/health"), 200)
        assert up.json() == {**up.json(), "status": "ok", "broker": "reachable", "workers": "ready"}


def test_broker_gone_is_503_with_retry_after(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    with running_gateway(d) as gateway, \
            httpx.Client(base_url=gateway.url, headers=gateway.headers, timeout=60) as client:
        body = {"model": gateway.model, "prompt": "hi", "max_tokens": 3}
        assert client.post("/v1/completions", json=body).status_code == 200
        d.signal("broker", signal.SIGKILL)
        d.exit_code("broker")
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert error_of(response)["code"] == "service_unavailable"
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["broker"] == "unreachable"


def test_gateway_command_errors_are_clear(tmp_path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from tsslurm.cli import main; main()",
                               "gateway", *args], capture_output=True, text=True, timeout=60,
                              check=False)

    missing = run("--state-dir", str(tmp_path / "nothing"), "--port", "0")
    assert missing.returncode == 1 and "no deployment state directory" in missing.stderr
    assert "Traceback" not in missing.stderr
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    no_broker = run("--state-dir", str(state), "--port", "0")
    assert no_broker.returncode == 1 and "is the broker running?" in no_broker.stderr
    made = run("--state-dir", str(state), "--create-key", "alice")
    assert made.returncode == 0 and made.stdout.startswith("tss-")
    again = run("--state-dir", str(state), "--create-key", "alice")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert oct(keys_file(state).stat().st_mode & 0o777) == "0o600"


def _eventually(check, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _settled(request, status: int, timeout_s: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while (response := request()).status_code != status and time.monotonic() < deadline:
        time.sleep(0.2)
    return response
