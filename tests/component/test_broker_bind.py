"""A broker that cannot bind its port says so in one line (a UserError), and leaves no
connection file behind for clients to follow."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tsslurm.broker.run import open_broker
from tsslurm.errors import UserError
from tsslurm.profile import load_profile

pytestmark = pytest.mark.timeout(60)


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match="cannot bind the broker on 127.0.0.1"), \
                open_broker(load_profile("local-tiny"), tmp_path / "state", host="127.0.0.1",
                            client_port=port):
            pass
    assert not (tmp_path / "state" / "connection.json").exists()
