"""The adapter's logic with Slurm's commands replaced by a small honest fake that replays output
recorded from a real cluster (tests/data/slurm/): batching, the final-state cache, staleness,
jobcomp mode, and error handling. The real commands are exercised in tests/slurm/."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tsslurm.errors import UserError
from tsslurm.slurm import parse
from tsslurm.slurm.adapter import UNCONFIRMED_S, SlurmAdapter, SlurmError

DATA = Path(__file__).parents[1] / "data" / "slurm"
Responder = Callable[[list[str]], str]


def recorded(mode: str, name: str) -> str:
    return (DATA / mode / f"{name}.txt").read_text()


def only(text: str, ids: Sequence[str]) -> str:
    """The recorded lines of the jobs `ids` (what `-j ids` would print)."""
    return "".join(line + "\n" for line in text.splitlines() if line.split("|")[0] in ids)


def requested_ids(argv: list[str]) -> list[str]:
    return argv[argv.index("-j") + 1].split(",")


class ReplayAdapter(SlurmAdapter):
    """A SlurmAdapter whose commands answer from `responders` (by command name)."""

    def __init__(self, responders: dict[str, Responder], mode: str = "accounting"):
        super().__init__(env={})
        self.responders = {"scontrol": lambda argv: recorded(mode, "show_config"), **responders}
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], stdin: str | None = None,
            timeout_s: float | None = None) -> str:
        self.calls.append(list(argv))
        return self.responders[argv[0]](list(argv))

    def commands(self) -> list[str]:
        return [call[0] for call in self.calls if call[0] != "scontrol"]


def failing(argv: list[str]) -> str:
    raise SlurmError(argv, 1, "", "slurm_load_jobs error: Unable to contact slurm controller")


def test_live_jobs_come_from_one_squeue() -> None:
    squeue = recorded("accounting", "squeue_live")
    ids = ["4", "5", "6", "7", "12"]
    adapter = ReplayAdapter({"squeue": lambda argv: only(squeue, requested_ids(argv))})
    result = adapter.poll(ids)
    assert adapter.commands() == ["squeue"] and not result.stale and not result.missing
    assert requested_ids(adapter.calls[0]) == ids
    assert [result.statuses[i].state for i in ids] == ["RUNNING"] * 2 + ["PENDING"] * 3


def test_ended_jobs_come_from_one_sacct_and_are_cached() -> None:
    squeue, sacct = recorded("accounting", "squeue_final"), recorded("accounting", "sacct_final")
    adapter = ReplayAdapter({
        "squeue": lambda argv: only(squeue, [i for i in requested_ids(argv) if i != "2"]),
        "sacct": lambda argv: only(sacct, requested_ids(argv)),
    })
    first = adapter.poll(["1", "2", "4"])
    assert adapter.commands() == ["squeue", "sacct"]
    assert requested_ids(adapter.calls[-1]) == ["1", "2", "4"]
    assert (first.statuses["2"].state, first.statuses["2"].exit_code) == ("FAILED", 3)
    assert first.statuses["4"].state == "TIMEOUT" and first.statuses["4"].source == "sacct"
    adapter.calls.clear()
    assert adapter.poll(["1", "2", "4"]).statuses == first.statuses
    assert adapter.commands() == []


def test_sacct_is_asked_only_about_jobs_that_ended() -> None:
    live, sacct = recorded("accounting", "squeue_live"), recorded("accounting", "sacct_final")
    adapter = ReplayAdapter({
        "squeue": lambda argv: only(live, requested_ids(argv)),
        "sacct": lambda argv: only(sacct, requested_ids(argv)),
    })
    result = adapter.poll(["4", "2", "999"])
    assert requested_ids(adapter.calls[-1]) == ["2", "999"]
    assert result.statuses["4"].running and result.statuses["2"].exit_code == 3
    assert result.missing == ("999",) and not result.stale


def test_an_unconfirmed_final_state_is_cached_once_accounting_missed_it_long_enough() -> None:
    final = recorded("accounting", "squeue_final")
    adapter = ReplayAdapter({"squeue": lambda argv: only(final, requested_ids(argv)),
                             "sacct": lambda argv: ""})
    now = [0.0]
    adapter.clock = lambda: now[0]
    for _ in range(int(UNCONFIRMED_S) + 1):
        status = adapter.poll(["5"]).statuses["5"]
        assert status.state == "CANCELLED" and status.source == "squeue"
        assert adapter.commands()[-1] == "sacct", "sacct is asked again while it lags"
        now[0] += 1.0
    adapter.calls.clear()
    adapter.poll(["5"])
    assert adapter.commands() == []


def test_a_failed_poll_keeps_last_known_states_and_marks_them_stale() -> None:
    live = recorded("accounting", "squeue_live")
    adapter = ReplayAdapter({"squeue": lambda argv: only(live, requested_ids(argv))})
    known = adapter.poll(["4", "6"]).statuses
    adapter.responders["squeue"] = failing
    stale = adapter.poll(["4", "6", "77"])
    assert stale.stale and "Unable to contact" in stale.error
    assert stale.statuses == known and stale.missing == ("77",)


def test_a_failed_sacct_is_stale_too() -> None:
    final = recorded("accounting", "squeue_final")
    adapter = ReplayAdapter({"squeue": lambda argv: only(final, requested_ids(argv)),
                             "sacct": failing})
    result = adapter.poll(["1"])
    assert result.stale and "Unable to contact" in result.error
    assert result.statuses["1"].state == "COMPLETED" and result.statuses["1"].exit_code is None


def test_without_accounting_finished_jobs_come_from_the_jobcomp_file() -> None:
    sacct = recorded("jobcomp", "sacct_final")
    adapter = ReplayAdapter({"squeue": lambda argv: "",
                             "sacct": lambda argv: only(sacct, requested_ids(argv))},
                            mode="jobcomp")
    result = adapter.poll(["2", "4"])
    sacct_call = adapter.calls[-1]
    assert sacct_call[:2] == ["sacct", "-c"]
    assert sacct_call[sacct_call.index("-o") + 1] == ",".join(parse.JOBCOMP_FIELDS)
    assert result.statuses["2"].exit_code == 3 and result.statuses["4"].state == "TIMEOUT"
    assert not adapter.has_accounting


def test_squeue_forgetting_a_single_job_is_not_an_error() -> None:
    def squeue(argv: list[str]) -> str:
        raise SlurmError(argv, 1, "", "slurm_load_jobs error: Invalid job id specified")

    adapter = ReplayAdapter({"squeue": squeue, "sacct": lambda argv: ""})
    result = adapter.poll(["31337"])
    assert not result.stale and result.missing == ("31337",)


def test_submit_returns_the_job_id_and_passes_the_script_on_stdin() -> None:
    seen = {}

    class Submitting(ReplayAdapter):
        def run(self, argv, stdin=None, timeout_s=None):
            seen["stdin"] = stdin
            return super().run(argv, stdin, timeout_s)

    adapter = Submitting({"sbatch": lambda argv: "42;tsslurmdev\n"})
    assert adapter.submit("#!/bin/bash\ntrue\n", ["--hold"]) == "42"
    assert adapter.calls[0] == ["sbatch", "--parsable", "--hold"] and "true" in seen["stdin"]
    adapter.responders["sbatch"] = lambda argv: "sbatch: warning: something\n"
    with pytest.raises(SlurmError, match="no job id"):
        adapter.submit("#!/bin/bash\n")


def test_cancel_builds_one_scancel_and_tolerates_finished_jobs() -> None:
    adapter = ReplayAdapter({"scancel": lambda argv: ""})
    adapter.cancel(["5", "6", "5"], signal="USR1", batch_only=True)
    adapter.cancel([])
    assert adapter.calls == [["scancel", "--signal=USR1", "--batch", "5", "6"]]

    def finished(argv: list[str]) -> str:
        raise SlurmError(argv, 1, "", "scancel: error: Kill job error on job id 5: "
                                      "Job/step already completing or completed\n")

    adapter.responders["scancel"] = finished
    adapter.cancel(["5"])

    def refused(argv: list[str]) -> str:
        raise SlurmError(argv, 1, "", "scancel: error: Invalid job id x\n")

    adapter.responders["scancel"] = refused
    with pytest.raises(SlurmError, match="Invalid job id"):
        adapter.cancel(["x"])


def test_node_states_are_checked_before_scontrol_runs() -> None:
    adapter = ReplayAdapter({})
    with pytest.raises(UserError, match="not one of"):
        adapter.set_node_state("a100-1", "EXPLODE")
    with pytest.raises(UserError, match="needs a reason"):
        adapter.set_node_state("a100-1", "DRAIN")
    assert adapter.calls == []


def test_a_missing_slurm_conf_fails_at_once(tmp_path: Path) -> None:
    adapter = SlurmAdapter.for_conf(tmp_path / "missing.conf")
    with pytest.raises(SlurmError, match="missing.conf does not exist") as caught:
        adapter.nodes()
    assert caught.value.argv[0] == "sinfo" and caught.value.returncode is None
    polled = adapter.poll(["1"])
    assert polled.stale and polled.missing == ("1",) and "does not exist" in polled.error


def test_slurm_errors_carry_everything() -> None:
    error = SlurmError(["sbatch", "--parsable"], 1, "out", "sbatch: error: invalid partition\n")
    assert (error.argv, error.returncode, error.stdout) == (["sbatch", "--parsable"], 1, "out")
    assert str(error) == ("`sbatch --parsable` failed (exit 1): "
                          "sbatch: error: invalid partition")
    assert isinstance(error, UserError)
