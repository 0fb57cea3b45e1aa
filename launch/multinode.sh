#!/usr/bin/env bash
# Several nodes, started from the first one over ssh/pdsh (passwordless ssh between nodes).
#   launch/multinode.sh HOSTFILE CONFIG [key.sub=value ...]      (HOSTFILE: see launch/hostfile.example)
# MASTER_ADDR defaults to this node's first address; output_dir must be on storage every node shares.
set -euo pipefail
hostfile=${1:?usage: launch/multinode.sh HOSTFILE CONFIG [overrides...]}; config=${2:?config}; shift 2
cd "$(dirname "$0")/.."
exec "${DEEPSPEED:-deepspeed}" --hostfile "$hostfile" --master_addr "${MASTER_ADDR:-$(hostname -I | awk '{print $1}')}" \
  --master_port "${MASTER_PORT:-29500}" recipes/finetune.py --config "$config" "$@"
