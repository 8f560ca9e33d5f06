#!/usr/bin/env bash
# The GPU suite from anywhere: every benchmark at real size and the CUDA-only tests, each part with its own time
# limit (bench/README.md, "One command: the GPU suite").  Arguments go to python -m bench.suite, e.g. --small.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bench.suite "$@"
