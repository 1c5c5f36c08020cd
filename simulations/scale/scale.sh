#!/usr/bin/env bash
# Scale measurement of mesh with N real `mesh-node run` processes on 127.0.0.1, measured exactly
# the way ../shared/anchors/memberlist/scale.sh measures N memberlist agents (see README.md).
#
# usage: scale.sh [--json FILE] [N ...]      (default: 100 250, run one after the other)
# env:   MESH_NODE=$CARGO_TARGET_DIR/release/mesh-node  PRESET=lan  BASE_GOSSIP=27000  BASE_HTTP=28000
#        QUIET_S=60  CONVERGE_MAX_S=120  DETECT_MAX_S=90  START_MAX_S=10  KILLS=5  CURL_MAX_S=1
#        JSON_OUT=FILE (as --json)  WORK_DIR=DIR (logs; default a new folder in the temp folder)
#        MESH_CLUSTER_KEY (default: a new one from `mesh-node keygen`)  RUST_LOG (default: the binary's)
#
# Per N: seed + N-1 joiners (waves of 10/s, all joining the seed), then
#  (1) converge_s : first join -> seed, N/3, 2N/3, last each report N alive (0.5 s polls, cap 120 s)
#  (2) false_down : max (suspect+down) any sampled node reports during a 60 s quiet period
#                   (also max N-alive, i.e. counting nodes missing from the table)
#  (3) rss        : VmRSS median/max over all nodes at the end of the quiet period, MiB
#  (4) cpu        : sum utime+stime of all nodes over the quiet period, ms per node per second
#  (5) kill       : SIGKILL KILLS (5) non-sampled nodes; seconds until the seed reports N-KILLS alive
#                   (strict alive, i.e. the killed are suspect or down) and until all are down
#                   (alive+suspect == N-KILLS); cap 90 s
# Also: system-wide UDP receive buffer errors (RcvbufErrors) during the joins and the quiet period,
# and the open QUIC connections of each sampled node (the `mesh_connections` gauge of /metrics,
# `-` when the binary does not expose it) at the end of the quiet period.
# Only processes started here are killed (by pid), on exit via a trap.
set -u
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MESH_NODE=${MESH_NODE:-${CARGO_TARGET_DIR:-$REPO/target}/release/mesh-node}
PRESET=${PRESET:-lan}
BG=${BASE_GOSSIP:-27000}
BH=${BASE_HTTP:-28000}
QUIET_S=${QUIET_S:-60}
CONVERGE_MAX_S=${CONVERGE_MAX_S:-120}
DETECT_MAX_S=${DETECT_MAX_S:-90}
START_MAX_S=${START_MAX_S:-10}
KILLS=${KILLS:-5}
CURL_MAX_S=${CURL_MAX_S:-1}
JSON_OUT=${JSON_OUT:-}

usage() { sed -n '4,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
NS=()
while [ $# -gt 0 ]; do
  case $1 in
    --json) [ $# -ge 2 ] || usage; JSON_OUT=$2; shift 2 ;;
    --json=*) JSON_OUT=${1#--json=}; shift ;;
    -h | --help) usage ;;
    *[!0-9]* | '') echo "not a node count: $1" >&2; usage ;;
    *) NS+=("$1"); shift ;;
  esac
done
[ ${#NS[@]} -gt 0 ] || NS=(100 250)

missing=""
for t in curl jq ss awk sort getconf; do command -v "$t" >/dev/null || missing+=" $t"; done
[ -z "$missing" ] || { echo "missing tools:$missing (Debian: apt-get install curl jq iproute2)" >&2; exit 1; }
[ -x "$MESH_NODE" ] || { echo "mesh-node binary $MESH_NODE missing: cargo build --release --bin mesh-node, or set MESH_NODE" >&2; exit 1; }
[[ $KILLS =~ ^[0-9]+$ ]] || { echo "KILLS must be a number" >&2; exit 2; }

# Whatever the caller's environment says, these nodes join only each other, with a cluster key.
unset MESH_JOIN MESH_CONFIG MESH_ADVERTISE MESH_CA_CERT MESH_CERT MESH_KEY MESH_KEY_FILE MESH_NAME MESH_BIND MESH_HTTP MESH_PRESET
if [ -z "${MESH_CLUSTER_KEY:-}" ]; then
  MESH_CLUSTER_KEY=$("$MESH_NODE" keygen) || { echo "mesh-node keygen failed" >&2; exit 1; }
fi
export MESH_CLUSTER_KEY
export NO_COLOR=1  # plain log lines (tracing-subscriber honours it)
if [ -n "${WORK_DIR:-}" ]; then WORK=$WORK_DIR; mkdir -p "$WORK" || exit 1; else WORK=$(mktemp -d "${TMPDIR:-/tmp}/mesh-scale.XXXXXX"); fi
if [ -n "$JSON_OUT" ]; then : >"$JSON_OUT" || { echo "cannot write $JSON_OUT" >&2; exit 1; }; fi

PIDS=()
# true if pid $1 is still a mesh-node child of this shell (so never a recycled pid of someone else's)
COMM=$(basename "$MESH_NODE" | cut -c1-15)
ours() {
  local c st f
  { read -r c <"/proc/$1/comm" && read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
  read -r -a f <<<"${st##*) }"  # f[0] state, f[1] ppid
  [ "$c" = "$COMM" ] && [ "${f[1]}" = "$$" ]
}
# SIGKILL the given pids if still ours, then wait (bounded) until they are gone; the nodes are
# disowned (so that bash prints no "Killed" line for each), hence polled rather than waited for
kill_pids() {
  local p k left
  for p in "$@"; do ours "$p" && kill -9 "$p" 2>/dev/null; done
  for ((k = 0; k < 100; k++)); do
    left=0
    for p in "$@"; do [ -e "/proc/$p" ] && ours "$p" && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  echo "warning: some of pids $* still there 10 s after SIGKILL" >&2
}
kill_all() { kill_pids "${PIDS[@]}"; PIDS=(); }
trap kill_all EXIT
trap 'exit 130' INT TERM

now() { echo "${EPOCHREALTIME:-$(date +%s.%N)}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
sleep_until() { local d; d=$(awk -v t="$1" -v n="$(now)" 'BEGIN{d=t-n; if(d>0) printf "%.3f", d; else print 0}'); [ "$d" != 0 ] && sleep "$d"; }
elapsed_lt() { awk -v e="$(since "$1")" -v m="$2" 'BEGIN{exit !(e<m)}'; }
# poll i -> "alive suspect down active" (active = alive+suspect; "- - - -" when the node does not answer)
poll() {
  local j
  j=$(curl -sf --max-time "$CURL_MAX_S" "http://127.0.0.1:$((BH + $1))/members") &&
    jq -r 'def n(f): map(select(f)) | length;
      "\(n(.state=="alive")) \(n(.state=="suspect")) \(n(.state=="down" or .state=="left")) \(n(.state=="alive" or .state=="suspect"))"' \
      <<<"$j" 2>/dev/null || echo "- - - -"
}
# open QUIC connections of node i (sum of the mesh_connections gauge), "-" if not exposed
connections() {
  curl -sf --max-time "$CURL_MAX_S" "http://127.0.0.1:$((BH + $1))/metrics" 2>/dev/null |
    awk '/^mesh_connections[{ ]/{s+=$NF; f=1} END{if(f) print s; else print "-"}'
}
# /metrics summed over all nodes 0..N-1, fetched in parallel (bounded: ~2 s even if nodes hang)
# -> "gossip_bytes_in gossip_bytes_out gossip_dropped responders"
sum_metrics() {
  local n=$1 i urls=()
  for ((i = 0; i < n; i++)); do urls+=("http://127.0.0.1:$((BH + i))/metrics"); done
  curl -s --parallel --parallel-max 64 --max-time 2 "${urls[@]}" 2>/dev/null |
    awk '/^mesh_gossip_bytes_total\{direction="in"\}/{i+=$NF} /^mesh_gossip_bytes_total\{direction="out"\}/{o+=$NF}
         /^mesh_gossip_dropped_total/{d+=$NF} /^# TYPE mesh_members /{r++}
         END{printf "%d %d %d %d\n", i, o, d, r}'
}
udp_drops() { awk '/^Udp:/{if(h){print $6; exit} h=1}' /proc/net/snmp; }  # system-wide RcvbufErrors
cpu_ticks() { local p s=0 t; for p in "$@"; do t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}') && [ -n "$t" ] && s=$((s + t)); done; echo "$s"; }
sys_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," ");split(b,y," ");d=y[2]-x[2]; printf "%.0f", (d>0 ? 100*(y[1]-x[1])/d : 0)}'; }
num() { if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then echo "$1"; else echo null; fi; }
# ports in [lo, hi] that something listens on (TCP) or has bound (UDP)
ports_taken() {
  ss -Htlnu | awk -v lo="$1" -v hi="$2" '{n=split($5,a,":"); p=a[n]+0; if(p>=lo && p<=hi) print p}' | sort -un | tr '\n' ' '
}
# what the nodes' logs say (needs RUST_LOG at info, the binary's default for `run`):
# -> "warn error rejoins down_events down_members refused_connections"
log_counts() {
  sed 's/\x1b\[[0-9;]*m//g' "$DIR"/n*.log 2>/dev/null | awk '
    / WARN /{w++} / ERROR /{e++} /declared down by the cluster/{r++} /refused connection/{f++}
    /member down/{d++; if(match($0, /member=[^ ]+/)) m[substr($0, RSTART, RLENGTH)]=1}
    END{n=0; for(k in m) n++; printf "%d %d %d %d %d %d\n", w, e, r, d, n, f}'
}
start_node() { # i [join]
  local i=$1 j=${2:-}
  "$MESH_NODE" run --name "n$i" --bind "127.0.0.1:$((BG + i))" --http "127.0.0.1:$((BH + i))" \
    --preset "$PRESET" ${j:+--join "$j"} >"$DIR/n$i.log" 2>&1 </dev/null &
  PIDS[i]=$!
  disown "$!"
}
# kill targets: memberlist's (N/6, N/4, N/2, 3N/4, 5N/6) when KILLS=5 and they are distinct and not
# sampled; otherwise KILLS nodes spread evenly over the non-sampled ones
kill_targets() {
  local n=$1 k=$2 i c=() cand=()
  shift 2
  local sampled=" $* "
  if ((k == 5)); then
    c=($((n / 6)) $((n / 4)) $((n / 2)) $((3 * n / 4)) $((5 * n / 6)))
    if [ "$(printf '%s\n' "${c[@]}" | sort -u | wc -l)" = 5 ] && ! printf '%s\n' "${c[@]}" | grep -qxE "0|$(echo "$*" | tr ' ' '|')"; then
      echo "${c[*]}"; return
    fi
  fi
  for ((i = 1; i < n; i++)); do [[ $sampled == *" $i "* ]] || cand+=("$i"); done
  ((k <= ${#cand[@]})) || return 1
  c=()
  for ((i = 0; i < k; i++)); do c+=("${cand[$(((2 * i + 1) * ${#cand[@]} / (2 * k)))]}"); done
  echo "${c[*]}"
}

ROWS=()
run_one() {
  local N=$1 i k a s d m r
  DIR=$WORK/N$N; mkdir -p "$DIR"
  if ((N < 2)); then echo "N=$N: need at least 2 nodes" >&2; return 2; fi
  local S=(0 $((N / 3)) $((2 * N / 3)) $((N - 1)))
  local KILL
  read -r -a KILL <<<"$(kill_targets "$N" "$KILLS" "${S[@]}")"
  ((${#KILL[@]} == KILLS)) || { echo "N=$N: cannot kill $KILLS of the non-sampled nodes" >&2; return 2; }
  # ports must be free, and the two ranges apart
  if ((BG + N > BH && BH + N > BG)); then echo "N=$N: ports $BG.. and $BH.. overlap" >&2; return 3; fi
  local taken; taken="$(ports_taken "$BG" $((BG + N - 1)))$(ports_taken "$BH" $((BH + N - 1)))"
  if [ -n "$taken" ]; then
    echo "N=$N: ports in $BG.. or $BH.. already in use ($taken), aborting" >&2; return 3
  fi

  start_node 0
  local t; t=$(now)
  while [ "$(poll 0)" = "- - - -" ]; do
    if ! ours "${PIDS[0]}" || ! elapsed_lt "$t" "$START_MAX_S"; then
      echo "N=$N: the seed did not answer on 127.0.0.1:$BH within ${START_MAX_S}s; its log:" >&2
      tail -n 20 "$DIR/n0.log" >&2; kill_all; return 1
    fi
    sleep 0.1
  done
  local SEED=127.0.0.1:$BG

  # joiners in waves of 10 per second
  local u0 jb0 jb1; u0=$(udp_drops); jb0=$(sys_busy)
  local t0; t0=$(now)
  for ((i = 1; i < N; i++)); do
    start_node "$i" "$SEED"
    if ((i % 10 == 0)); then sleep_until "$(awk -v t="$t0" -v w=$((i / 10)) 'BEGIN{printf "%.3f", t+w}')"; fi
  done
  local launch_s; launch_s=$(since "$t0")

  # (1) convergence
  local conv="timeout" seen="" ok
  while :; do
    ok=1; seen=""
    for i in "${S[@]}"; do
      read -r a s d m <<<"$(poll "$i")"; seen+="n$i:${a}/"
      [ "$a" = "$N" ] || ok=0
    done
    seen=${seen%/}
    if ((ok)); then conv=$(since "$t0"); break; fi
    elapsed_lt "$t0" "$CONVERGE_MAX_S" || break
    sleep 0.5
  done
  local after_last="timeout"
  [ "$conv" != timeout ] && after_last=$(awk -v c="$conv" -v l="$launch_s" 'BEGIN{printf "%.1f", c-l}')

  jb1=$(sys_busy)
  local jbusy; jbusy=$(pct "$jb0" "$jb1")
  local ujoin; ujoin=$(($(udp_drops) - u0))

  # (2)+(4) quiet period
  local bout0 drop0
  read -r _ bout0 drop0 _ <<<"$(sum_metrics "$N")"
  local c0 w0 sb0 sb1; c0=$(cpu_ticks "${PIDS[@]}"); w0=$(now); sb0=$(sys_busy)
  local fd=0 fdmiss=0 polls=0 unanswered=0
  while elapsed_lt "$w0" "$QUIET_S"; do
    for i in "${S[@]}"; do
      read -r a s d m <<<"$(poll "$i")"
      [ "$a" = "-" ] && { unanswered=$((unanswered + 1)); continue; }
      ((s + d > fd)) && fd=$((s + d))
      ((N - a > fdmiss)) && fdmiss=$((N - a))
    done
    polls=$((polls + 1))
    sleep 0.5
  done
  local c1 w1; c1=$(cpu_ticks "${PIDS[@]}"); w1=$(now); sb1=$(sys_busy)
  local uquiet; uquiet=$(($(udp_drops) - u0 - ujoin))
  local hz nc; hz=$(getconf CLK_TCK); nc=$(nproc 2>/dev/null || echo 1)
  local agpct; agpct=$(awk -v c0="$c0" -v c1="$c1" -v w0="$w0" -v w1="$w1" -v hz="$hz" -v nc="$nc" \
    'BEGIN{printf "%.0f", 100*(c1-c0)/hz/(w1-w0)/nc}')
  local cpu; cpu=$(awk -v c0="$c0" -v c1="$c1" -v w0="$w0" -v w1="$w1" -v n="$N" -v hz="$hz" \
    'BEGIN{printf "%.2f", (c1-c0)*1000/hz/n/(w1-w0)}')
  local busy; busy=$(pct "$sb0" "$sb1")

  # (3) RSS, and what else the end of the quiet period shows
  local rss; rss=$(for p in "${PIDS[@]}"; do awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null; done | sort -n |
    awk '{v[NR]=$1} END{if(!NR){print "- -"; exit} m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.1f %.1f", m/1024, v[NR]/1024}')
  local conns=() cj=()
  for i in "${S[@]}"; do r=$(connections "$i"); conns+=("${r:--}"); cj+=("$(num "${r:--}")"); done
  local conn_json; conn_json="[$(IFS=,; echo "${cj[*]}")]"
  [[ $conn_json =~ ^\[(null,)*null\]$ ]] && conn_json=null
  local bout1 drop1 resp1
  read -r _ bout1 drop1 resp1 <<<"$(sum_metrics "$N")"
  local gossip_out; gossip_out=$(awk -v a="$bout0" -v b="$bout1" -v n="$N" -v w0="$w0" -v w1="$w1" \
    'BEGIN{printf "%.0f", (b-a)/n/(w1-w0)}')
  local exited=0
  for p in "${PIDS[@]}"; do ours "$p" || exited=$((exited + 1)); done

  # before the kills: members declared down, and nodes that found themselves declared down
  local rejoins downs downm
  read -r _ _ rejoins downs downm _ <<<"$(log_counts)"

  # (5) SIGKILL KILLS non-sampled nodes
  local tsus="timeout" tdown="timeout" last=""
  if ((KILLS > 0)); then
    local tk; tk=$(now)
    local kp=()
    for i in "${KILL[@]}"; do kp+=("${PIDS[i]}"); done
    kill_pids "${kp[@]}"
    for i in "${KILL[@]}"; do unset "PIDS[i]"; done
    while elapsed_lt "$tk" "$DETECT_MAX_S"; do
      read -r a s d m <<<"$(poll 0)"; last="alive=$a suspect=$s down=$d"
      if [ "$a" != "-" ]; then
        [ "$tsus" = timeout ] && ((a <= N - KILLS)) && tsus=$(since "$tk")
        [ "$tdown" = timeout ] && ((m <= N - KILLS)) && { tdown=$(since "$tk"); break; }
      fi
      sleep 0.5
    done
  fi
  local lwarn lerr lrefused
  read -r lwarn lerr _ _ _ lrefused <<<"$(log_counts)"

  printf 'N=%d converge_s=%s (%ss after the last join) [%s] (launch %ss, machine busy %s%%, udp rcvbuf drops %d) | quiet %ss: false_down_max=%d (max N-alive=%d, %d polls x4, %d unanswered) gossip_out=%s B/node/s dropped=%d (from %d/%d nodes) udp_drops=%d exited=%d | rss_mib median=%s max=%s | connections [%s] | cpu_ms_per_node_s=%s (nodes %s%% of machine, machine busy %s%%) | kill%d [%s]: seed alive=N-%d after %ss, all down after %ss [%s] | logs: before the kills %d rejoins (declared down), %d member-down events (%d members); %d WARN, %d ERROR, %d refused connections\n' \
    "$N" "$conv" "$after_last" "$seen" "$launch_s" "$jbusy" "$ujoin" "$QUIET_S" "$fd" "$fdmiss" "$polls" "$unanswered" \
    "$gossip_out" $((drop1 - drop0)) "$resp1" "$N" "$uquiet" "$exited" "${rss% *}" "${rss#* }" "${conns[*]}" \
    "$cpu" "$agpct" "$busy" "$KILLS" "${KILL[*]}" "$KILLS" "$tsus" "$tdown" "$last" "$rejoins" "$downs" "$downm" "$lwarn" "$lerr" "$lrefused"
  ROWS+=("$(printf '%5d %10s %10s %10d %7d %7d %8s %8s %9s %11s %9s %9s %6d  %s' "$N" "$conv" "$after_last" "$fd" "$fdmiss" "$rejoins" \
    "${rss% *}" "${rss#* }" "$cpu" "$tsus" "$tdown" "$((ujoin + uquiet))" "$exited" "${conns[*]}")")

  if [ -n "$JSON_OUT" ]; then
    jq -nc --argjson n "$N" --argjson converged "$([ "$conv" != timeout ] && echo true || echo false)" \
      --argjson converge_s "$(num "$conv")" --argjson after_last "$(num "$after_last")" --argjson launch_s "$launch_s" \
      --arg seen "$seen" --argjson fd "$fd" --argjson fdmiss "$fdmiss" --argjson polls "$polls" \
      --argjson rss_med "$(num "${rss% *}")" --argjson rss_max "$(num "${rss#* }")" --argjson cpu "$(num "$cpu")" \
      --argjson kills "$KILLS" --argjson tsus "$(num "$tsus")" --argjson tdown "$(num "$tdown")" \
      --argjson uj "$ujoin" --argjson uq "$uquiet" --argjson conns "$conn_json" --argjson exited "$exited" \
      --argjson gossip_out "$(num "$gossip_out")" --argjson quiet_s "$QUIET_S" --arg preset "$PRESET" \
      --argjson jbusy "$(num "$jbusy")" --argjson busy "$(num "$busy")" --argjson lwarn "$lwarn" --argjson lerr "$lerr" \
      --argjson rejoins "$rejoins" --argjson downs "$downs" --argjson downm "$downm" --argjson lrefused "$lrefused" \
      '{n:$n, converged:$converged, converge_s:$converge_s, converge_after_last_join_s:$after_last, launch_s:$launch_s,
        seen:($seen|split("/")|map(split(":")|{(.[0]):(.[1]|tonumber? // null)})|add),
        false_down_max:$fd, missing_max:$fdmiss, quiet_s:$quiet_s, quiet_polls:$polls,
        rss_median_mib:$rss_med, rss_max_mib:$rss_max, cpu_ms_per_node_s:$cpu,
        kills:$kills, kill_suspect_s:$tsus, kill_down_s:$tdown,
        udp_drops:($uj+$uq), udp_drops_join:$uj, udp_drops_quiet:$uq, connections:$conns,
        gossip_out_bytes_per_node_s:$gossip_out, exited:$exited, preset:$preset,
        machine_busy_join_pct:$jbusy, machine_busy_quiet_pct:$busy, log_warn:$lwarn, log_error:$lerr,
        rejoins_before_kill:$rejoins, down_events_before_kill:$downs, down_members_before_kill:$downm,
        refused_connections:$lrefused}' >>"$JSON_OUT"
  fi
  kill_all
}

echo "# mesh scale run $(date -u +%FT%TZ), binary=$MESH_NODE, preset=$PRESET, logs in $WORK, $(nproc 2>/dev/null) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
for n in "${NS[@]}"; do
  run_one "$n" || { r=$?; ((r > rc)) && rc=$r; }
done
echo
printf '%5s %10s %10s %10s %7s %7s %8s %8s %9s %11s %9s %9s %6s  %s\n' N converge_s after_last false_down N-alive rejoins rss_med rss_max \
  cpu_ms/n/s kill_susp_s kill_down udp_drops exited connections
for row in "${ROWS[@]}"; do echo "$row"; done
exit "$rc"
