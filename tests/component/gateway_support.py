"""Helpers of the gateway's component tests: a `tsslurm gateway` child process for a Deployment
(tests/component/conftest.py) with an API key of its own, and a server-sent-event reader written
against the format the OpenAI API documents."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tsslurm.gateway.keys import create_key
from tsslurm.gateway.serve import GatewayProcess, spawn_gateway


@dataclass
class GatewayHandle:
    process: GatewayProcess
    key: str
    model: str

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")


@contextlib.contextmanager
def running_gateway(deployment: Any, *options: str) -> Iterator[GatewayHandle]:
    """A gateway in front of `deployment` (its broker started), stopped at exit."""
    key = create_key(deployment.state_root, f"test-{len(options)}-{id(options)}")
    process = spawn_gateway(deployment.state_root, deployment.root / "gateway.log",
                            options=options)
    try:
        yield GatewayHandle(process, key, deployment.connection.model)
    finally:
        process.stop()


@dataclass
class StreamedAnswer:
    status: int
    chunks: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    @property
    def text(self) -> str:
        return "".join(_piece(choice) for chunk in self.chunks for choice in chunk["choices"])

    @property
    def finish_reason(self) -> str | None:
        reasons = [c["finish_reason"] for chunk in self.chunks for c in chunk["choices"]
                   if c.get("finish_reason")]
        return reasons[-1] if reasons else None

    @property
    def usage(self) -> dict[str, int] | None:
        found = [chunk["usage"] for chunk in self.chunks if chunk.get("usage")]
        return found[-1] if found else None


async def read_stream(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                      headers: dict[str, str]) -> StreamedAnswer:
    """POST a streaming request; every `data:` event parsed, `[DONE]` noted."""
    async with client.stream("POST", path, json=body, headers=headers) as response:
        answer = StreamedAnswer(response.status_code)
        async for data in sse_data(response.aiter_lines()):
            if data == "[DONE]":
                answer.done = True
            else:
                answer.chunks.append(json.loads(data))
        return answer


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    async for line in lines:
        if line.startswith("data: "):
            yield line[len("data: "):]


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no sample {name} in:\n{text}")


def _piece(choice: dict[str, Any]) -> str:
    if "delta" in choice:
        return choice["delta"].get("content") or ""
    return choice.get("text") or ""
