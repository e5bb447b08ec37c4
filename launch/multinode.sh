#!/usr/bin/env bash
# Multi-node launch with the rendezvous taken from the environment; run the same line on every node:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 launch/multinode.sh --config configs/a100x8.yaml data.root=/data/sc
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 MASTER_PORT=29500 launch/multinode.sh --config configs/a100x8.yaml data.root=/data/sc
# GPUS_PER_NODE defaults to 8. Everything after the variables is passed to `python -m sctrain`.
set -euo pipefail
: "${NNODES:?set NNODES (number of machines)}"
: "${NODE_RANK:?set NODE_RANK (0 on the machine that hosts the rendezvous)}"
: "${MASTER_ADDR:?set MASTER_ADDR (address of machine rank 0, reachable from every machine)}"
MASTER_PORT="${MASTER_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
exec accelerate launch --config_file "$(dirname "$0")/multinode.yaml" \
  --num_machines "$NNODES" --num_processes "$((NNODES * GPUS_PER_NODE))" --machine_rank "$NODE_RANK" \
  --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
  -m sctrain "$@"
