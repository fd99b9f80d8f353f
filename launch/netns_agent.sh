#!/usr/bin/env bash
# Open MPI's remote-shell agent for the namespace hosts of launch/netns_hosts.sh: mpirun calls it
# as it would call ssh,
#   netns_agent.sh [ssh options] HOST WORD...
# and it runs WORD... on HOST, i.e. inside network namespace HOST (and its UTS namespace, so
# gethostname() answers HOST). As with ssh, the words are joined by spaces and given to a shell:
# Open MPI quotes the orted command line for that shell (e.g. -mca orte_hnp_uri "...;tcp://...").
# Use:  mpirun --mca plm_rsh_agent /abs/path/launch/netns_agent.sh --mca plm_rsh_no_tree_spawn 1 ...
# Only namespaces that exist are entered; any other host is an error, never a real ssh.
set -euo pipefail

STATE_DIR=/run/tpnode-netns

# ssh-style options that Open MPI may put before the host (e.g. -x); none take a value here.
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
[[ $# -ge 2 ]] || { echo "netns_agent.sh: usage: netns_agent.sh HOST COMMAND..." >&2; exit 255; }
host="$1"; shift

if [[ ! -e "/run/netns/$host" ]]; then
  echo "netns_agent.sh: no network namespace for host '$host' (launch/netns_hosts.sh up?)" >&2
  exit 255
fi

uts=()
[[ -e "$STATE_DIR/$host.uts" ]] && uts=(nsenter --uts="$STATE_DIR/$host.uts" --)
exec "${uts[@]}" ip netns exec "$host" /bin/sh -c "$*"
