"""Helpers of the vLLM tier: profiles serving the tiny model, seeded prompts, and a plain reference
engine (vllm.LLM with no KV connector) run in its own process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from tsslurm.profile import load_profile
from tsslurm.profile.schema import Profile

HERE = Path(__file__).resolve().parent


def tiny_profile(model_dir: Path, **engine: Any) -> Profile:
    """The local-tiny profile serving `model_dir`, with engine fields replaced."""
    profile = load_profile("local-tiny")
    return msgspec.structs.replace(
        profile, model=msgspec.structs.replace(profile.model, path=str(model_dir)),
        engine=msgspec.structs.replace(profile.engine, **engine))


def random_prompts(count: int, lengths: tuple[int, int], seed: int) -> list[list[int]]:
    """Token-id prompts (ids 4..2047: no special tokens) of seeded random lengths."""
    rng = random.Random(seed)
    return [[rng.randrange(4, 2048) for _ in range(rng.randint(*lengths))] for _ in range(count)]


class PlainReference:
    """Greedy outputs of a plain vLLM engine (no KV connector), computed in a child process
    while the test's own engines start."""

    def __init__(self, model_dir: Path, prompts: list[list[int]], max_tokens: int,
                 workdir: Path) -> None:
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        self.request_file = workdir / "plain-reference-request.json"
        self.request_file.write_text(json.dumps({"model": str(model_dir), "prompts": prompts,
                                                 "max_tokens": max_tokens}))
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "plain_reference.py"), str(self.request_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def outputs(self, timeout_s: float = 240.0) -> list[list[int]]:
        out, err = self.process.communicate(timeout=timeout_s)
        assert self.process.returncode == 0, \
            f"plain reference engine failed ({self.process.returncode}):\n{err[-4000:]}"
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
