#!/bin/bash
# The same POP3 load against one pouch serve node on Maildir, one node on
# PostgreSQL, and two and three nodes on one PostgreSQL, all on this machine,
# with Dovecot on the same Maildirs in the same run; then RETR of a 100 MB
# message from a PostgreSQL node, and the takeover of a maildrop after
# kill -9 of the node holding it. Needs root (PostgreSQL runs as the
# postgres user, Dovecot as dovecot), python3, and PostgreSQL's and
# Dovecot's Debian packages.
#   bench/pg-nodes.sh [maildir pg1 pg2 pg3 dovecot retr takeover]   (default: all)
# Env: DURATION (each load, 20s), CLIENTS (64, split over the nodes),
#      KEEP=1 keeps the work directory (profiles, logs, JSON).
#
# Every node runs at pouch serve's defaults (its log and audit log
# included) but for --store, its own addresses, and --metrics with --pprof
# for node 1's profile; PostgreSQL
# at its own defaults (fsync, synchronous_commit on) but for max_connections
# and pg_stat_statements. The load is pouch bench's "full" session (login,
# STAT, LIST, UIDL, RETR of all 50 messages of 10 KB, QUIT), 200 users, each
# node's clients logging in as their own users (a session per maildrop).
# Per-core figures divide by the CPU seconds the servers (pouch and
# PostgreSQL, or Dovecot) used during the load, read from /proc; the load
# generator runs on the same cores.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCEN=${*:-maildir pg1 pg2 pg3 dovecot retr takeover}
DURATION=${DURATION:-20s}; CLIENTS=${CLIENTS:-64}
PEER=${PEER:-/work/shared/tools/dovecot-peer.sh}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
W=$(mktemp -d /tmp/pouch-pgnodes-XXXX); chmod 755 $W
export DIR=$W/dv PORT=${PORT:-11410}
PGPORT=$((PORT+1)); MPORT=$((PORT+10))
P=$W/pouch-data
IPS=(127.0.0.2 127.0.0.3 127.0.0.4)
ulimit -n 65536 2>/dev/null || true
PIDS=()
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
log() { echo "$@" >&2; }
stop_nodes() { for p in "${PIDS[@]}"; do kill -CONT $p 2>/dev/null || true; kill $p 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait $p 2>/dev/null || true; done; PIDS=(); }
pg() { su postgres -s /bin/sh -c "cd $W && $*"; }
cleanup() { stop_nodes; $PEER stop >/dev/null 2>&1 || true
  [ -d $W/pg ] && pg "$PGBIN/pg_ctl -D $W/pg -m fast stop" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf $W; }
trap cleanup EXIT
(cd "$ROOT" && go build -o $W/pouch ./cmd/pouch)
B=$W/pouch
waitport() { for i in $(seq 200); do ss -ltn | grep -q "$1 " && return 0; sleep 0.1; done; log "nothing listens on $1"; return 1; }
j() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

# --- PostgreSQL ------------------------------------------------------------
log "starting PostgreSQL ($PGBIN) on 127.0.0.1:$PGPORT"
mkdir -p $W/pg; chown postgres $W/pg
pg "$PGBIN/initdb -D $W/pg -U postgres -A trust -E UTF8 --locale=C >/dev/null"
cat >> $W/pg/postgresql.conf <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$W/pg'
max_connections = 300
shared_preload_libraries = 'pg_stat_statements'
CONF
pg "$PGBIN/pg_ctl -D $W/pg -l $W/pg/log -w start >/dev/null"
URL="postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable"
pg "$PGBIN/psql -qh 127.0.0.1 -p $PGPORT -U postgres -c 'CREATE EXTENSION pg_stat_statements'" >/dev/null
psqlc() { "$PGBIN/psql" -qAtX -h 127.0.0.1 -p $PGPORT -U postgres -c "$1"; }
PGMASTER=$(head -1 $W/pg/postmaster.pid)

# --- data: S1's, and one 100 MB message ----------------------------------
log "writing users and mail"
mkdir -p $P/mail $DIR/mail; chmod 700 $P
python3 - $W/users.txt $P/users $DIR/users <<'PY'
import sys
lines="".join("u%d:{PLAIN}pw-u%d\n" % (i, i) for i in range(200)) + "huge0:{PLAIN}pw-huge0\n"
for f in sys.argv[2:]: open(f,"w").write(lines)
open(sys.argv[1],"w").write("".join("u%d:pw-u%d\n" % (i, i) for i in range(200)))
PY
chmod 600 $P/users
echo "huge0:pw-huge0" > $W/huge.txt
python3 $ROOT/bench/gendata.py $P/mail 200 50 10240 u
python3 $ROOT/bench/gendata.py $P/mail 1 1 $((100<<20)) huge
cp -al $P/mail/. $DIR/mail/
log "moving it into PostgreSQL (pouch migrate)"
start=$(date +%s.%N)
$B migrate --data $P --to "$URL" 2>&1 | tail -1 >&2
MIGRATE_S=$(python3 -c "print('%.1f' % ($(date +%s.%N)-$start))")
psqlc "VACUUM ANALYZE" >/dev/null

# --- CPU accounting ----------------------------------------------------------
ticks() { # total utime+stime (+ reaped children) of the given pids, in clock ticks
  local t=0; for p in "$@"; do
    v=$(awk '{print $14+$15+$16+$17}' /proc/$p/stat 2>/dev/null || echo 0); t=$((t+v)); done; echo $t; }
pgpids() { echo $PGMASTER $(pgrep -P $PGMASTER || true); }
dvpids() { local m=$(cat $DIR/run/master.pid); echo $m $(pgrep -P $m || true); }
HZ=$(getconf CLK_TCK)
cpu_s() { python3 -c "print(($2-$1)/$HZ)"; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }

# --- nodes -----------------------------------------------------------------
# start_nodes N [maildir]: N nodes on 127.0.0.2.., at the defaults.
start_nodes() {
  stop_nodes
  local n=$1 kind=${2:-pg}
  for i in $(seq 0 $((n-1))); do
    # On PostgreSQL the accounts are those pouch migrate put in its table.
    local d=$W/node$i; mkdir -p $d; chmod 700 $d
    local store="--store $URL"; [ $kind = maildir ] && { d=$P; store=; }
    $B serve --data $d $store --pop3 ${IPS[$i]}:$PORT --pop3s '' --metrics ${IPS[$i]}:$MPORT --pprof \
      >/dev/null 2>>$W/node$i.log &
    PIDS+=($!)
    waitport ${IPS[$i]}:$PORT
  done
}
# load NAME N: the full load on N running nodes, CLIENTS split over them,
# each node's clients with their own users; profiles node 0 meanwhile.
load() {
  local name=$1 n=$2 per=$((CLIENTS/$2)) bp=() i
  for i in $(seq 0 $((n-1))); do
    awk -v n=$n -v i=$i 'NR%n==i' $W/users.txt > $W/users-$name-$i.txt
    # warm-up: every user once, so that the load measures no first login
    $B bench --users $W/users-$name-$i.txt --mix login --clients 16 --sessions $((200/n)) ${IPS[$i]}:$PORT >/dev/null 2>&1 || true
  done
  psqlc "SELECT pg_stat_statements_reset()" >/dev/null
  local p0=$(ticks "${PIDS[@]}") g0=$(ticks $(pgpids)) m0=($(busy))
  for i in $(seq 0 $((n-1))); do
    $B bench --json --users $W/users-$name-$i.txt --clients $per --duration $DURATION ${IPS[$i]}:$PORT >$W/$name-$i.json 2>>$W/bench.log &
    bp+=($!)
  done
  sleep 3
  curl -s -o $W/$name.pprof "http://${IPS[0]}:$MPORT/debug/pprof/profile?seconds=10" || true
  for p in "${bp[@]}"; do wait $p || true; done
  local p1=$(ticks "${PIDS[@]}") g1=$(ticks $(pgpids)) m1=($(busy))
  python3 - $name $n $W $(cpu_s $p0 $p1) $(cpu_s $g0 $g1) ${m0[0]} ${m0[1]} ${m1[0]} ${m1[1]} $(nproc) >> $W/rows <<'PY'
import json,sys
name,n,w=sys.argv[1],int(sys.argv[2]),sys.argv[3]
pouch,pgc=float(sys.argv[4]),float(sys.argv[5])
b0,t0,b1,t1,ncpu=map(float,sys.argv[6:11])
rs=[json.load(open("%s/%s-%d.json"%(w,name,i))) for i in range(n)]
sps=sum(r['sessions_per_s'] for r in rs); mbs=sum(r['mb_per_s'] for r in rs)
failed=sum(r['failed'] for r in rs); sessions=sum(r['sessions'] for r in rs)
retr=max(r['commands']['RETR']['p99_us'] for r in rs)/1000
busy=(b1-b0)/(t1-t0)*ncpu
server=pouch+(pgc if name!='maildir' else 0)
per=sessions/server if server else float('nan')
print("| %s | %d | %.0f | %.0f | %d | %.1f | %.1f | %.1f | %.1f of %d | %.0f |"%(name,n,sps,mbs,failed,retr,pouch,pgc if name!='maildir' else 0,busy,ncpu,per))
PY
  if [ -s $W/$name.pprof ]; then
    go tool pprof -top -nodecount=12 $B $W/$name.pprof > $W/$name.top 2>/dev/null || true
    go tool pprof -top -cum -focus 'pouchmail|jackc' -nodecount=25 $B $W/$name.pprof > $W/$name.cum 2>/dev/null || true
  fi
  [ $name != maildir ] && psqlc "SELECT calls, round(total_exec_time)::int AS ms, round(mean_exec_time::numeric,3) AS mean_ms, left(regexp_replace(query, '\s+', ' ', 'g'), 110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8" > $W/$name.pgss || true
}

echo "| setup | nodes | sessions/s | MB/s | failed | RETR p99 ms | pouch CPU s | PostgreSQL CPU s | machine busy, cores | sessions per server CPU-second |" > $W/rows
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" >> $W/rows
for s in $SCEN; do case $s in
  maildir) log "maildir: one node on Maildir"; start_nodes 1 maildir; load maildir 1; stop_nodes;;
  pg1) log "pg1: one node on PostgreSQL"; start_nodes 1; load pg1 1; stop_nodes;;
  pg2) log "pg2: two nodes on one PostgreSQL"; start_nodes 2; load pg2 2; stop_nodes;;
  pg3) log "pg3: three nodes on one PostgreSQL"; start_nodes 3; load pg3 3; stop_nodes;;
  dovecot)
    log "dovecot: Dovecot on the same Maildirs"
    $PEER start >/dev/null </dev/null
    python3 - $DIR/dovecot.conf <<'PY'
import sys; p=sys.argv[1]; s=open(p).read()
s=s.replace("process_limit = 2048", "process_limit = 2048\n  client_limit = 1")
open(p,"w").write(s)
PY
    $PEER stop >/dev/null; sleep 0.5; rm -rf $DIR/run/*; dovecot -c $DIR/dovecot.conf; waitport 127.0.0.1:$PORT
    $B bench --users $W/users.txt --mix login --clients 16 --sessions 200 127.0.0.1:$PORT >/dev/null 2>&1 || true
    d0=$(ticks $(dvpids)) m0=($(busy))
    $B bench --json --users $W/users.txt --clients $CLIENTS --duration $DURATION 127.0.0.1:$PORT >$W/dovecot-0.json 2>>$W/bench.log || true
    d1=$(ticks $(dvpids)) m1=($(busy))
    python3 - $W $(cpu_s $d0 $d1) ${m0[0]} ${m0[1]} ${m1[0]} ${m1[1]} $(nproc) >> $W/rows <<'PY'
import json,sys
w=sys.argv[1]; dv=float(sys.argv[2]); b0,t0,b1,t1,ncpu=map(float,sys.argv[3:8])
r=json.load(open(w+"/dovecot-0.json"))
print("| dovecot | 1 | %.0f | %.0f | %d | %.1f | %.1f (Dovecot) | | %.1f of %d | %.0f |"%(r['sessions_per_s'],r['mb_per_s'],r['failed'],r['commands']['RETR']['p99_us']/1000,dv,(b1-b0)/(t1-t0)*ncpu,ncpu,r['sessions']/dv if dv else float('nan')))
PY
    $PEER stop >/dev/null 2>&1 || true;;
  retr)
    log "retr: RETR of one 100 MB message from a PostgreSQL node"
    start_nodes 1
    $B bench --users $W/huge.txt --mix login ${IPS[0]}:$PORT >/dev/null 2>&1 || true
    $B bench --json --users $W/huge.txt --clients 1 --sessions 3 ${IPS[0]}:$PORT >$W/retr.json 2>>$W/bench.log || true
    RETR_MBS=$(j $W/retr.json "'%.0f' % d['mb_per_s']")
    stop_nodes;;
  takeover)
    log "takeover: kill -9 of the node holding a maildrop, at the default --lock-ttl"
    start_nodes 2
    TAKEOVER=$(python3 - ${IPS[0]} ${IPS[1]} $PORT ${PIDS[0]} <<'PY'
import poplib, os, signal, sys, time
a, b, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
p = poplib.POP3(a, port); p.user("u7"); p.pass_("pw-u7")
n = p.stat()[0]
for i in range(1, 6): p.dele(i)
os.kill(pid, signal.SIGKILL)
start = time.monotonic()
while True:
    q = poplib.POP3(b, port)
    q.user("u7")
    try:
        q.pass_("pw-u7")
        break
    except poplib.error_proto as e:
        if b"IN-USE" not in str(e).encode():
            raise
        q.quit()
        time.sleep(0.05)
took = time.monotonic() - start
left = q.stat()[0]
q.quit()
print("%.1f s (messages before %d, after %d)" % (took, n, left))
PY
)
    stop_nodes;;
esac; done

echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), PostgreSQL $($PGBIN/postgres --version | awk '{print $3}'), $(dovecot --version 2>/dev/null | cut -d' ' -f1 | sed 's/^/Dovecot /'), load average at the start: $LOADAVG, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: pouch bench full sessions, $CLIENTS clients in all, $DURATION, 200 users × 50 × 10 KB; pouch migrate of it took ${MIGRATE_S} s"
echo
cat $W/rows
[ -n "${RETR_MBS:-}" ] && echo && echo "RETR of one 100 MB message from a PostgreSQL node: $RETR_MBS MB/s (target ≥ 300)"
[ -n "${TAKEOVER:-}" ] && echo "takeover after kill -9 at --lock-ttl 20s: $TAKEOVER (target ≤ 25 s)"
for s in pg1 pg3 maildir; do
  [ -s $W/$s.top ] && { echo; echo "where pouch's time goes ($s, node 1, 10 s CPU profile; flat, then cumulative):"; sed -n '6,21p' $W/$s.top; sed -n '/flat%/,$p' $W/$s.cum; }
  [ -s $W/$s.pgss ] && { echo; echo "PostgreSQL's statements by total time ($s): calls|ms|mean ms|query"; cat $W/$s.pgss; }
done
[ -n "${KEEP:-}" ] && echo && echo "kept: $W"
exit 0
