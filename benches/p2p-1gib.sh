#!/usr/bin/env bash
# Benchmark: one 1 GiB blob (random, incompressible) moved from one agent to another over the
# swarm (TCP on loopback, TLS 1.3, yamux), as a client of the second agent sees it.
#
#   benches/p2p-1gib.sh [REPORT.md]
#
# 1. docker-registry on 127.0.0.1 holds the blob (and a manifest naming it);
# 2. agent A (the sender) fetches it from the registry once (one curl through A, not timed) and
#    announces it;
# 3. BENCH_RUNS times: agent B (the receiver) starts with an empty data dir, --bootstrap to A, and
#    its upstream pointing at a port nobody listens on, so only A can supply the blob; once B is
#    connected to A, `curl -o /dev/null` asks B for the blob (as containerd would, `?ns=`). Timed:
#    the curl (wall time, first byte), and the time until B has committed its copy. Read before
#    and after from /proc: CPU seconds (utime + stime) of A and B; peak RSS (VmHWM) of B, and of
#    A since the start of the run (A's peak is reset through /proc/PID/clear_refs first). Checked:
#    200 and exactly the blob's size every run; B's copy hashes to the digest (first run); B's
#    pollen_peer_bytes_received_total >= the blob's size and pollen_upstream_bytes_total = 0.
#    Before each run, the floor: `dd` of a new file of the blob's size on the same filesystem.
#    The report also lists the busiest threads of each agent (CPU seconds from /proc/PID/task).
#
# Prints a Markdown report (medians, and every run) to stdout and, if REPORT.md is given, there too.
# No root needed: everything runs on 127.0.0.1 in a temp dir that is removed at the end.
#
# Environment:
#   POLLEN_BIN   agent binary (default: target/release/pollen, built with `cargo build --release -j2 -p pollen`)
#   BENCH_RUNS   measured runs (default 3; the median is reported)
#   BENCH_MIB    blob size in MiB (default 1024)
#   BENCH_AGENT_ARGS  extra arguments for both agents (e.g. "--piece-size 4MiB"), split on spaces
#   BENCH_PERF=1 also record the last run with `perf record -g` (both agents) and print the top of
#                `perf report` on stderr (perf slows the run: its figures are not comparable)
#   BENCH_PERF_CALLGRAPH  perf's call-graph option (default -g; "--call-graph dwarf" sees through Rust frames)
#   BENCH_FLAME=DIR  with BENCH_PERF=1: flame graphs of that run in DIR (p2p-sender.svg,
#                p2p-receiver.svg; needs `cargo install inferno`)
#
# Before the runs, the floor for the same bytes (benches/lib.sh): sha256sum and b3sum of A's
# cached copy, dd of a new file through the page cache and with O_DIRECT.
#   BENCH_KEEP=1 keep the temp dir
#   BENCH_FANOUT=N  also N receivers at once, BENCH_RUNS times (A's upload shared; see the report)
#   BENCH_SWARM_KEY=0  run both agents without a swarm key (allowed on loopback), to measure its cost
#   BENCH_SENDER_RATE=RATE  shape A's upload (what leaves its p2p port) to RATE (tc syntax, e.g.
#                800mbit) with an htb class on `lo` (one FIFO), so that the link and not the CPU is the
#                bottleneck, as in a real cluster; with BENCH_FANOUT this shows whether N receivers
#                share the link fairly and fill it. Needs root; the qdisc is removed at the end.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$REPO/tests/e2e/lib.sh"
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"

OUT=${1:-}
RUNS=${BENCH_RUNS:-3}
MIB=${BENCH_MIB:-1024}
read -r -a EXTRA <<<"${BENCH_AGENT_ARGS:-}"
T=""
A_LOG=""
B_LOG=""

SHAPED=0
cleanup() {
    local rc=$?
    set +eE
    lib_stop_all
    if [ "$SHAPED" = 1 ]; then tc qdisc del dev lo root 2>/dev/null; fi
    if [ -n "$T" ] && [ -d "$T" ]; then
        if [ "$rc" -ne 0 ]; then
            for f in "$A_LOG" "$B_LOG"; do
                if [ -z "$f" ] || [ ! -f "$f" ]; then continue; fi
                echo "---- last 30 lines of $f ----" >&2
                tail -n 30 "$f" >&2
            done
        fi
        if [ "${BENCH_KEEP:-0}" = "1" ]; then lib_log "BENCH_KEEP=1: leaving $T"; else rm -rf "$T"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { lib_log "p2p-1gib: $*"; exit 1; }

# ---------------------------------------------------------------- setup
lib_ensure_tools docker-registry=docker-registry curl=curl jq=jq ss=iproute2 || die "required tools are missing"
lib_release_pollen "$REPO" || die "no agent binary: cargo build --release failed or ${POLLEN_BIN:-POLLEN_BIN} is missing"
"$POLLEN_BIN" agent --help | grep -q -- '--p2p-listen' || die "$POLLEN_BIN has no --p2p-listen flag"

T=$(mktemp -d /tmp/pollen-p2p-bench.XXXXXX)
lib_pick_port 5000 REG_PORT
lib_pick_port 5300 A_PORT
lib_pick_port 5400 A_ADMIN
lib_pick_port 5500 A_P2P
# Nobody listens here: B's upstream, so that B can only get the blob from A.
lib_pick_port 5600 DEAD_PORT
REG="127.0.0.1:$REG_PORT"
DEAD="http://127.0.0.1:$DEAD_PORT"

lib_write_registry_config "$T/registry" "$REG_PORT"
lib_start_registry "$T/registry" "$REG_PORT" >&2 || die "docker-registry did not start"

lib_log "generating a ${MIB} MiB random blob and pushing it to $REG"
head -c "${MIB}M" /dev/urandom >"$T/blob.bin"
SIZE=$(stat -c %s "$T/blob.bin")
NAME=bench/p2p
DIGEST=$(lib_push_image "$REG" "$NAME" v1 "$T/blob.bin") || die "pushing the blob failed"
rm -f "$T/blob.bin"
HEX=${DIGEST#sha256:}
NS="ns=127.0.0.1%3A$REG_PORT"

admin() { curl -fsS --max-time 5 "http://127.0.0.1:$1$2"; }
metric() { admin "$1" /metrics | awk -v n="$2" '$1 == n { v = $2 } END { printf "%.0f\n", v + 0 }'; }
connected_to() { admin "$1" /status | jq -e --arg p "$2" '.peers | index($p) != null' >/dev/null; }
provides() { admin "$1" /status | jq -e '.provided_blobs >= 1' >/dev/null; }
# threads PID: CPU ticks per thread of PID ("name/tid ticks" lines).
threads() {
    local f
    for f in /proc/"$1"/task/*/stat; do cat "$f" 2>/dev/null; echo; done | awk 'NF {
        a = index($0, "("); b = 0; for (i = length($0); i > 0; i--) if (substr($0, i, 1) == ")") { b = i; break }
        name = substr($0, a + 1, b - a - 1) "/" $1; gsub(/ /, "_", name)
        split(substr($0, b + 2), f, " "); t[name] += f[12] + f[13] }
        END { for (n in t) print n, t[n] }' | sort
}
# thread_delta BEFORE AFTER: "name/tid seconds" of CPU per thread between two `threads` outputs, largest first.
thread_delta() {
    awk -v hz="$(getconf CLK_TCK)" 'NR == FNR { b[$1] = $2; next } { d = ($2 - b[$1]) / hz; if (d > 0) printf "%s %.2f\n", $1, d }' "$1" "$2" | sort -k2,2gr
}
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f\n", b - a }'; }
# wait_file FILE: until an agent has committed its copy (up to 120 s, polling every 0.05 s).
wait_file() {
    local i
    for ((i = 0; i < 2400; i++)); do
        [ -f "$1" ] && return 0
        sleep 0.05
    done
    die "no committed copy at $1 120 s after the response"
}
# get PORT: one GET of the blob through the agent on PORT; prints "code size time_total ttfb".
get() {
    curl -sS -o /dev/null --max-time 600 -w '%{http_code} %{size_download} %{time_total} %{time_starttransfer}\n' \
        "http://127.0.0.1:$1/v2/$NAME/blobs/$DIGEST?$NS"
}

# ---------------------------------------------------------------- sender
# shape_sender RATE: everything A sends from its p2p port goes through one htb class of RATE
# (one FIFO: this kernel has no fq_codel or sfq), everything else on lo stays unshaped.
shape_sender() {
    tc qdisc show dev lo | grep -q 'noqueue' || die "lo already has a qdisc; refusing to replace it"
    SHAPED=1
    tc qdisc add dev lo root handle 1: htb default 10
    tc class add dev lo parent 1: classid 1:10 htb rate 100gbit quantum 200000
    tc class add dev lo parent 1: classid 1:20 htb rate "$1" ceil "$1" quantum 200000
    tc filter add dev lo parent 1: protocol ip u32 match ip sport "$A_P2P" 0xffff flowid 1:20
}
# A swarm key, as every real cluster has (its private-network layer is part of what is measured).
KEY=()
if [ "${BENCH_SWARM_KEY:-1}" != 0 ]; then
    "$POLLEN_BIN" swarm-key --out "$T/swarm.key" 2>/dev/null || die "pollen swarm-key failed"
    KEY=(--swarm-key "$T/swarm.key")
fi
A_LOG="$T/a.log"
lib_start_agent "$POLLEN_BIN" "$T/a" "$A_PORT" "$A_ADMIN" "$A_LOG" "http://$REG" "$REG=http://$REG" \
    --p2p true --p2p-listen "/ip4/127.0.0.1/tcp/$A_P2P" --mdns false "${KEY[@]}" "${EXTRA[@]}" >&2 ||
    die "agent A did not become ready"
A_PID=$AGENT_PID
A_ID=$(admin "$A_ADMIN" /status | jq -r '.peer_id // empty')
[ -n "$A_ID" ] || die "agent A has no peer id"
lib_log "agent A (pid $A_PID, peer $A_ID): fetching the blob from the registry"
read -r code size _ _ < <(get "$A_PORT")
if [ "$code" != 200 ] || [ "$size" != "$SIZE" ]; then die "agent A: HTTP $code, $size bytes"; fi
wait_file "$T/a/blobs/sha256/$HEX"
lib_wait_cmd 150 provides "$A_ADMIN" || die "agent A does not announce the blob"
A_BASE_UP=$(metric "$A_ADMIN" pollen_upstream_bytes_total)
lib_log "the floor: hashing A's copy, writing a file of its size"
bench_floor "$T/a/blobs/sha256/$HEX" "$T" "$T/floor.rows"
if [ -n "${BENCH_SENDER_RATE:-}" ]; then
    lib_ensure_tools tc=iproute2 || die "tc is missing"
    shape_sender "$BENCH_SENDER_RATE"
    lib_log "A's upload shaped to $BENCH_SENDER_RATE"
fi

# start_receiver DIR LOG PORT ADMIN P2P: a receiver with an empty data dir, bootstrapped to A,
# its upstream a port nobody listens on (only A can supply the blob); sets AGENT_PID.
start_receiver() {
    lib_start_agent "$POLLEN_BIN" "$1" "$3" "$4" "$2" "$DEAD" "$REG=$DEAD" \
        --p2p true --p2p-listen "/ip4/127.0.0.1/tcp/$5" --mdns false \
        --bootstrap "/ip4/127.0.0.1/tcp/$A_P2P/p2p/$A_ID" "${KEY[@]}" "${EXTRA[@]}" >&2 ||
        die "a receiving agent did not become ready (log: $2)"
}

# ---------------------------------------------------------------- runs
: >"$T/runs"
for ((i = 1; i <= RUNS; i++)); do
    lib_pick_port 5300 B_PORT
    lib_pick_port 5400 B_ADMIN
    lib_pick_port 5500 B_P2P
    rm -rf "$T/b"
    # The floor just before the run: writing a new file of the blob's size on the same filesystem,
    # what B's cache write costs at least (on this VM new page-cache pages are expensive, and their
    # cost varies; this also puts every run after the same write-and-delete of that much data).
    sync
    dd_t0=$EPOCHREALTIME
    dd if=/dev/zero of="$T/floor" bs=1M count="$MIB" status=none
    since "$dd_t0" >>"$T/floor.times"
    rm -f "$T/floor"
    sync
    B_LOG="$T/b$i.log"
    start_receiver "$T/b" "$B_LOG" "$B_PORT" "$B_ADMIN" "$B_P2P"
    B_PID=$AGENT_PID
    lib_wait_cmd 150 connected_to "$B_ADMIN" "$A_ID" || die "run $i: agent B did not connect to A"
    # Peak RSS of A from here on (5 = reset VmHWM to the current RSS).
    echo 5 >"/proc/$A_PID/clear_refs" 2>/dev/null || lib_log "cannot reset A's VmHWM: A's peak includes its own fetch"
    A_SENT0=$(metric "$A_ADMIN" pollen_peer_bytes_sent_total)
    read -r _ a_cpu0 a_usr0 a_sys0 < <(lib_proc_stats "$A_PID")
    read -r _ b_cpu0 b_usr0 b_sys0 < <(lib_proc_stats "$B_PID")
    threads "$A_PID" >"$T/a.threads0"
    threads "$B_PID" >"$T/b.threads0"
    PERF_PID=""
    if [ "${BENCH_PERF:-0}" = "1" ] && [ "$i" -eq "$RUNS" ]; then
        read -r -a CALLGRAPH <<<"${BENCH_PERF_CALLGRAPH:--g}"
        lib_start_bg perf "$T/perf.log" perf record -F 999 "${CALLGRAPH[@]}" -o "$T/perf.data" -p "$A_PID,$B_PID"
        PERF_PID=$LIB_LAST_PID
        sleep 1
    fi
    t0=$EPOCHREALTIME
    out=$(get "$B_PORT") || die "run $i: curl through B failed: $out"
    read -r code size total ttfb <<<"$out"
    if [ "$code" != 200 ] || [ "$size" != "$SIZE" ]; then die "run $i: B answered HTTP $code with $size bytes"; fi
    wait_file "$T/b/blobs/sha256/$HEX"
    commit=$(since "$t0")
    read -r a_hwm a_cpu1 a_usr1 a_sys1 < <(lib_proc_stats "$A_PID")
    read -r b_hwm b_cpu1 b_usr1 b_sys1 < <(lib_proc_stats "$B_PID")
    threads "$A_PID" >"$T/a.threads1"
    threads "$B_PID" >"$T/b.threads1"
    if [ -n "$PERF_PID" ]; then
        kill -INT "$PERF_PID"
        lib_stop_pid "$PERF_PID" 300
        lib_log "perf report of the last run (both agents, self time):"
        perf report -i "$T/perf.data" --no-children --sort pid,dso,sym --stdio 2>/dev/null |
            grep -v '^#' | grep -E '^ +[0-9.]+%' | head -n 40 >&2 || true
        if [ -n "${BENCH_FLAME:-}" ]; then
            mkdir -p "$BENCH_FLAME"
            bench_flame "$T/perf.data" "$A_PID" "p2p sender (agent A), ${MIB} MiB" "$BENCH_FLAME/p2p-sender.svg"
            bench_flame "$T/perf.data" "$B_PID" "p2p receiver (agent B), ${MIB} MiB" "$BENCH_FLAME/p2p-receiver.svg"
            lib_log "flame graphs in $BENCH_FLAME"
        fi
    fi
    thread_delta "$T/a.threads0" "$T/a.threads1" >"$T/a.threads.run$i"
    thread_delta "$T/b.threads0" "$T/b.threads1" >"$T/b.threads.run$i"
    b_recv=$(metric "$B_ADMIN" pollen_peer_bytes_received_total)
    b_up=$(metric "$B_ADMIN" pollen_upstream_bytes_total)
    a_sent=$(($(metric "$A_ADMIN" pollen_peer_bytes_sent_total) - A_SENT0))
    [ "$b_recv" -ge "$SIZE" ] || die "run $i: B received $b_recv piece bytes from peers, expected >= $SIZE"
    [ "$b_up" -eq 0 ] || die "run $i: B counted $b_up bytes from the upstream"
    if [ "$i" -eq 1 ]; then
        [ "$(lib_sha256_file "$T/b/blobs/sha256/$HEX")" = "$HEX" ] || die "B's copy does not hash to $DIGEST"
        lib_log "  B's copy hashes to $DIGEST"
    fi
    # time ttfb commit a_cpu b_cpu a_hwm_kB b_hwm_kB b_recv a_sent a_user a_sys b_user b_sys
    awk -v t="$total" -v f="$ttfb" -v c="$commit" -v a0="$a_cpu0" -v a1="$a_cpu1" -v b0="$b_cpu0" -v b1="$b_cpu1" \
        -v ah="$a_hwm" -v bh="$b_hwm" -v r="$b_recv" -v s="$a_sent" \
        -v au="$(awk -v x="$a_usr0" -v y="$a_usr1" 'BEGIN { print y - x }')" -v as="$(awk -v x="$a_sys0" -v y="$a_sys1" 'BEGIN { print y - x }')" \
        -v bu="$(awk -v x="$b_usr0" -v y="$b_usr1" 'BEGIN { print y - x }')" -v bs="$(awk -v x="$b_sys0" -v y="$b_sys1" 'BEGIN { print y - x }')" \
        'BEGIN { printf "%s %s %s %.2f %.2f %s %s %s %s %.2f %.2f %.2f %.2f\n", t, f, c, a1 - a0, b1 - b0, ah, bh, r, s, au, as, bu, bs }' >>"$T/runs"
    lib_log "  run $i: $(tail -n 1 "$T/runs") (time ttfb commit cpuA cpuB hwmA hwmB recvB sentA userA sysA userB sysB)"
    lib_log "  CPU by thread, A: $(head -n 6 "$T/a.threads.run$i" | paste -sd' ')"
    lib_log "  CPU by thread, B: $(head -n 8 "$T/b.threads.run$i" | paste -sd' ')"
    lib_stop_pid "$B_PID"
done
# ---------------------------------------------------------------- fan-out
# BENCH_FANOUT=N (N >= 2): N fresh receivers ask A for the blob at the same moment, BENCH_RUNS
# times: how A's upload is shared (each receiver's time; slowest against fastest) and whether
# the total holds (N x the blob over the slowest time, against one receiver alone above).
FANOUT=${BENCH_FANOUT:-0}
: >"$T/fanout"
: >"$T/fanout.runs"
for ((i = 1; i <= RUNS && FANOUT >= 2; i++)); do
    ports=()
    pids=()
    for ((r = 1; r <= FANOUT; r++)); do
        lib_pick_port 5300 F_PORT
        lib_pick_port 5400 F_ADMIN
        lib_pick_port 5500 F_P2P
        rm -rf "$T/f$r"
        start_receiver "$T/f$r" "$T/f$i-$r.log" "$F_PORT" "$F_ADMIN" "$F_P2P"
        pids+=("$AGENT_PID")
        ports+=("$F_PORT")
        lib_wait_cmd 150 connected_to "$F_ADMIN" "$A_ID" || die "fan-out run $i: receiver $r did not connect to A"
    done
    A_SENT0=$(metric "$A_ADMIN" pollen_peer_bytes_sent_total)
    read -r _ a_cpu0 _ _ < <(lib_proc_stats "$A_PID")
    t0=$EPOCHREALTIME
    curls=()
    for ((r = 0; r < FANOUT; r++)); do
        get "${ports[$r]}" >"$T/fan.$r" &
        curls+=("$!")
    done
    for c in "${curls[@]}"; do wait "$c" || die "fan-out run $i: a curl failed"; done
    wall=$(since "$t0")
    read -r _ a_cpu1 _ _ < <(lib_proc_stats "$A_PID")
    a_sent=$(($(metric "$A_ADMIN" pollen_peer_bytes_sent_total) - A_SENT0))
    for ((r = 0; r < FANOUT; r++)); do
        read -r code size total _ <"$T/fan.$r"
        if [ "$code" != 200 ] || [ "$size" != "$SIZE" ]; then die "fan-out run $i: receiver $((r + 1)) answered HTTP $code with $size bytes"; fi
        echo "$i $((r + 1)) $total" >>"$T/fanout"
    done
    awk -v w="$wall" -v c0="$a_cpu0" -v c1="$a_cpu1" -v s="$a_sent" 'BEGIN { printf "%s %.2f %s\n", w, c1 - c0, s }' >>"$T/fanout.runs"
    lib_log "  fan-out run $i: $(awk -v i="$i" '$1 == i { printf "%s ", $3 }' "$T/fanout")s; A sent $a_sent bytes"
    for p in "${pids[@]}"; do lib_stop_pid "$p"; done
done

A_UP=$(metric "$A_ADMIN" pollen_upstream_bytes_total)
[ "$A_UP" = "$A_BASE_UP" ] || lib_log "note: agent A fetched $((A_UP - A_BASE_UP)) more bytes from the registry during the runs"

# ---------------------------------------------------------------- report
fanout_report() {
    echo "### Fan-out: $FANOUT receivers at once from A (median of $RUNS runs)"
    echo
    echo "| figure | median (min–max) |"
    echo "| --- | --- |"
    # Per run: slowest and fastest receiver, total throughput, fairness.
    awk '{ t[$1, $2] = $3; if ($2 > n) n = $2; if ($1 > runs) runs = $1 }
        END { for (i = 1; i <= runs; i++) { lo = 1e9; hi = 0
                for (r = 1; r <= n; r++) { if (t[i, r] < lo) lo = t[i, r]; if (t[i, r] > hi) hi = t[i, r] }
                print hi, lo, lo / hi } }' "$T/fanout" >"$T/fanout.sum"
    awk -v n="$FANOUT" -v s="$SIZE" -v one="$(lib_median "$T/runs" 1)" -v g="$(awk -v s="$SIZE" 'BEGIN { print s / 1073741824 }')" \
        -v hi="$(lib_median "$T/fanout.sum" 1)" -v lo="$(lib_median "$T/fanout.sum" 2)" -v fair="$(lib_median "$T/fanout.sum" 3)" \
        -v fmm="$(lib_minmax "$T/fanout.sum" 3)" -v c="$(lib_median "$T/fanout.runs" 2)" -v sent="$(lib_median "$T/fanout.runs" 3)" 'BEGIN {
        split(fmm, m, " ")
        printf "| slowest receiver: time | %.3f s (%.2f GB/s) |\n", hi, s / hi / 1e9
        printf "| fastest receiver: time | %.3f s (%.2f GB/s) |\n", lo, s / lo / 1e9
        printf "| fairness: fastest time / slowest time | %.2f (%.2f–%.2f) |\n", fair, m[1], m[2]
        printf "| total: %d x the blob over the slowest time | %.2f GB/s (one receiver alone: %.2f GB/s) |\n", n, n * s / hi / 1e9, s / one / 1e9
        printf "| sender A: CPU per GiB sent | %.2f s (%.0f piece bytes sent per run) |\n", c / (sent / 1073741824), sent }'
    echo
}

report() {
    local t f c ac bc ah bh mm gib
    t=$(lib_median "$T/runs" 1)
    f=$(lib_median "$T/runs" 2)
    c=$(lib_median "$T/runs" 3)
    ac=$(lib_median "$T/runs" 4)
    bc=$(lib_median "$T/runs" 5)
    ah=$(lib_median "$T/runs" 6)
    bh=$(lib_median "$T/runs" 7)
    mm=$(lib_minmax "$T/runs" 1)
    gib=$(awk -v s="$SIZE" 'BEGIN { print s / 1073741824 }')
    echo "## p2p-1gib: one ${MIB} MiB blob from agent A to agent B over the swarm (loopback, TLS)"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), agent \`$POLLEN_BIN\`${EXTRA[*]:+ with \`${EXTRA[*]}\`}."
    echo "Blob: $SIZE bytes of /dev/urandom, $DIGEST. Client: curl through B, body discarded. Median of $RUNS runs (min–max in brackets)."
    if [ -n "${BENCH_SENDER_RATE:-}" ]; then echo "A's upload shaped to $BENCH_SENDER_RATE (one htb class on lo)."; fi
    echo
    echo "| figure | median |"
    echo "| --- | --- |"
    awk -v t="$t" -v s="$SIZE" -v mm="$mm" 'BEGIN { split(mm, m, " ")
        printf "| curl through B: time | %.3f s (%.3f–%.3f) |\n", t, m[1], m[2]
        printf "| curl through B: throughput | %.2f GB/s (%.0f MB/s, %.2f GiB/s) |\n", s / t / 1e9, s / t / 1e6, s / t / 1073741824 }'
    awk -v f="$f" -v c="$c" -v s="$SIZE" 'BEGIN {
        printf "| first byte | %.1f ms |\n", f * 1000
        printf "| until B has committed its copy | %.3f s (%.2f GB/s) |\n", c, s / c / 1e9 }'
    awk -v ac="$ac" -v bc="$bc" -v g="$gib" -v au="$(lib_median "$T/runs" 10)" -v as="$(lib_median "$T/runs" 11)" \
        -v bu="$(lib_median "$T/runs" 12)" -v bs="$(lib_median "$T/runs" 13)" 'BEGIN {
        printf "| CPU per GiB moved, sender A | %.2f s (user %.2f, sys %.2f) |\n", ac / g, au / g, as / g
        printf "| CPU per GiB moved, receiver B (receive, verify, write, serve curl) | %.2f s (user %.2f, sys %.2f) |\n", bc / g, bu / g, bs / g }'
    awk -v ah="$ah" -v bh="$bh" 'BEGIN {
        printf "| peak RSS (VmHWM), sender A during the run | %.1f MiB |\n", ah / 1024
        printf "| peak RSS (VmHWM), receiver B | %.1f MiB |\n", bh / 1024 }'
    echo
    echo "Receiver CPU per GiB against the hashing floor (SHA-256 + BLAKE3 CPU of the same bytes: openssl and b3sum): $(awk -v b="$bc" -v f="$(bench_floor_cpu "$T/floor.rows")" 'BEGIN { if (f > 0) printf "%.2f x", b / f; else print "n/a" }')."
    echo
    bench_floor_table "$T/floor.rows" "$SIZE"
    echo
    echo "Floor, measured just before each run: writing a new ${MIB} MiB file with \`dd bs=1M\` on the same filesystem took" \
        "$(awk '{ printf "%s%.3f s", (NR > 1 ? ", " : ""), $1 }' "$T/floor.times") ($(findmnt -n -o FSTYPE,SOURCE --target "$T" | tr -s ' '))."
    echo
    echo "CPU seconds of the busiest threads (name/tid) in the last run:"
    echo "A: $(head -n 6 "$T/a.threads.run$RUNS" | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')."
    echo "B: $(head -n 8 "$T/b.threads.run$RUNS" | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')."
    echo
    if [ -s "$T/fanout.runs" ]; then fanout_report; fi
    echo "Every run (B's curl time s, first byte s, commit s, CPU s of A, of B, VmHWM kB of A, of B, piece bytes B received, A sent, user/sys s of A, of B):"
    echo
    sed 's/^/    /' "$T/runs"
}
report | tee "${OUT:-/dev/null}"
