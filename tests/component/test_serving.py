"""The serving path with real processes: a broker and mock workers on loopback, CURVE, SQLite.
Hundreds of concurrent streams complete with exactly the mock engine's tokens, one stream
message per decode iteration, through the disaggregated path the broker's records show."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys

import pytest
import zmq

from tsslurm.launcher.engines.mock import mock_continuation
from tsslurm.protocol import Command, GenerateRequest, decode, encode
from tsslurm.tokenizer import ByteTokenizer

pytestmark = pytest.mark.timeout(120)


def test_200_concurrent_streams_complete_with_the_right_tokens(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("p1", "prefill")
    d.start_worker("d1", "decode")
    d.start_worker("d2", "decode")
    rng = random.Random(5)
    jobs = [([rng.randrange(32, 127) for _ in range(rng.randrange(10, 300))],
             rng.randrange(4, 48)) for _ in range(200)]

    async def run() -> list:
        client = d.client(timeout_s=60)
        try:
            return await asyncio.gather(*(
                client.generate(prompt, max_tokens, request_id=f"req-{i}")
                for i, (prompt, max_tokens) in enumerate(jobs)))
        finally:
            await client.close()

    results = asyncio.run(run())
    for (prompt, max_tokens), result in zip(jobs, results):
        assert result.token_ids == mock_continuation(prompt, max_tokens)
        assert (result.finish_reason, result.completion_tokens, result.prompt_tokens) \
            == ("length", max_tokens, len(prompt))
        assert result.stream_messages == max_tokens, "one stream message per decode iteration"
    records = {r.request_id: r for r in d.records(200)}
    assert len(records) == 200
    for i, (prompt, max_tokens) in enumerate(jobs):
        record = records[f"req-{i}"]
        assert (record.outcome, record.path, record.output_tokens, record.input_tokens) \
            == ("ok", "disaggregated", max_tokens, len(prompt))
        assert record.workers.split(",")[0] == "p1" and record.workers.split(",")[1] in {"d1", "d2"}
        assert record.stream_messages == max_tokens
        assert record.ttft_s is not None and record.ttft_s > 0
    assert {r.workers.split(",")[1] for r in records.values()} == {"d1", "d2"}, "both decoders used"


def test_text_prompts_are_tokenized_by_the_broker_and_answers_detokenized(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    tokenizer = ByteTokenizer()
    with d.sync_client(timeout_s=30) as client:
        client.tokenizer = None  # send text: the broker tokenizes it off its loop
        result = client.generate("Hello, broker!", max_tokens=12)
        streamed = [chunk.token_ids for chunk in client.stream("Hello, broker!", max_tokens=12)]
    expected = mock_continuation(tokenizer.encode("Hello, broker!"), 12)
    assert result.token_ids == expected and result.prompt_tokens == 14
    assert [t for chunk in streamed for t in chunk] == expected
    record = d.records(2)[0]
    assert (record.input_tokens, record.path) == (14, "plain")


def test_the_generate_command(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    tokenizer = ByteTokenizer()
    expected = tokenizer.decode(mock_continuation(tokenizer.encode("Once upon"), 30))
    for flag in ("--no-stream", "--stream"):
        done = subprocess.run(
            [sys.executable, "-c", "from tsslurm.cli import main; main()", "generate",
             "Once upon", "--max-tokens", "30", flag, "--state-dir", str(d.state_root)],
            capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.rstrip("\n") == expected


def test_generate_without_a_broker_is_a_clear_error(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from tsslurm.cli import main; main()", "generate", "hi",
         "--state-dir", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "no deployment state directory" in done.stderr and "Traceback" not in done.stderr


def test_broker_with_a_bad_profile_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployment: x\nmodel: {name: m}\n")
    done = subprocess.run(
        [sys.executable, "-c", "from tsslurm.cli import main; main()", "broker", "-p", str(bad),
         "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "invalid profile" in done.stderr and "Traceback" not in done.stderr


def test_a_resubmit_from_a_new_socket_continues_without_duplicates(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    prompt, max_tokens = [72, 105, 33], 120
    submit = GenerateRequest(request_id="moving", max_tokens=max_tokens, prompt_token_ids=prompt)
    context = zmq.Context()
    try:
        first = d.raw_socket(context)
        first.send_multipart(encode(Command.SUBMIT, submit))
        held: list[int] = []
        while len(held) < 20:
            assert first.poll(5000)
            for delta in decode(first.recv_multipart())[1].deltas:
                assert delta.offset == len(held)
                held.extend(delta.token_ids)
        second = d.raw_socket(context)  # the client reconnected: a new socket, a new identity
        second.send_multipart(encode(Command.SUBMIT, GenerateRequest(
            request_id="moving", max_tokens=max_tokens, prompt_token_ids=prompt,
            resume_from=len(held))))
        finished = False
        while not finished:
            assert second.poll(5000)
            for delta in decode(second.recv_multipart())[1].deltas:
                assert delta.offset <= len(held), "never a gap"
                held.extend(delta.token_ids[len(held) - delta.offset:])
                finished = delta.finish_reason == "length"
        assert held == mock_continuation(prompt, max_tokens)
        while first.poll(300):  # the first socket may hold deltas sent before the move, no more
            for delta in decode(first.recv_multipart())[1].deltas:
                assert delta.finish_reason is None
    finally:
        context.destroy(linger=0)


def test_streams_arrive_piece_by_piece(deployment) -> None:
    d = deployment(step="base_ms: 10.0=>base_ms: 40.0")  # 40 ms a token: pieces stay apart
    d.start_broker()
    d.start_worker("d1", "decode")
    with d.sync_client(timeout_s=30) as client:
        sync_chunks = list(client.stream([70, 80, 90], max_tokens=15))

    async def run() -> list:
        client = d.client(timeout_s=30)
        try:
            return [chunk async for chunk in client.stream([70, 80, 90], max_tokens=15)]
        finally:
            await client.close()

    for chunks in (sync_chunks, asyncio.run(run())):
        token_chunks = [c.token_ids for c in chunks if c.token_ids]
        assert [t for c in token_chunks for t in c] == mock_continuation([70, 80, 90], 15)
        assert len(token_chunks) > 3, "pieces as they come (a busy machine may merge a few)"


def test_answers_wake_the_async_client_without_its_pings(deployment) -> None:
    """Every answer must wake the reader at once; a lost wake-up would show as requests that
    finish only when a ping (here: never within the timeout) stirs the socket."""
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")

    async def run() -> list:
        client = d.client(timeout_s=20, idle_s=60)

        async def lane(lane: int) -> list:
            return [await client.generate([65 + lane, 65 + i], max_tokens=2) for i in range(5)]

        try:
            return await asyncio.gather(*(lane(n) for n in range(40)))
        finally:
            await client.close()

    lanes = asyncio.run(run())
    for n, results in enumerate(lanes):
        assert [r.token_ids for r in results] == \
            [mock_continuation([65 + n, 65 + i], 2) for i in range(5)]
    assert max(r.latency_s for results in lanes for r in results) < 10


def test_sends_and_streams_interleaved_keep_every_answer_whole(deployment) -> None:
    """Lanes submit new requests while others stream: the client takes every message in order,
    so no answer finishes early or with a gap."""
    d = deployment()
    d.start_broker()
    d.start_worker("p1", "prefill")
    d.start_worker("d1", "decode")
    d.start_worker("d2", "decode")
    rng = random.Random(21)
    plans = [[([rng.randrange(32, 127) for _ in range(rng.randrange(5, 80))],
               rng.randrange(10, 40)) for _ in range(8)] for _ in range(48)]

    async def run() -> list:
        client = d.client(timeout_s=60)

        async def lane(plan: list) -> list:
            return [await client.generate(prompt, n) for prompt, n in plan]

        try:
            return await asyncio.gather(*(lane(plan) for plan in plans))
        finally:
            await client.close()

    for plan, results in zip(plans, asyncio.run(run())):
        for (prompt, n), result in zip(plan, results):
            assert result.token_ids == mock_continuation(prompt, n)
