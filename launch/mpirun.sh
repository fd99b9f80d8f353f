#!/usr/bin/env bash
# Starts tpnode as a tensor-parallel job: one rank per GPU (or N CPU ranks), via Open MPI.
#
#   launch/mpirun.sh [options] [--] SUBCOMMAND ARGS...
#     -n, --np N         ranks (default: GPUs on this host, from nvidia-smi; else 1)
#     --cpu              CPU ranks: --backend cpu, cores split evenly, each rank bound to its own
#     --bin PATH         the tpnode binary (default: build/tpnode)
#     --hostfile FILE    several hosts (see launch/hostfile.example); -n is then the total
#     --per-host G       ranks per host with --hostfile (default: GPUs on this host)
#     --iface IF         network interface for MPI and NCCL traffic between hosts (e.g. eth0)
#     --dry-run          print the mpirun command instead of running it
#   Examples:
#     launch/mpirun.sh -- serve -m models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8000
#     launch/mpirun.sh --cpu -n 3 -- generate -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p Hi --temp 0
#     launch/mpirun.sh --hostfile hosts --per-host 8 -n 16 --iface ib0 -- serve -m big.gguf
# See docs/LAUNCH.md. Extra mpirun options can go in the environment as MPIRUN_EXTRA="...".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

NP=""
CPU=0
BIN="$ROOT/build/tpnode"
HOSTFILE=""
PER_HOST=""
IFACE=""
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--np) NP="$2"; shift ;;
    --cpu) CPU=1 ;;
    --bin) BIN="$2"; shift ;;
    --hostfile) HOSTFILE="$2"; shift ;;
    --per-host) PER_HOST="$2"; shift ;;
    --iface) IFACE="$2"; shift ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) echo "mpirun.sh: unknown option $1 (tpnode's own options go after --)" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "mpirun.sh: no tpnode subcommand given (e.g. -- serve -m MODEL)" >&2; exit 2; }
[[ -x "$BIN" ]] || { echo "mpirun.sh: no tpnode binary at $BIN (build first, or --bin)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "mpirun.sh: mpirun not found (apt install openmpi-bin)" >&2; exit 2; }

GPUS=0
if [[ $CPU == 0 ]] && command -v nvidia-smi >/dev/null; then
  GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
fi
if [[ -z "$NP" ]]; then
  NP=$(( GPUS > 0 ? GPUS : 1 ))
fi
if [[ -z "$PER_HOST" ]]; then
  PER_HOST=$(( GPUS > 0 ? GPUS : NP ))
fi

ARGS=(-np "$NP")
TPNODE_EXTRA=()
# Root inside containers and CI.
if [[ $(id -u) -eq 0 ]]; then ARGS+=(--allow-run-as-root); fi
# openib is built into Debian's Open MPI and warns on hosts without InfiniBand; UCX or TCP
# carry the traffic instead.
ARGS+=(--mca btl '^openib')

if [[ -n "$HOSTFILE" ]]; then
  # Fill each host with PER_HOST ranks (one per GPU) before the next: local ranks pick GPUs.
  ARGS+=(--hostfile "$HOSTFILE" --map-by "ppr:${PER_HOST}:node" --bind-to none)
elif [[ $CPU == 1 ]]; then
  CORES="$(nproc)"
  PE=$(( CORES / NP ))
  if (( PE >= 1 )); then
    # Each rank gets PE cores of its own and as many kernel threads.
    ARGS+=(--map-by "slot:PE=${PE}" --bind-to core)
    TPNODE_EXTRA+=(--backend cpu --threads "$PE")
  else
    # More ranks than cores (CI): share them, one thread each.
    ARGS+=(--oversubscribe --bind-to none)
    TPNODE_EXTRA+=(--backend cpu --threads 1)
  fi
else
  # One rank per GPU; a rank's host threads float (they mostly wait on its GPU).
  ARGS+=(--map-by "ppr:${NP}:node" --bind-to none)
  if (( GPUS > 0 && NP > GPUS )); then
    echo "mpirun.sh: $NP ranks but $GPUS GPUs on this host" >&2
    exit 2
  fi
fi

if [[ -n "$IFACE" ]]; then
  # MPI's data (btl_tcp) and control (oob) connections, and NCCL's bootstrap and sockets, all
  # on one interface; otherwise each may pick a different one (docker0, a VPN) and hang.
  ARGS+=(--mca btl_tcp_if_include "$IFACE" --mca oob_tcp_if_include "$IFACE" -x "NCCL_SOCKET_IFNAME=$IFACE")
fi
# Forward the environment tpnode's GPU ranks care about to every host.
for var in CUDA_VISIBLE_DEVICES NCCL_DEBUG NCCL_IB_HCA NCCL_SOCKET_IFNAME; do
  if [[ -n "${!var:-}" ]]; then ARGS+=(-x "$var"); fi
done
# shellcheck disable=SC2206
EXTRA=(${MPIRUN_EXTRA:-})

SUB="$1"; shift
# The user's own --backend / --threads win (CLI11 refuses an option given twice).
if [[ ${#TPNODE_EXTRA[@]} -gt 0 ]]; then
  KEEP=()
  for ((i = 0; i < ${#TPNODE_EXTRA[@]}; i += 2)); do
    opt="${TPNODE_EXTRA[$i]}"
    given=0
    for a in "$@"; do
      if [[ "$a" == "$opt" || "$a" == "$opt="* || ( "$opt" == --threads && ( "$a" == -t || "$a" == -t* ) ) ]]; then given=1; fi
    done
    [[ $given == 0 ]] && KEEP+=("$opt" "${TPNODE_EXTRA[$((i + 1))]}")
  done
  TPNODE_EXTRA=("${KEEP[@]}")
fi
CMD=(mpirun "${ARGS[@]}" "${EXTRA[@]}" "$BIN" "$SUB" "${TPNODE_EXTRA[@]}" "$@")
if [[ $DRY == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
