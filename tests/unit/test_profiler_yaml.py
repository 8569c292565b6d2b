"""Measured fields written into profile YAML: comments and layout outside the replaced entries
survive, missing entries are added, odd layouts fall back to a full dump, values load back
exactly (any string in the provenance), and a result that would not load is never written."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tsslurm.errors import UserError
from tsslurm.profile import parse_profile
from tsslurm.profiler.command import write_profile
from tsslurm.profiler.yaml_edit import EditError, dump_whole, edit_in_place, render_entry

pytestmark = pytest.mark.timeout(60)

TINY = (Path(__file__).parents[1] / "data" / "profiler" / "commented-tiny.yaml").read_text()
"""A profile with comments beside the fields the profiler replaces."""
VELOCITIES = {
    "prefill_tokens_per_s": 34082, "kv_transfer_tokens_per_s": 301844,
    "kv_bytes_per_token": 1024, "kv_capacity_tokens": 65536,
    "decode_step": {"base_ms": 3.89, "per_sequence_ms": 0.1083, "per_context_token_us": 0.2748},
    "decode_tokens_per_s": [[49858.0, 13638.0, 8586.0], [134503.0, 27309.0, 12868.0],
                            [153047.0, 32643.0, 12850.0]],
    "prefill_overhead_ms": 6.11,
    "measured": {"date": "2026-11-22T05:47:06+00:00", "method": "a: b, # not a comment",
                 "partition": "a100", "node": "a100-1", "job": "1118"},
}
FIELDS = {"model_load_s": 16.1, "queue_wait": {"distribution": "fixed", "mean_s": 0.09},
          "velocities": VELOCITIES}


def comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


def test_tiny_profile_edited_in_place_keeps_everything_else() -> None:
    edited = edit_in_place(TINY, "a100", FIELDS)
    partition = parse_profile(edited).partition("a100")
    assert partition.model_load_s == 16.1
    assert partition.queue_wait.distribution == "fixed" and partition.queue_wait.mean_s == 0.09
    assert partition.velocities is not None
    assert partition.velocities.decode_tokens_per_s[2][0] == 153047.0
    assert partition.velocities.measured["method"] == "a: b, # not a comment"
    before, after = TINY.splitlines(), edited.splitlines()
    assert after[:before.index("    queue_wait: {distribution: fixed, mean_s: 1}    # dev cluster: "
                               "submit -> RUNNING in ~0.5 s")] == \
        before[:before.index("    queue_wait: {distribution: fixed, mean_s: 1}    # dev cluster: "
                             "submit -> RUNNING in ~0.5 s")], "everything above is untouched"
    assert after[after.index("buckets:"):] == before[before.index("buckets:"):]
    assert "- [49858, 13638, 8586]" in edited, "whole numbers are written without .0"
    assert len(comment_lines(edited)) == len(comment_lines(TINY)) - 1, \
        "only the comment inside the replaced velocities block goes"


def test_missing_entries_are_added_to_the_partition() -> None:
    text = re.sub(r"(?ms)^    queue_wait:.*?(?=^buckets:)", "", TINY)
    assert "velocities" not in text
    edited = edit_in_place(text, "a100", FIELDS)
    partition = parse_profile(edited).partition("a100")
    assert partition.velocities is not None and partition.model_load_s == 16.1
    assert edited.index("velocities:") < edited.index("buckets:")


def test_only_the_named_partition_changes() -> None:
    two = TINY.replace("partitions:\n", "partitions:\n  - name: h100\n    template: h100.sbatch\n"
                                        "    model_load_s: 99\n", 1)
    edited = edit_in_place(two, "a100", FIELDS)
    profile = parse_profile(edited)
    assert profile.partition("h100").model_load_s == 99
    assert profile.partition("a100").model_load_s == 16.1


def test_flow_style_partitions_are_dumped_whole() -> None:
    data = yaml.safe_load(TINY)
    flow = yaml.safe_dump(data, default_flow_style=True, width=10_000)
    with pytest.raises(EditError):
        edit_in_place(flow, "a100", FIELDS)
    dumped = dump_whole(flow, "a100", FIELDS)
    assert parse_profile(dumped).partition("a100").model_load_s == 16.1


def test_an_unknown_partition_is_an_edit_error() -> None:
    with pytest.raises(EditError):
        edit_in_place(TINY, "nope", FIELDS)
    with pytest.raises(EditError):
        dump_whole(TINY, "nope", FIELDS)


def test_render_entry_layout() -> None:
    assert render_entry("queue_wait", {"distribution": "fixed", "mean_s": 1.5}, 4) == \
        "queue_wait: {distribution: fixed, mean_s: 1.5}"
    assert render_entry("grid", [[1.0, 2.5], [3, 4]], 2) == "grid:\n    - [1, 2.5]\n    - [3, 4]"
    nested = render_entry("m", {"a": "x: y", "b": "1", "c": "", "d": "yes", "e": "#"}, 0)
    assert yaml.safe_load(nested) == {"m": {"a": "x: y", "b": "1", "c": "", "d": "yes", "e": "#"}}


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.dictionaries(st.text(string.ascii_lowercase + "_", min_size=1, max_size=12),
                       st.text(max_size=40), min_size=5, max_size=8))
def test_any_provenance_strings_load_back(provenance: dict[str, str]) -> None:
    fields = {"velocities": {**VELOCITIES, "measured": provenance}}
    loaded = parse_profile(edit_in_place(TINY, "a100", fields)).partition("a100")
    assert loaded.velocities is not None and loaded.velocities.measured == provenance


def test_write_profile_writes_a_file_that_loads_back(tmp_path: Path) -> None:
    target = tmp_path / "out.yaml"
    assert write_profile(TINY, target, "a100", FIELDS, tmp_path) is True
    assert parse_profile(target.read_text()).partition("a100").model_load_s == 16.1


def test_a_result_that_would_not_load_is_never_written(tmp_path: Path) -> None:
    target = tmp_path / "profile.yaml"
    target.write_text(TINY)
    bad = {"velocities": {**VELOCITIES, "decode_tokens_per_s": [[1.0, 2.0]]}}
    with pytest.raises(UserError, match="nothing was written"):
        write_profile(TINY, target, "a100", bad, tmp_path)
    assert target.read_text() == TINY
    assert [p.name for p in tmp_path.iterdir()] == ["profile.yaml"], "no temporary file left"


def test_a_profile_that_cannot_be_written_is_kept_aside(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    spare_dir = tmp_path / "spare"
    spare_dir.mkdir()
    with pytest.raises(UserError, match=r"cannot write the profile to .*the measured profile "
                                        r"is in .*spare/profile\.measured-\d{8}T\d{6}\.yaml"):
        write_profile(TINY, blocker / "profile.yaml", "a100", FIELDS, spare_dir)
    [spare] = spare_dir.iterdir()
    assert parse_profile(spare.read_text()).partition("a100").model_load_s == 16.1
