#!/usr/bin/env bash
# One node: N GPUs, or N CPU ranks over gloo when the machine has no GPU.
#   launch/local.sh NUM_PROCS CONFIG [key.sub=value ...]
#   launch/local.sh 2 recipes/configs/tiny_cpu.yaml train.max_steps=8
set -euo pipefail
nprocs=${1:?usage: launch/local.sh NUM_PROCS CONFIG [overrides...]}; config=${2:?config}; shift 2
cd "$(dirname "$0")/.."
# DeepSpeed's compiled ops live in the environment the launcher runs from (make install builds them there);
# the recipe sets the same directory itself when this is unset.
launcher=$(command -v "${DEEPSPEED:-deepspeed}")
prefix=$("$(dirname "$launcher")/python" -c 'import sys; print(sys.prefix)' 2>/dev/null || true)
if [ -z "${TORCH_EXTENSIONS_DIR:-}" ] && [ -n "$prefix" ]; then export TORCH_EXTENSIONS_DIR=$prefix/torch_extensions; fi
# a free port unless MASTER_PORT names one: a fixed default collides with any other job on the machine
port=${MASTER_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
# Under the supervisor (launch/supervise.py): SIGTERM or Ctrl-C to this script makes every rank checkpoint and
# exit 0, and the script returns only when no process of the job is left (the launcher alone would not wait).
python=$(dirname "$launcher")/python; [ -x "$python" ] || python=python3
exec "$python" launch/supervise.py "$launcher" --num_gpus "$nprocs" --master_port "$port" \
  recipes/finetune.py --config "$config" "$@"
