"""Engines behind the launcher: `vllm` (real AsyncLLM) and `mock` (profile-timed emulation)."""
