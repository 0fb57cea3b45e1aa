#!/usr/bin/env bash
# One node: N GPUs, or N CPU ranks over gloo when the machine has no GPU.
#   launch/local.sh NUM_PROCS CONFIG [key.sub=value ...]
#   launch/local.sh 2 recipes/configs/tiny_cpu.yaml train.max_steps=8
set -euo pipefail
nprocs=${1:?usage: launch/local.sh NUM_PROCS CONFIG [overrides...]}; config=${2:?config}; shift 2
cd "$(dirname "$0")/.."
exec "${DEEPSPEED:-deepspeed}" --num_gpus "$nprocs" --master_port "${MASTER_PORT:-29500}" \
  recipes/finetune.py --config "$config" "$@"
