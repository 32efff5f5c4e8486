#!/usr/bin/env bash
# The whole test suite: environment, demo model, PostgreSQL on loopback (S3 on loopback is started by the tests),
# then pytest. pytest's exit code 5 (no tests collected) is a failure here: it means nothing ran.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/postgres.sh
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
