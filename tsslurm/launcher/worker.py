"""The worker's engine side: an asyncio loop that starts the engine, registers with the broker
through the link thread (link.py; its messages arrive on an asyncio queue), serves WorkItems and sends one OUTPUT per engine iteration
(everything that became ready in one loop turn goes in one message).

How it ends:
- SIGTERM or SIGINT: abort what is in flight, send the outputs already produced, DISCONNECT with
  those requests handed back (the broker continues them elsewhere from the tokens it has), shut
  the engine down, exit 0.
- DRAIN from the broker, or SIGUSR1 (Slurm's warning before the time limit): take no more work
  (heartbeats say draining, so the broker stops routing here and the autoscaler replaces the
  worker), finish what is in flight, DISCONNECT, exit 0. A SIGTERM at the time limit hands back
  whatever is still running.
- a fatal engine error: DISCONNECT fatal, exit 1.   - refused by the broker: exit 1."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any, NamedTuple

import msgspec

from tsslurm.launcher.engines.base import Engine, EngineError, EngineInfo
from tsslurm.launcher.link import RESET, BrokerLink
from tsslurm.launcher.settings import LauncherSettings
from tsslurm.profile.schema import Partition, Profile
from tsslurm.protocol import (
    Command,
    Disconnect,
    OutputBatch,
    OutputItem,
    ProtocolError,
    WorkerInfo,
    WorkItem,
    decode,
    encode,
)

log = logging.getLogger("tsslurm.launcher")

HAND_BACK, DRAINED, FATAL, REFUSED = "hand back", "drained", "fatal", "refused"


class Ending(NamedTuple):
    kind: str
    exit_code: int
    reason: str


class WorkerRuntime:
    def __init__(self, settings: LauncherSettings, profile: Profile, partition: Partition,
                 engine: Engine, link: BrokerLink):
        self.settings = settings
        self.profile = profile
        self.partition = partition
        self.engine = engine
        self.link = link
        self.in_flight: set[str] = set()
        self._batched = hasattr(engine, "submit") and hasattr(engine, "set_sink")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._pending: list[OutputItem] = []
        self._flush_scheduled = False
        self._draining = False
        self._done: asyncio.Future[Ending] | None = None
        self._inbox: asyncio.Queue[list[list[bytes]]] = asyncio.Queue()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._end, HAND_BACK, 0, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGUSR1, self._drain, "SIGUSR1: the time limit is near")
        try:
            info = await self.engine.start()
        except Exception as error:  # noqa: BLE001 - any failure to start ends the job with 1
            log.error("the engine failed to start: %s", error)
            return 1
        gc.freeze()  # start-up's objects (modules, the profile, the model's) stay out of collections
        if self._batched:
            self.engine.set_sink(self._on_outputs)  # type: ignore[attr-defined]
        self.link.start(lambda messages: loop.call_soon_threadsafe(self._inbox.put_nowait,
                                                                   messages))
        self.link.ready(encode(Command.READY, self._worker_info(info)))
        log.info("worker %s ready (%s, %s engine)", self.settings.worker_id, self.settings.role,
                 info.engine)
        tasks = [asyncio.create_task(self._serve()), asyncio.create_task(self._report())]
        ending = await self._done
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return await self._finish(ending)

    # ---- messages from the broker -----------------------------------------------------------------

    async def _serve(self) -> None:
        """Messages from the link thread, in the order the broker sent them."""
        while True:
            for frames in await self._inbox.get():
                if frames[0] == RESET:
                    await self._abort_all()
                    continue
                try:
                    command, body = decode(frames, from_worker=False)
                except ProtocolError as error:
                    log.warning("ignoring a message from the broker: %s", error)
                    continue
                await self._handle(command, body)

    async def _handle(self, command: Command, body: Any) -> None:
        if command is Command.WORK:
            for item in body.items:
                self._start(item)
        elif command is Command.ABORT:
            for request_id in body.request_ids:
                await self._abort(request_id)
        elif command is Command.DRAIN:
            self._drain(body.reason or "asked by the broker")
        elif command is Command.DISCONNECT:
            self._end(REFUSED, 1, body.reason)

    def _drain(self, reason: str) -> None:
        if not self._draining:
            log.info("draining: %s", reason)
        self._draining = True
        self._check_drained()

    def _start(self, item: WorkItem) -> None:
        if self._draining or self._ending:
            return self._on_outputs([OutputItem(request_id=item.request_id, finish_reason="abort")])
        self.in_flight.add(item.request_id)
        if self._batched:
            self.engine.submit(item)  # type: ignore[attr-defined]
        else:
            self._tasks[item.request_id] = asyncio.create_task(self._generate(item))

    async def _generate(self, item: WorkItem) -> None:
        try:
            async for output in self.engine.generate(item):
                self._on_outputs([output])
        except EngineError as error:
            self._end(FATAL, 1, f"engine error: {error}")
        except Exception as error:  # noqa: BLE001 - one request's failure goes back to it
            self._on_outputs([OutputItem(request_id=item.request_id, error=str(error))])
        finally:
            self._tasks.pop(item.request_id, None)

    async def _abort(self, request_id: str) -> None:
        if request_id not in self.in_flight:
            return
        self.in_flight.discard(request_id)
        task = self._tasks.pop(request_id, None)
        if task is not None:
            task.cancel()
        await self.engine.abort(request_id)
        self._check_drained()

    async def _abort_all(self) -> None:
        log.warning("re-registered with the broker: aborting %d requests it re-routed",
                    len(self.in_flight))
        for request_id in list(self.in_flight):
            await self._abort(request_id)
        self._pending = [o for o in self._pending if o.request_id in self.in_flight]

    # ---- outputs ------------------------------------------------------------------------------

    def _on_outputs(self, outputs: list[OutputItem]) -> None:
        self._pending.extend(outputs)
        in_flight = self.in_flight
        for output in outputs:
            if output.finish_reason is not None or output.error is not None:
                in_flight.discard(output.request_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            pending, self._pending = self._pending, []
            self.link.send(encode(Command.OUTPUT, OutputBatch(pending)))
        self._check_drained()

    def _check_drained(self) -> None:
        if self._draining and not self.in_flight and not self._pending:
            self._end(DRAINED, 0, "drained")

    async def _report(self) -> None:
        """Keep the heartbeat's stats fresh; notice an engine that died on its own."""
        interval = self.profile.broker.heartbeat_s / 2
        while True:
            stats = self.engine.stats()
            if self._draining or self._ending:
                stats = msgspec.structs.replace(stats, draining=True)
            self.link.stats_body = encode(Command.HEARTBEAT, stats)[2]
            failure = getattr(self.engine, "failed", None)
            if failure is not None:
                self._end(FATAL, 1, f"engine error: {failure!r}")
            await asyncio.sleep(interval)

    # ---- the end ------------------------------------------------------------------------------

    @property
    def _ending(self) -> bool:
        return self._done is not None and self._done.done()

    def _end(self, kind: str, exit_code: int, reason: str) -> None:
        if self._done is not None and not self._done.done():
            log.info("ending (%s): %s", kind, reason)
            self._done.set_result(Ending(kind, exit_code, reason))

    async def _finish(self, ending: Ending) -> int:
        handed_back: list[str] = []
        if ending.kind == HAND_BACK:
            handed_back = sorted(self.in_flight)
            for request_id in handed_back:
                await self._abort(request_id)
        if self._pending:
            self._flush()
        if ending.kind != REFUSED:
            self.link.send(encode(Command.DISCONNECT, Disconnect(
                reason=ending.reason, handed_back=handed_back, fatal=ending.kind == FATAL)))
        else:
            log.error("the broker refused this worker: %s", ending.reason)
        try:
            await asyncio.wait_for(self.engine.shutdown(), timeout=30)
        except Exception as error:  # noqa: BLE001 - the job is ending anyway
            log.warning("engine shutdown: %r", error)
        self.link.close()
        return ending.exit_code

    def _worker_info(self, info: EngineInfo) -> WorkerInfo:
        takes_prefills = self.settings.role in ("decoder", "convertible")
        return WorkerInfo(
            worker_id=self.settings.worker_id, role=self.settings.role,
            model=self.profile.model.name, engine=info.engine, engine_version=info.version,
            partition=self.partition.name, gpus=self.partition.gpus_per_instance,
            job_id=self.settings.job_id, node=self.settings.node, kv_connector=info.kv_connector,
            kv_capacity_tokens=info.kv_capacity_tokens,
            prefill_cap_tokens=self.profile.engine.convertible_prefill_cap_tokens
            if takes_prefills else 0)
