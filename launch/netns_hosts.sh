#!/usr/bin/env bash
# Test "hosts" on one machine: Linux network namespaces joined by veth pairs and a bridge on a
# private subnet, each with its own address, hostname (a UTS namespace) and /etc/hosts, so that
# mpirun can treat them as separate nodes (launch/netns_agent.sh enters them). Needs root.
#
#   launch/netns_hosts.sh up     [-p PREFIX] [-n HOSTS] [-s SUBNET]   create PREFIX-h1..hN
#   launch/netns_hosts.sh down   [-p PREFIX]                           remove them (idempotent)
#   launch/netns_hosts.sh list   [-p PREFIX]                           print the host names
#   launch/netns_hosts.sh delay  [-p PREFIX] MS [--userspace TAP_DELAY]  delay every host's egress (0 = off)
#   launch/netns_hosts.sh link   [-p PREFIX] HOST up|down              a host's link up or down
#   launch/netns_hosts.sh exec   HOST CMD...                           run a command on a host
#     -p PREFIX   name prefix, at most 8 characters (default tpn): namespaces and hostnames are
#                 PREFIX-h1.., the bridge PREFIX-br, the root-side veth ends PREFIX-h1..
#     -n HOSTS    how many hosts, 1-9 (default 3)
#     -s SUBNET   first three octets of the /24 (default 10.213.0): host i is SUBNET.i, the
#                 bridge (the root namespace's door to the hosts) is SUBNET.254
# Inside each host the link is eth0; nothing is routed beyond the subnet (the hosts have no
# default route), so test traffic cannot leave it. `delay` uses tc netem; where the kernel has
# no netem, --userspace runs the delay line built from tests/multihost/tap_delay.c instead.
# See docs/MULTIHOST.md.
set -euo pipefail

STATE_DIR=/run/tpnode-netns
PREFIX=tpn
HOSTS=3
SUBNET=10.213.0

die() { echo "netns_hosts.sh: $*" >&2; exit 1; }

parse_common() {
  ARGS=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -p|--prefix) PREFIX="$2"; shift ;;
      -n|--hosts) HOSTS="$2"; shift ;;
      -s|--subnet) SUBNET="$2"; shift ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
  [[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "prefix '$PREFIX': 1-8 lower-case letters/digits"
  [[ "$HOSTS" =~ ^[1-9]$ ]] || die "hosts '$HOSTS': 1-9"
  [[ "$SUBNET" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "subnet '$SUBNET': three octets, e.g. 10.213.0"
}

host_name() { echo "$PREFIX-h$1"; }
bridge_name() { echo "$PREFIX-br"; }

# Hosts of PREFIX that exist now (from a previous up, perhaps one that crashed).
existing_hosts() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-h[1-9]\$" | sort || true
}

cmd_down() {
  local ns
  userspace_delay_off
  for ns in $(existing_hosts); do
    # Whatever still runs there (ranks, orteds of a failed test) was started by the harness.
    local pids
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    if [[ -n "$pids" ]]; then
      # shellcheck disable=SC2086  # one pid per word
      kill -9 $pids 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  local f
  for f in "$STATE_DIR/$PREFIX"-h*.uts; do
    [[ -e "$f" ]] || continue
    umount "$f" 2>/dev/null || true
    rm -f "$f"
  done
  # The root-side veth ends, even of namespaces already deleted: a namespace lives on (with its
  # veth) while its sockets do, e.g. TCP connections that were retransmitting over a link the
  # test took down; deleting one end of a veth deletes both.
  local i
  for i in $(seq 1 9); do ip link del "$PREFIX-h$i" 2>/dev/null || true; done
  ip link del "$(bridge_name)" 2>/dev/null || true
  rm -f "$STATE_DIR/$PREFIX.subnet"
}

cmd_up() {
  [[ $(id -u) -eq 0 ]] || die "needs root (ip netns, veth, bridge)"
  command -v ip >/dev/null || die "iproute2 (ip) not found"
  command -v unshare >/dev/null && command -v nsenter >/dev/null || die "util-linux unshare/nsenter not found"
  cmd_down
  # The test subnet must be private to the test: not on any interface of this machine already.
  if [[ -n "$(ip -4 addr show to "$SUBNET.0/24")" || -n "$(ip -4 route show exact "$SUBNET.0/24")" ]]; then
    die "$SUBNET.0/24 is already in use on this machine (ip addr / ip route); choose another with -s"
  fi
  mkdir -p "$STATE_DIR"
  echo "$SUBNET" >"$STATE_DIR/$PREFIX.subnet"
  local br; br="$(bridge_name)"
  ip link add "$br" type bridge
  # A bridge takes the lowest MAC of its ports unless given one, and the hosts' ARP caches
  # would then point at a MAC that vanished when ports change (delay --userspace swaps them).
  local o2 o3
  IFS=. read -r _ o2 o3 <<<"$SUBNET"
  ip link set "$br" address "$(printf '02:74:70:%02x:%02x:fe' "$o2" "$o3")"
  # No spanning tree: ports forward at once.
  ip link set "$br" type bridge stp_state 0 forward_delay 0 2>/dev/null || true
  ip addr add "$SUBNET.254/24" dev "$br"
  ip link set "$br" up

  local hosts_file
  hosts_file="$(mktemp)"
  {
    echo "127.0.0.1 localhost"
    echo "$SUBNET.254 $PREFIX-gw"
    for i in $(seq 1 "$HOSTS"); do echo "$SUBNET.$i $(host_name "$i")"; done
  } >"$hosts_file"

  local i ns uts
  for i in $(seq 1 "$HOSTS"); do
    ns="$(host_name "$i")"
    ip netns add "$ns"
    # Open MPI names nodes by gethostname(): each host gets its own UTS namespace, kept
    # alive by a bind mount that netns_agent.sh enters.
    uts="$STATE_DIR/$ns.uts"
    touch "$uts"
    unshare --uts="$uts" hostname "$ns"
    # `ip netns exec` bind-mounts /etc/netns/NS/* over /etc/*: every host resolves every other.
    mkdir -p "/etc/netns/$ns"
    cp "$hosts_file" "/etc/netns/$ns/hosts"
    ip link add "$ns" type veth peer name eth0 netns "$ns"
    ip link set "$ns" master "$br"
    ip link set "$ns" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
  rm -f "$hosts_file"
  echo "netns_hosts.sh: $HOSTS hosts up: $(for i in $(seq 1 "$HOSTS"); do printf '%s=%s.%s ' "$(host_name "$i")" "$SUBNET" "$i"; done)bridge $br=$SUBNET.254"
}

cmd_list() { existing_hosts; }

# The user-space delay line (for kernels without netem): per host, tc redirects everything the
# host sends from its root-side veth end into TAP PREFIX-dI; tap_delay writes it, delayed, to
# TAP PREFIX-oI on the bridge; the way back runs TAP PREFIX-oI -> PREFIX-dI -> tc -> veth.
userspace_delay_off() {
  local pidfile="$STATE_DIR/$PREFIX.tap_delay.pid"
  [[ -f "$pidfile" ]] || return 0
  local pid i
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile" "$STATE_DIR/$PREFIX.tap_delay.log"
  for i in $(seq 1 9); do
    ip link show "$PREFIX-h$i" >/dev/null 2>&1 || continue
    tc qdisc del dev "$PREFIX-h$i" ingress 2>/dev/null || true
    ip link set "$PREFIX-h$i" master "$(bridge_name)" 2>/dev/null || true
  done
}

userspace_delay_on() {
  local ms="$1" helper="$2"
  [[ -x "$helper" ]] || die "delay --userspace: no executable at $helper (build tests/multihost/tap_delay.c)"
  local hosts=() pairs=() ns i
  for ns in $(existing_hosts); do
    i="${ns##*-h}"
    hosts+=("$i")
    pairs+=("$PREFIX-d$i" "$PREFIX-o$i")
  done
  [[ ${#hosts[@]} -gt 0 ]] || die "delay: no hosts with prefix $PREFIX"
  local us log="$STATE_DIR/$PREFIX.tap_delay.log"
  us="$(printf '%.0f' "$(echo "$ms * 1000" | bc)")"
  "$helper" "$us" "${pairs[@]}" >"$log" 2>&1 &
  echo $! >"$STATE_DIR/$PREFIX.tap_delay.pid"
  for _ in $(seq 1 50); do grep -q ready "$log" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$log" || { cat "$log" >&2; userspace_delay_off; die "tap_delay did not start"; }
  local br; br="$(bridge_name)"
  for i in "${hosts[@]}"; do
    local veth="$PREFIX-h$i" tin="$PREFIX-d$i" tout="$PREFIX-o$i"
    ip link set "$tin" up
    ip link set "$tout" master "$br"
    ip link set "$tout" up
    ip link set "$veth" nomaster
    tc qdisc add dev "$veth" ingress
    tc filter add dev "$veth" parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev "$tin"
    tc qdisc add dev "$tin" ingress
    tc filter add dev "$tin" parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev "$veth"
  done
}

cmd_delay() {
  local ms="${1:-}" helper=""
  [[ "${2:-}" == --userspace ]] && helper="${3:-}"
  [[ "$ms" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "delay: give milliseconds, e.g. 1 (0 removes the delay)"
  [[ "${2:-}" != --userspace || -n "$helper" ]] || die "delay MS --userspace HELPER"
  local ns
  userspace_delay_off
  for ns in $(existing_hosts); do
    tc -n "$ns" qdisc del dev eth0 root 2>/dev/null || true
  done
  [[ "$ms" =~ ^0+(\.0+)?$ ]] && return 0
  if [[ -n "$helper" ]]; then
    userspace_delay_on "$ms" "$helper"
    return 0
  fi
  for ns in $(existing_hosts); do
    # Egress of each host: a packet between two hosts is delayed once, a round trip twice.
    tc -n "$ns" qdisc add dev eth0 root netem delay "${ms}ms" ||
      die "tc netem failed on $ns (kernel without sch_netem, CONFIG_NET_SCH_NETEM?); see --userspace"
  done
}

cmd_link() {
  local host="${1:-}" state="${2:-}"
  [[ -n "$host" && ( "$state" == up || "$state" == down ) ]] || die "link HOST up|down"
  [[ -e "/run/netns/$host" ]] || die "no host $host"
  ip -n "$host" link set eth0 "$state"
}

cmd_exec() {
  local host="${1:-}"
  [[ -n "$host" ]] || die "exec HOST CMD..."
  shift
  [[ -e "/run/netns/$host" ]] || die "no host $host"
  local uts="$STATE_DIR/$host.uts"
  if [[ -e "$uts" ]]; then
    exec nsenter --uts="$uts" -- ip netns exec "$host" "$@"
  fi
  exec ip netns exec "$host" "$@"
}

sub="${1:-}"
[[ $# -gt 0 ]] && shift
case "$sub" in
  up) parse_common "$@"; cmd_up ;;
  down) parse_common "$@"; cmd_down ;;
  list) parse_common "$@"; cmd_list ;;
  delay) parse_common "$@"; cmd_delay "${ARGS[@]}" ;;
  link) parse_common "$@"; cmd_link "${ARGS[@]}" ;;
  exec) cmd_exec "$@" ;;
  -h|--help|help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown subcommand '$sub' (up, down, list, delay, link, exec; --help)" ;;
esac
