"""A plain vLLM engine (offline `vllm.LLM`, no KV connector, float32, greedy) as the reference the
disaggregated and converted paths must match. Reads {"model", "prompts", "max_tokens"} from the
JSON file named by its argument; prints the generated token ids as one JSON line."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with open(sys.argv[1]) as file:
        request = json.load(file)
    llm = LLM(model=request["model"], dtype="float32", enforce_eager=True,
              kv_cache_memory_bytes=64 << 20, max_model_len=2048, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"])
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in request["prompts"]], params,
                           use_tqdm=False)
    print(json.dumps([list(output.outputs[0].token_ids) for output in outputs]), flush=True)


if __name__ == "__main__":
    main()
