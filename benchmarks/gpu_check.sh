#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): one command, about 7 minutes.
#
#   bash benchmarks/gpu_check.sh --out=$OUT            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry_run --out=/tmp/gc
#
# Packages the accelerator's image lacks travel as wheels in .whl/ (docs/gpu.md says which
# and how to fetch them); they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec python3 -m benchmarks.gpu_check "$@"
