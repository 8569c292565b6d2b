"""PolicyRunner and the registry: references with parameters, clear errors for bad ones, user
policies from module:function, profile validation of policy params."""

from __future__ import annotations

import sys
import types

import pytest
from policy_factory import rates, snapshot

from tsslurm.errors import UserError
from tsslurm.policy.registry import validate_policy_config
from tsslurm.policy.runner import PolicyRunner, parse_policy_ref
from tsslurm.policy.snapshot import Decision, Submit
from tsslurm.policy.tokenscale import TokenScaleParams

pytestmark = pytest.mark.timeout(60)


def test_a_reference_carries_parameters() -> None:
    assert parse_policy_ref("aibrix@kv_target=0.5@cooldown=3") == \
        ("aibrix", {"kv_target": "0.5", "cooldown": "3"})
    runner = PolicyRunner.from_ref("aibrix@kv_target=0.5")
    assert runner.params.kv_target == 0.5


@pytest.mark.parametrize("ref, message", [
    ("nosuch", "unknown policy"),
    ("aibrix@kv_target", "expected name@key=value"),
    ("aibrix@kv_target=2", "params of policy"),
    ("aibrix@colour=red", "params of policy"),
    ("no.such.module:decide", "cannot be used"),
    ("@x=1", "no policy name"),
])
def test_bad_references_get_a_clear_user_error(ref: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        PolicyRunner.from_ref(ref)


def test_profile_validation_reports_bad_policy_params() -> None:
    assert validate_policy_config("tokenscale", {}) == []
    problems = validate_policy_config("tokenscale", {"prefill_utilisation": 3})
    assert problems and "prefill_utilisation" in problems[0]


def test_a_user_policy_loads_from_module_and_function() -> None:
    module = types.ModuleType("my_site_policy")

    def decide(snap, params, state):
        return Decision({"prefill": {"a100": int(params.get("n", 1))}}, ["mine"],
                        {"calls": state.get("calls", 0) + 1})

    module.decide = decide
    sys.modules["my_site_policy"] = module
    try:
        runner = PolicyRunner.from_ref("my_site_policy:decide@n=2")
        step = runner.step(snapshot(token_rates=rates(1.0)))
        assert step.actions == [Submit("prefill", "a100", 2, step.actions[0].reason)]
        runner.step(snapshot(1.0))
        assert runner.state == {"calls": 2}
    finally:
        del sys.modules["my_site_policy"]


def test_a_policy_that_returns_no_decision_is_reported() -> None:
    module = types.ModuleType("broken_policy")
    module.decide = lambda snap, params, state: {"prefill": 1}
    sys.modules["broken_policy"] = module
    try:
        with pytest.raises(UserError, match="not a Decision"):
            PolicyRunner("broken_policy:decide").step(snapshot())
    finally:
        del sys.modules["broken_policy"]


def test_the_hold_follows_the_partitions_start_up_unless_fixed() -> None:
    snap = snapshot()
    startup = snap.partitions[0].startup_s
    default = TokenScaleParams().hold_factor
    assert PolicyRunner("tokenscale").hold_s(snap)["prefill"] == pytest.approx(default * startup)
    assert PolicyRunner("tokenscale", {"hold_factor": 3}).hold_s(snap)["decode"] == \
        pytest.approx(3 * startup)
    assert PolicyRunner("aibrix").hold_s(snap)["decode"] == 300.0
