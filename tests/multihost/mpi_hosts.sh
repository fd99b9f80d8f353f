#!/usr/bin/env bash
# The harness itself, without tpnode: 3 namespace hosts, mpirun through the agent starts one
# rank on each; every rank sees its own hostname and address, Open MPI counts 3 nodes, an
# all-reduce over TCP gives the closed-form sum; the hosts have no route off the subnet, an
# unknown host is refused by the agent, and teardown leaves nothing behind.
#   bash tests/multihost/mpi_hosts.sh      (root; exit 77 = skipped, with the reason)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/netns_lib.bash"

mh_init tpmh1 10.213.1
command -v mpicc >/dev/null || mh_skip "mpicc not found (libopenmpi-dev)"
mh_hosts_up 3

echo "== mpirun hostname on 3 hosts"
"${MH_MPIRUN[@]}" -np 3 sh -c 'echo "$OMPI_COMM_WORLD_RANK $(hostname) $(ip -4 -o addr show eth0 | awk "{print \$4}")"' \
    >"$WORK/names" 2>"$WORK/names.err" || { mh_fail "mpirun hostname failed"; cat "$WORK/names.err"; }
sort "$WORK/names" | sed 's/^/   | /'
for i in 1 2 3; do
  grep -qx "$((i - 1)) $(mh_host "$i") $(mh_addr "$i")/24" "$WORK/names" ||
    mh_fail "rank $((i - 1)) did not run on $(mh_host "$i") at $(mh_addr "$i")"
done

echo "== MPI all-reduce over TCP between the hosts"
mpicc -O2 -o "$WORK/mpi_probe" "$MH_SOURCE_DIR/tests/multihost/mpi_probe.c" || mh_skip "mpicc cannot build an MPI program"
"${MH_MPIRUN[@]}" -np 3 "$WORK/mpi_probe" 200 >"$WORK/probe" 2>"$WORK/probe.err" ||
  { mh_fail "mpi_probe failed"; tail -20 "$WORK/probe.err"; }
sed 's/^/   | /' "$WORK/probe"
for i in 1 2 3; do
  grep -qx "probe: rank $((i - 1)) host $(mh_host "$i") local_size 1" "$WORK/probe" ||
    mh_fail "MPI does not see rank $((i - 1)) alone on $(mh_host "$i")"
done
grep -qx "probe: allreduce ok" "$WORK/probe" || mh_fail "all-reduce gave a wrong sum"

echo "== pinned ports (what a firewall between hosts would allow)"
# Open MPI's control (oob) and data (btl) listeners pinned: every TCP connection between two
# hosts, or between a host and mpirun, must have one of these ports at its listening end.
OOB_PORT=40100; BTL_MIN=40200; BTL_RANGE=100
"${MH_MPIRUN[@]}" -np 3 --mca oob_tcp_static_ipv4_ports "$OOB_PORT" \
    --mca btl_tcp_port_min_v4 "$BTL_MIN" --mca btl_tcp_port_range_v4 "$BTL_RANGE" \
    "$WORK/mpi_probe" 20 6 >"$WORK/pinned" 2>"$WORK/pinned.err" &
pinned_pid=$!
MH_BG_PIDS+=("$pinned_pid")
for _ in $(seq 1 300); do grep -q "probe: holding" "$WORK/pinned" && break; mh_gone "$pinned_pid" && break; sleep 0.1; done
if ! grep -q "probe: holding" "$WORK/pinned"; then
  mh_fail "mpi_probe with pinned ports did not start"; tail -20 "$WORK/pinned.err"
else
  pinned() { (( $1 == OOB_PORT || ($1 >= BTL_MIN && $1 < BTL_MIN + BTL_RANGE) )); }
  n_conn=0
  for i in 1 2 3; do
    # "ESTAB 0 0 10.213.1.1:50256 10.213.1.254:40100 ..."
    while read -r _ _ _ local peer _; do
      [[ "$local" == "$MH_SUBNET".* && "$peer" == "$MH_SUBNET".* ]] || continue
      n_conn=$((n_conn + 1))
      if ! pinned "${local##*:}" && ! pinned "${peer##*:}"; then
        mh_fail "$(mh_host "$i"): connection $local -> $peer uses no pinned port"
      fi
    done < <(bash "$MH_HOSTS_SH" exec "$(mh_host "$i")" ss -Htn state established 2>/dev/null | sed 's/^/ESTAB /')
  done
  echo "   $n_conn connections on the subnet seen from the hosts, all to port $OOB_PORT or $BTL_MIN-$((BTL_MIN + BTL_RANGE - 1))"
  (( n_conn >= 6 )) || mh_fail "only $n_conn connections seen (3 daemons to mpirun and 3 between ranks expected)"
fi
wait "$pinned_pid" || mh_fail "mpi_probe with pinned ports failed"

echo "== isolation"
for i in 1 2 3; do
  routes="$(bash "$MH_HOSTS_SH" exec "$(mh_host "$i")" ip -4 route show)"
  if grep -q default <<<"$routes" || [[ "$(wc -l <<<"$routes")" -ne 1 ]]; then
    mh_fail "$(mh_host "$i") has routes beyond $MH_SUBNET.0/24: $routes"
  fi
done
if bash "$MH_AGENT" "$MH_PREFIX-h9" true 2>"$WORK/agent.err"; then
  mh_fail "the agent ran a command on a host that does not exist"
fi
grep -q "no network namespace for host '$MH_PREFIX-h9'" "$WORK/agent.err" || mh_fail "agent error unclear: $(cat "$WORK/agent.err")"

echo "== teardown"
bash "$MH_HOSTS_SH" down -p "$MH_PREFIX"
[[ -z "$(bash "$MH_HOSTS_SH" list -p "$MH_PREFIX")" ]] || mh_fail "namespaces left after down"
ip link show "$MH_PREFIX-br" >/dev/null 2>&1 && mh_fail "bridge left after down"
[[ -e "/etc/netns/$MH_PREFIX-h1" ]] && mh_fail "/etc/netns/$MH_PREFIX-h1 left after down"

mh_finish
