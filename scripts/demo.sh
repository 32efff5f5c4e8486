#!/usr/bin/env bash
# The main job: environment, demo model, compile the bundled skills, splice one into a new context,
# print the answer and the speed-up over a full prefill of the same prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
.venv/bin/skillforge compile skills/ --model smollm2-135m
.venv/bin/python scripts/demo.py "$@"
