"""The broker job's record and hand-over (tsslurm/broker/broker_job.py, the control file, the
deployment lock): a successor takes over only while the record still names it, a stale
hand-over request is withdrawn and nothing else is, and the lock can be waited for."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tsslurm.broker import broker_job
from tsslurm.broker.autoscaler import CONTROL_FILE, Control, withdraw_handover, write_control
from tsslurm.broker.broker_job import BrokerJob
from tsslurm.broker.up import deployment_lock
from tsslurm.errors import UserError

pytestmark = pytest.mark.timeout(30)


def test_only_the_recorded_successor_takes_over(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    with pytest.raises(UserError, match="no longer this deployment's successor"):
        broker_job.check_successor(tmp_path)  # no record: the deployment was taken down
    broker_job.write(tmp_path, BrokerJob(job_id="11", slurm_conf="", successor="13"))
    with pytest.raises(UserError, match="job 12"):
        broker_job.check_successor(tmp_path)
    broker_job.write(tmp_path, BrokerJob(job_id="11", slurm_conf="", successor="12"))
    assert broker_job.check_successor(tmp_path) == "12"
    broker_job.promote(tmp_path, "12")
    assert broker_job.read(tmp_path) == BrokerJob(job_id="12", slurm_conf="")
    assert broker_job.own_job(tmp_path) is not None


def test_a_job_that_is_not_the_broker_job_has_nothing_to_rotate(tmp_path: Path,
                                                                monkeypatch) -> None:
    broker_job.write(tmp_path, BrokerJob(job_id="11", slurm_conf="", command=["tsslurm", "up"]))
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    assert broker_job.own_job(tmp_path) is None
    with pytest.raises(UserError, match="nothing to rotate"):
        broker_job.submit_successor(tmp_path)


def test_a_stale_handover_request_is_withdrawn_and_a_down_is_not(tmp_path: Path) -> None:
    write_control(tmp_path, Control("handover"))
    withdraw_handover(tmp_path)
    assert not (tmp_path / CONTROL_FILE).exists()
    write_control(tmp_path, Control("down", now=True))
    withdraw_handover(tmp_path)
    assert (tmp_path / CONTROL_FILE).exists()


def test_the_deployment_lock_can_be_waited_for(tmp_path: Path) -> None:
    released = threading.Event()

    def hold() -> None:
        with deployment_lock(tmp_path):
            held.set()
            time.sleep(0.5)
        released.set()

    held = threading.Event()
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    with pytest.raises(UserError, match="already up"), deployment_lock(tmp_path):
        pass
    with deployment_lock(tmp_path, wait_s=10):
        assert released.is_set()
    holder.join()
