"""The gateway in front of a real vLLM deployment (tiny model): `tsslurm broker`, a vLLM decoder
(`python -m tsslurm.launcher`) and `tsslurm gateway` as processes, with the `openai` package as
the client. Greedy answers - completions and chat, streamed and whole - are exactly what the
tsslurm client returns for the same prompt; the chat prompt is rendered independently by
transformers' `apply_chat_template`; the tiny model's answers hold multi-byte characters and
invalid bytes, and streamed text still equals the whole decode; a seeded sampled answer repeats
(another seed does not); a client that hangs up cancels its request on the engine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tsslurm.broker.store import read_requests
from tsslurm.client import Client
from tsslurm.gateway.keys import create_key
from tsslurm.gateway.serve import GatewayProcess, spawn_gateway
from tsslurm.profile.load import PROFILE_DIR
from tsslurm.protocol import Sampling

TSSLURM = str(Path(sys.executable).parent / "tsslurm")
PROMPTS = ["Once upon a time", "The broker routes each request", "Grüße: naïve café, 日本"]
MAX_TOKENS = 16
CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."}]


class Served:
    """Broker, one vLLM decoder and a gateway as child processes."""

    def __init__(self, root: Path, model: Path):
        self.root = root
        self.state = root / "state"
        self.profile = root / "local-tiny.yaml"
        text = (PROFILE_DIR / "local-tiny.yaml").read_text()
        self.profile.write_text(re.sub(r"(?m)^  path: .*$", f"  path: {model}", text))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.gateway: GatewayProcess | None = None
        self.key = ""

    def start(self) -> None:
        self._spawn("broker", [TSSLURM, "broker", "-p", str(self.profile), "--state-dir",
                               str(self.state)], dict(os.environ))
        self._wait(lambda: (self.state / "connection.json").exists(), 30, "the broker")
        env = {**os.environ, "TSSLURM_ROLE": "decode", "TSSLURM_PROFILE": str(self.profile),
               "TSSLURM_STATE_DIR": str(self.state), "TSSLURM_WORKER_ID": "d1"}
        env.pop("SLURM_JOB_ID", None)
        self._spawn("d1", [sys.executable, "-m", "tsslurm.launcher"], env)
        self.key = create_key(self.state, "test")
        self.gateway = spawn_gateway(self.state, self.root / "gateway.log")
        self._wait(lambda: "worker d1 ready" in self._log("broker"), 240, "the vLLM worker")

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0,
                             timeout=120)

    def records(self, count: int) -> dict[str, object]:
        found: list = []

        def enough() -> bool:
            nonlocal found
            found = read_requests(self.state / "broker.sqlite")
            return len(found) >= count

        self._wait(enough, 15, f"{count} records")
        return {record.request_id: record for record in found}

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                   env=env, cwd=self.root))

    def _log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{self._log(n)[-2500:]}" for n in ("broker", "d1"))
                raise AssertionError(f"waiting for {what} failed:\n{logs}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Served]:
    deployment = Served(tmp_path_factory.mktemp("gateway-vllm"), tiny_model)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def reference(served: Served) -> Iterator[Client]:
    with Client(state_dir=served.state, timeout_s=120) as client:
        yield client


def greedy(client: Client, prompt: str | list[int]):
    return client.generate(prompt, MAX_TOKENS, Sampling(temperature=0.0))


@pytest.mark.timeout(420)
def test_completions_equal_the_tsslurm_client(served: Served, reference: Client) -> None:
    api = served.openai()
    for prompt in PROMPTS:
        expected = greedy(reference, prompt)
        assert expected.text, "the model says something"
        whole = api.completions.create(model="tiny-llama", prompt=prompt, max_tokens=MAX_TOKENS,
                                       temperature=0)
        streamed = list(api.completions.create(
            model="tiny-llama", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
            stream=True, stream_options={"include_usage": True}))
        assert whole.choices[0].text == expected.text
        assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.text
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) \
            == (expected.prompt_tokens, expected.completion_tokens)
        assert streamed[-1].usage.completion_tokens == expected.completion_tokens
        assert whole.choices[0].finish_reason == expected.finish_reason


@pytest.mark.timeout(300)
def test_chat_applies_the_models_template(served: Served, reference: Client,
                                          tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    rendered = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    expected = greedy(reference, prompt_ids)
    api = served.openai()
    whole = api.chat.completions.create(model="tiny-llama", messages=CHAT, temperature=0,
                                        max_tokens=MAX_TOKENS)
    streamed = list(api.chat.completions.create(model="tiny-llama", messages=CHAT,
                                                temperature=0, max_tokens=MAX_TOKENS,
                                                stream=True))
    assert whole.choices[0].message.content == expected.text
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected.text
    assert whole.usage.prompt_tokens == len(prompt_ids) == expected.prompt_tokens


@pytest.mark.timeout(300)
def test_a_seeded_sampled_answer_repeats(served: Served) -> None:
    api = served.openai()
    answers = [api.completions.create(model="tiny-llama", prompt=PROMPTS[0], max_tokens=24,
                                      temperature=1.0, seed=seed).choices[0].text
               for seed in (11, 11, 12)]
    assert answers[0] == answers[1] != answers[2], "the seed is what makes it repeat"


@pytest.mark.timeout(300)
def test_hanging_up_cancels_the_request_on_the_engine(served: Served) -> None:
    body = {"model": "tiny-llama", "prompt": PROMPTS[1], "max_tokens": 1500, "stream": True,
            "ignore_eos": True, "temperature": 0}
    with httpx.Client(base_url=served.url, timeout=120,
                      headers={"Authorization": f"Bearer {served.key}"}) as http, \
            http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        request_id = first.split('"id":"', 1)[1].split('"', 1)[0]
        for _ in range(6):
            next(lines)
    deadline = time.monotonic() + 30
    while request_id not in (records := served.records(1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    record = records[request_id]
    assert (record.outcome, record.workers) == ("cancelled", "d1")
    assert record.output_tokens < 1500
