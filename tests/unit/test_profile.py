"""Profiles: every shipped profile loads; a bad profile gets one error listing every problem."""

from pathlib import Path

import pytest

from tsslurm.profile import ProfileError, load_profile, parse_profile

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
