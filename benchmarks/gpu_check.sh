#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one command, about 7 minutes (docs/gpu.md).
#
#   bash benchmarks/gpu_check.sh --out=gpu_check_out    # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry_run --out=/tmp/gc
#
# On a machine without internet access, wheels of missing packages placed in .whl/ are
# installed into a temporary folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "${TMPDIR:-/tmp}/mct_jax_site" .whl/*.whl
  export PYTHONPATH=${TMPDIR:-/tmp}/mct_jax_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec python3 -m benchmarks.gpu_check "$@"
