#!/usr/bin/env bash
# Set up (with test tools), then run the full test suite. Extra arguments go to pytest.
# DISTREN_TEST_WORKERS: pytest-xdist workers (default 3; 0 runs the tests in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
exec .venv/bin/python -m pytest -n "${DISTREN_TEST_WORKERS:-3}" --dist loadgroup "$@"
