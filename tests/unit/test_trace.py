"""Traces: the three file formats and their detection, windows, rate scaling, the Mixed trace, the
peak-instances scale, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tsslurm.profile import load_profile
from tsslurm.sim import synthetic
from tsslurm.sim.trace import (
    TraceError,
    make_trace,
    mix,
    parse_window,
    peak_instances,
    scale_for_peak,
    scale_rate,
    window,
)
from tsslurm.sim.trace_io import load_trace, read_trace

pytestmark = pytest.mark.timeout(60)
SHARED_TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_azure_csv_keeps_sub_microsecond_timestamps_and_sorts(tmp_path: Path) -> None:
    path = write(tmp_path, "az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:47.0000001,300,20\n"
                 "2023-11-16 18:15:46.5000000,100,10\n"
                 "2023-11-16 18:16:46.5000000,200,30")
    trace = read_trace(path)
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 0.5000001, 60.0], abs=1e-9)
    assert trace.input_tokens.tolist() == [100, 300, 200]
    assert trace.output_tokens.tolist() == [10, 20, 30]


def test_burstgpt_csv_skips_failed_requests(tmp_path: Path) -> None:
    path = write(tmp_path, "b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,"
                 "Log Type\n5,ChatGPT,472,18,490,Conversation log\n"
                 "7.5,GPT-4,1000,0,1000,Conversation log\n9,ChatGPT,20,40,60,API log\n")
    trace = read_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 4.0]
    assert trace.input_tokens.tolist() == [472, 20]
    assert trace.output_tokens.tolist() == [18, 40]


def test_mooncake_jsonl_timestamps_are_milliseconds(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl",
                 '{"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [1]}\n'
                 '{"timestamp": 1500, "input_length": 100, "output_length": 5}\n')
    trace = read_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 1.5]
    assert trace.input_tokens.tolist() == [6955, 100]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("time,prompt,completion\n1,2,3\n", "unknown trace format"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "bad TIMESTAMP"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47,many,2\n", "not a number"),
    ('{"timestamp": 0, "input": 3}\n', "not a Mooncake record"),
])
def test_bad_trace_files_get_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        read_trace(write(tmp_path, "bad.csv", text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(str(tmp_path / "nope.csv"))


def test_window_parsing_and_errors() -> None:
    assert parse_window("600:1200") == (600.0, 1200.0)
    assert parse_window(":600") == (None, 600.0)
    assert parse_window("300:") == (300.0, None)
    for bad in ("600", "a:b", "5:3", "-1:4", "7:7"):
        with pytest.raises(TraceError, match="bad window"):
            parse_window(bad)


def test_window_keeps_requests_inside_and_rebases() -> None:
    trace = synthetic.constant(1.0, 100, 10, 5)
    part = window(trace, 10.0, 20.0)
    assert part.arrival_s.tolist() == [float(k) for k in range(10)]
    with pytest.raises(TraceError, match="holds no request"):
        window(trace, 500.0, 600.0)


def test_scale_rate_keeps_the_span_and_scales_every_window() -> None:
    trace = synthetic.poisson(5.0, 5000, seed=1)
    for factor in (0.5, 2.0, 3.7):
        scaled = scale_rate(trace, factor, seed=3)
        assert len(scaled) == pytest.approx(factor * len(trace), rel=0.03)
        assert scaled.span_s == pytest.approx(trace.span_s, abs=1.0)
        assert np.all(np.diff(scaled.arrival_s) >= 0)
    again = scale_rate(trace, 3.7, seed=3)
    assert np.array_equal(again.arrival_s, scale_rate(trace, 3.7, seed=3).arrival_s)
    with pytest.raises(TraceError, match="bad rate scale"):
        scale_rate(trace, 0.0)


def test_mixed_trace_has_equal_request_rates() -> None:
    def tagged(rate: float, count: int, seed: int, tag: int) -> object:
        base = synthetic.poisson(rate, count, seed=seed)
        return make_trace(f"t{tag}", base.arrival_s, np.full(count, tag), base.output_tokens)

    slow, fast = tagged(2.0, 2000, 1, 100), tagged(8.0, 4000, 2, 200)
    mixed = mix([slow, fast])
    from_slow, from_fast = (mixed.input_tokens == 100).sum(), (mixed.input_tokens == 200).sum()
    assert from_slow + from_fast == len(mixed)
    assert from_slow == pytest.approx(from_fast, rel=0.08)
    assert mixed.span_s <= min(slow.span_s * 2.0 / 5.0, fast.span_s * 8.0 / 5.0) + 1e-6
    with pytest.raises(TraceError, match="at least two"):
        mix([slow])


def test_peak_instances_matches_token_velocity_by_hand() -> None:
    profile = load_profile("llama3-8b-a100")
    v = profile.partitions[0].velocities
    trace = synthetic.constant(4.0, 60, 2000, 300)
    expected = 4.0 * 2000 / min(v.prefill_tokens_per_s, v.kv_transfer_tokens_per_s) \
        + 4.0 * 2300 / v.decode_tokens_per_s[1][1]
    assert peak_instances(trace, profile) == pytest.approx(expected, rel=1e-9)
    scale = scale_for_peak(trace, profile, 16)
    assert peak_instances(scale_rate(trace, scale), profile) == pytest.approx(16, rel=0.05)


def test_make_trace_rejects_nonsense() -> None:
    with pytest.raises(TraceError, match="no requests"):
        make_trace("t", np.array([]), np.array([]), np.array([]))
    with pytest.raises(TraceError, match=">= 0"):
        make_trace("t", np.array([0.0]), np.array([-1]), np.array([3]))


def test_the_shared_azure_traces_load() -> None:
    conv = load_trace(str(SHARED_TRACES / "AzureLLMInferenceTrace_conv.csv"))
    code = load_trace(str(SHARED_TRACES / "AzureLLMInferenceTrace_code.csv"))
    assert (len(conv), len(code)) == (19366, 8819)
    assert conv.span_s == pytest.approx(3501.7, abs=1.0)
    assert int(code.input_tokens.max()) == 7437
    both = load_trace(f"{SHARED_TRACES / 'AzureLLMInferenceTrace_conv.csv'},"
                      f"{SHARED_TRACES / 'AzureLLMInferenceTrace_code.csv'}")
    assert both.name.startswith("mixed(")
