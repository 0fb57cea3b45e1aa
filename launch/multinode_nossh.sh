#!/usr/bin/env bash
# Several nodes without ssh between them: run this on every node, each with its own NODE_RANK (0 .. N-1).
#   launch/multinode_nossh.sh HOSTFILE NODE_RANK MASTER_ADDR CONFIG [key.sub=value ...]
# MASTER_ADDR is node 0's address; every node uses the same hostfile, config and shared output_dir.
set -euo pipefail
hostfile=${1:?usage: launch/multinode_nossh.sh HOSTFILE NODE_RANK MASTER_ADDR CONFIG [overrides...]}
node_rank=${2:?node rank}; master_addr=${3:?master address}; config=${4:?config}; shift 4
cd "$(dirname "$0")/.."
exec "${DEEPSPEED:-deepspeed}" --hostfile "$hostfile" --no_ssh --node_rank "$node_rank" --master_addr "$master_addr" \
  --master_port "${MASTER_PORT:-29500}" recipes/finetune.py --config "$config" "$@"
