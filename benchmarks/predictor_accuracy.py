"""How well the output-length predictor (tsslurm.policy.predictor) does on a trace.

Replays the trace in time order: each request is predicted at its arrival and learned from at
its (estimated) finish, arrival + 0.2 s + output x 30 ms, so the predictor never sees a length
before the request would have finished. Prints, for the predictor and for a single global
history (the simplest alternative): the share of requests whose likeliest output bucket is the
true one, the mean absolute error of the predicted mean, and the ratio of predicted to true
output tokens (what lambda' sums).

    .venv/bin/python benchmarks/predictor_accuracy.py ../shared/traces/AzureLLMInferenceTrace_conv.csv
"""

from __future__ import annotations

import heapq
import sys

from tsslurm.perfmodel import bucket_of
from tsslurm.policy.predictor import OutputPredictor
from tsslurm.profile.schema import LengthBuckets
from tsslurm.sim.trace_io import load_trace

FINISH_AFTER_S = 0.2
SECONDS_PER_TOKEN = 0.03


def replay(arrivals: list[float], inputs: list[int], outputs: list[int], edges: list[int],
           keyed: bool) -> tuple[float, float, float]:
    predictor = OutputPredictor(edges)
    finishes: list[tuple[float, int]] = []
    right, abs_error, predicted_sum = 0, 0.0, 0.0
    for i, (arrival, input_tokens, output_tokens) in enumerate(zip(arrivals, inputs, outputs)):
        while finishes and finishes[0][0] <= arrival:
            _, j = heapq.heappop(finishes)
            predictor.learn(inputs[j] if keyed else 1, outputs[j])
        forecast = predictor.predict(input_tokens if keyed else 1)
        right += forecast.likeliest_bucket == bucket_of(output_tokens, edges)
        abs_error += abs(forecast.mean - output_tokens)
        predicted_sum += forecast.mean
        heapq.heappush(finishes, (arrival + FINISH_AFTER_S + output_tokens * SECONDS_PER_TOKEN, i))
    n = len(arrivals)
    return right / n, abs_error / n, predicted_sum / max(1, sum(outputs))


def main(paths: list[str]) -> None:
    edges = LengthBuckets().output_edges
    print(f"output buckets <{edges[0]}, <{edges[1]}, >={edges[1]} tokens")
    print(f"{'trace':<40} {'predictor':<22} {'bucket right':>12} {'MAE tokens':>11} {'pred/true':>10}")
    for path in paths:
        trace = load_trace(path)
        columns = (trace.arrival_s.tolist(), trace.input_tokens.tolist(), trace.output_tokens.tolist())
        for label, keyed in (("per input class", True), ("one global history", False)):
            share, mae, ratio = replay(*columns, edges, keyed)
            print(f"{trace.name:<40} {label:<22} {share:>12.1%} {mae:>11.1f} {ratio:>10.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
