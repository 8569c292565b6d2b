"""Profiles: every shipped profile loads; a bad profile gets one error listing every problem."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsslurm.profile import ProfileError, load_profile, parse_profile
from tsslurm.profile.schema import Slo

PROFILES = sorted(Path(__file__).resolve().parents[2].joinpath("profiles").glob("*.yaml"))
TINY = Path(__file__).resolve().parents[2].joinpath("profiles", "local-tiny.yaml").read_text()


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profiles_load(path: Path) -> None:
    profile = load_profile(path)
    assert profile.partitions
    for partition in profile.partitions:
        assert partition.velocities is not None


def test_profile_by_name() -> None:
    assert load_profile("local-tiny").deployment == "local-tiny"


def test_every_problem_is_listed_with_its_path() -> None:
    text = (TINY.replace("prefill_tokens_per_s: 23267", "prefill_tokens_per_s: -5")
                .replace("mem: 3G", "mem: 3G\n    gpus_per_instanse: 2")
                .replace("max_context_tokens: 2048", "max_context_tokens: lots"))
    with pytest.raises(ProfileError) as caught:
        parse_profile(text)
    paths = {problem.path for problem in caught.value.problems}
    assert paths == {
        "model.max_context_tokens",
        "partitions[0].gpus_per_instanse",
        "partitions[0].velocities.prefill_tokens_per_s",
    }
    message = str(caught.value)
    assert "3 problems" in message and "did you mean 'gpus_per_instance'" in message
    assert "V_P" in message  # why it matters


def test_cross_field_rules() -> None:
    text = (TINY.replace("min: 1, max: 2}", "min: 3, max: 2}")
                .replace("[45306, 9539, 6593]", "[1, 2]")
                .replace('"01:00:00"', "1h"))
    with pytest.raises(ProfileError) as caught:
        parse_profile(text)
    paths = [problem.path for problem in caught.value.problems]
    assert "partitions[0].time_limit" in paths
    assert "partitions[0].velocities.decode_tokens_per_s" in paths
    assert "pools.prefill" in paths and "pools.decode" in paths


@pytest.mark.parametrize("text", ["a: [", "- 1", "", "deployment: x"])
def test_malformed_yaml_is_a_clear_error(text: str) -> None:
    with pytest.raises(ProfileError):
        parse_profile(text)


def test_unknown_policy_is_reported() -> None:
    with pytest.raises(ProfileError, match="policy"):
        parse_profile(TINY.replace("name: tokenscale", "name: no-such-policy"))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.yaml")


@given(st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=50))
def test_ttft_targets_of_many_requests_agree_with_one_at_a_time(inputs: list[int]) -> None:
    slo = Slo()
    many = slo.ttft_targets_s(np.array(inputs))
    assert many.tolist() == pytest.approx([slo.ttft_ms_for(x) / 1000.0 for x in inputs])


def test_ttft_tier_edges() -> None:
    slo = Slo()
    assert [slo.ttft_ms_for(x) for x in (0, 255, 256, 1023, 1024, 8191)] == \
        [250, 250, 400, 400, 2000, 2000]
    assert slo.ttft_ms_for(8192) == pytest.approx(2000 + 1000 * 8192 / 6667)


def test_a_port_out_of_range_is_a_profile_error() -> None:
    text = TINY.replace("broker:\n", "broker:\n  client_port: 70000\n", 1)
    with pytest.raises(ProfileError, match="broker.client_port.*<= 65535"):
        parse_profile(text)
