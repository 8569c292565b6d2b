"""`python -m tsslurm.launcher`: run one engine worker (inside a Slurm job, or as a local process).
Everything comes from the environment; the variables are listed in tsslurm/launcher/settings.py.
Exit status: 0 after a drain or a signal (work handed back), 1 on an engine failure or a refusal,
2 when the environment or profile cannot be used."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import zmq

from tsslurm.errors import UserError
from tsslurm.launcher.factory import choose_partition, create_engine
from tsslurm.launcher.link import BrokerLink, BrokerTarget
from tsslurm.launcher.settings import LauncherSettings, connection_file, settings_from_env
from tsslurm.launcher.worker import WorkerRuntime
from tsslurm.profile import load_profile, state_dir
from tsslurm.statedir import StateDir, read_connection_file


def main() -> int:
    try:
        settings = settings_from_env()
        logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                            format=f"%(asctime)s {settings.worker_id} %(levelname)s %(message)s")
        profile = load_profile(settings.profile)
        partition = choose_partition(profile, settings.partition)
        root = Path(settings.state_dir).expanduser() if settings.state_dir else state_dir(profile)
        state = StateDir.open(root)
        engine = create_engine(profile, partition, settings, root)
    except UserError as error:
        print(f"tsslurm launcher: {error}", file=sys.stderr)
        return 2
    context = zmq.Context()
    link = BrokerLink(context, lambda: _locate(settings, state), profile.broker.heartbeat_s,
                      profile.broker.liveness)
    try:
        return asyncio.run(WorkerRuntime(settings, profile, partition, engine, link).run())
    finally:
        context.destroy(linger=1000)


def _locate(settings: LauncherSettings, state: StateDir) -> BrokerTarget:
    """Read afresh at every (re)connection: a restarted broker may listen elsewhere."""
    connection = read_connection_file(connection_file(settings, state.root))
    address = settings.broker_address or connection.worker_address
    return BrokerTarget(address, connection.server_public_key.encode(), state.client_keys())


if __name__ == "__main__":
    sys.exit(main())
