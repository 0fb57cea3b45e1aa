#!/usr/bin/env bash
# Several nodes, started from the first one over ssh/pdsh (passwordless ssh between nodes).
#   launch/multinode.sh HOSTFILE CONFIG [key.sub=value ...]      (HOSTFILE: see launch/hostfile.example)
# MASTER_ADDR: the address the other nodes reach node 0 at. Unset, it is the address the hostfile's first host
# resolves to (never a guess among this machine's interfaces). output_dir must be on storage every node shares.
# Variables the other nodes need (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, HF_HOME, TORCH_EXTENSIONS_DIR, ...) go in a
# .deepspeed_env file (NAME=value per line) in this directory or in ~: the deepspeed launcher exports them there.
set -euo pipefail
hostfile=${1:?usage: launch/multinode.sh HOSTFILE CONFIG [overrides...]}; config=${2:?config}; shift 2
cd "$(dirname "$0")/.."
first=$(awk '!/^[[:space:]]*(#|$)/ {print $1; exit}' "$hostfile")
master=${MASTER_ADDR:-$(getent hosts "$first" | awk '{print $1; exit}' || true)}
if [ -z "$master" ]; then
  echo "launch/multinode.sh: cannot resolve '$first' (the first host of $hostfile); set MASTER_ADDR to node 0's address" >&2
  exit 2
fi
exec "${DEEPSPEED:-deepspeed}" --hostfile "$hostfile" --master_addr "$master" \
  --master_port "${MASTER_PORT:-29500}" recipes/finetune.py --config "$config" "$@"
