#!/usr/bin/env bash
# Create .venv with skillforge and its test tools, and fetch the demo model and gemma-3-270m (the real
# gemma3 model tests/test_gemma.py splices on). Idempotent: a second run installs nothing and fetches
# nothing; an interrupted fetch resumes. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import skillforge, torch, transformers, moto, psycopg, fastapi, uvicorn, prometheus_client, openai" 2>/dev/null; then
  echo "setup: installing into .venv (torch CPU build first, so nothing pulls a CUDA build) ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
fi
export SKILLFORGE_MODELS="${SKILLFORGE_MODELS:-$(.venv/bin/python -c 'import platformdirs; print(platformdirs.user_data_dir("skillforge"))')/models}"
.venv/bin/skillforge model pull smollm2-135m >/dev/null
.venv/bin/skillforge model pull gemma-3-270m >/dev/null
