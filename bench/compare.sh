#!/bin/bash
# Side-by-side benchmark of Pouch and Dovecot on this machine: the same Maildir
# data, the same load (pouch bench), one run. Needs root (Dovecot) and python3.
#   bench/compare.sh [S1 S2 S3 S4 S5 S6 S7 S8]      (default: all)
# Env: DURATION (S1/S2/S7 run time, 20s), S5N (idle sessions, 10000), S3N
# (100000), TYPO_DURATION (each of S8's two runs, 5m), TYPO_RATE (S8's share
# of mistyped passwords, 0.02), TYPO_MIX (S8's sessions, full).
#
# Pouch runs at its defaults, defences included: every load comes from one
# address (127.0.0.1), which is neither trusted nor exempt from anything
# (no --trusted-networks). Only the connection-count limits are lifted, as
# Dovecot has none by default: POUCH_LIMITS (--max-connections 0
# --max-connections-per-ip 0; set POUCH_LIMITS= to keep them), and for S5's
# 10,000 sessions also --max-prelogin-connections 0 (Dovecot's process and
# client limits are raised for S5 too). Logs at their
# defaults: Pouch's log (info, a line per login) and audit log, Dovecot's
# log.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCEN=${*:-S1 S2 S3 S4 S5 S6 S7 S8}
DURATION=${DURATION:-20s}; S5N=${S5N:-10000}; S3N=${S3N:-100000}
TYPO_DURATION=${TYPO_DURATION:-5m}; TYPO_RATE=${TYPO_RATE:-0.02}; TYPO_MIX=${TYPO_MIX:-full}
POUCH_LIMITS=${POUCH_LIMITS---max-connections 0 --max-connections-per-ip 0}
PEER=${PEER:-/work/shared/tools/dovecot-peer.sh}
W=$(mktemp -d /tmp/pouch-cmp-XXXX); chmod 755 $W
export DIR=$W/dv PORT=${PORT:-11310}
DTLS=$((PORT+1)); PP=$((PORT+2)); PTLS=$((PORT+3))
P=$W/pouch-data
ulimit -n 200000 2>/dev/null || ulimit -n $(ulimit -Hn)
POUCH_PID=
stop_pouch() { [ -n "$POUCH_PID" ] && kill $POUCH_PID 2>/dev/null && wait $POUCH_PID 2>/dev/null; POUCH_PID=; }
cleanup() { stop_pouch; $PEER stop >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf $W; }
trap cleanup EXIT
(cd "$ROOT" && go build -o $W/pouch ./cmd/pouch)
B=$W/pouch
log() { echo "$@" >&2; }
waitport() { for i in $(seq 100); do ss -ltn | grep -q "127.0.0.1:$1 " && return 0; sleep 0.1; done; log "nothing listens on $1"; return 1; }

# --- servers -------------------------------------------------------------
# start_pouch [flags]: a fresh Pouch (its guard knows nothing yet) at its
# defaults but POUCH_LIMITS, plus the flags given.
start_pouch() {
  stop_pouch
  $B serve --data $P --pop3 127.0.0.1:$PP --pop3s 127.0.0.1:$PTLS $POUCH_LIMITS "$@" ${POUCH_FLAGS:-} 2>>$W/pouch.log &
  POUCH_PID=$!
  waitport $PP; waitport $PTLS
}
# Dovecot: the peer script's configuration, plus pop3s on $DTLS with the same
# self-signed certificate as Pouch, and limits high enough for S5.
start_dovecot() {
  $PEER start >/dev/null </dev/null
  stop_dovecot
  python3 - $DIR/dovecot.conf <<PY
import sys; p=sys.argv[1]; s=open(p).read()
s=s.replace("ssl = no", "ssl = yes\nssl_cert = <$P/tls/cert.pem\nssl_key = <$P/tls/key.pem\nssl_min_protocol = TLSv1.2")
s=s.replace("  inet_listener pop3 {", "  inet_listener pop3s {\n    port = $DTLS\n    ssl = yes\n  }\n  inet_listener pop3 {")
s=s.replace("process_limit = 2048", "process_limit = 12000\n  client_limit = 1")
s=s.replace("service_count = 0", "service_count = 0\n  client_limit = 12000\n  process_limit = 4")
s+="default_client_limit = 19000\ndefault_vsz_limit = 0\n"
open(p,"w").write(s)
PY
  dovecot -c $DIR/dovecot.conf
  waitport $PORT; waitport $DTLS
}
stop_dovecot() { $PEER stop >/dev/null 2>&1 || true
  for i in $(seq 100); do ss -ltn | grep -q "127.0.0.1:$PORT " || break; sleep 0.1; done
  sleep 0.5; rm -rf $DIR/run/*; }
rss_kb() { awk '/^VmRSS/{print $2}' /proc/$1/status; }
hwm_kb() { awk '/^VmHWM/{print $2}' /proc/$1/status; }
# Sum of the proportional memory (PSS) of all Dovecot processes, in KB.
dovecot_pss() { local t=0 m=$(cat $DIR/run/master.pid); for p in $m $(pgrep -P $m || true); do
  v=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null || echo 0); t=$((t+${v:-0})); done; echo $t; }
pouch_pss() { awk '/^Pss:/{print $2}' /proc/$POUCH_PID/smaps_rollup; }
j() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }
bench() { # out-file bench-args...
  local out=$1; shift; $B bench --json "$@" >$out 2>>$W/bench.log || true; }
ratio() { python3 -c "a,b=$1,$2; print('%.2f' % (a/b) if b else 'n/a')"; }

# --- data ----------------------------------------------------------------
mkdir -p $P/mail $DIR/mail
need_users=200; case "$SCEN" in *S5*) need_users=$((S5N+1));; esac
log "writing users ($need_users) and mail"
python3 - $need_users $W/users.txt $P/users $DIR/users <<'PY'
import sys; n=int(sys.argv[1])
lines="".join("u%d:{PLAIN}pw-u%d\n" % (i, i) for i in range(n)) + "big0:{PLAIN}pw-big0\nhuge0:{PLAIN}pw-huge0\n"
for f in sys.argv[2:]: open(f,"w").write(lines)
PY
chmod 600 $P/users
head -200 $W/users.txt > $W/users200.txt; sed -i '/^big0\|^huge0/d' $W/users.txt
python3 $ROOT/bench/gendata.py $P/mail 200 50 10240 u
case "$SCEN" in *S3*) python3 $ROOT/bench/gendata.py $P/mail 1 $S3N 2048 big ;; esac
case "$SCEN" in *S4*) python3 $ROOT/bench/gendata.py $P/mail 1 1 $((100<<20)) huge ;; esac
echo "big0:pw-big0" > $W/big.txt; echo "huge0:pw-huge0" > $W/huge.txt
cp -al $P/mail/. $DIR/mail/
start_pouch   # makes the TLS certificate Dovecot uses too
start_dovecot
RES=$W/results.md
{ echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/{printf "%.1f GB", $2/1048576}' /proc/meminfo) RAM, $(uname -r), dovecot $(dovecot --version | cut -d' ' -f1)"
  echo; echo "| scenario | metric | Pouch | Dovecot | ratio | target |"; echo "| --- | --- | --- | --- | --- | --- |"; } > $RES
row() { local l="$*"; l=${l//;;/|}; echo "| $l |" >> $RES; echo "$l" >&2; }

# --- S1/S2: full download sessions ----------------------------------------
# warm ADDR TLS-MODE: every user logs in once (Pouch verifies each password
# once and then serves it from its cache of verified credentials), the same
# for both servers.
warm() { $B bench --users $W/users200.txt --mix login --clients 64 --sessions 200 --tls $2 127.0.0.1:$1 >/dev/null 2>&1 || true; }
pair() { # name pouch-addr dovecot-addr tls-mode mix: 64 clients for DURATION, each server after its warm-up
  warm $2 $4; warm $3 $4
  bench $W/$1-pouch.json --users $W/users200.txt --clients 64 --duration $DURATION --tls $4 --mix $5 127.0.0.1:$2
  bench $W/$1-dv.json --users $W/users200.txt --clients 64 --duration $DURATION --tls $4 --mix $5 127.0.0.1:$3
}
full() { # name pouch-addr dovecot-addr tls-mode target
  pair $1 $2 $3 $4 full
  local a=$(j $W/$1-pouch.json "d['sessions_per_s']") b=$(j $W/$1-dv.json "d['sessions_per_s']")
  row "$1 64 clients, 200 users × 50 × 10 KB, $4 ;; sessions/s (failed P/D: $(j $W/$1-pouch.json "d['failed']")/$(j $W/$1-dv.json "d['failed']")) ;; $(printf %.0f $a) ;; $(printf %.0f $b) ;; $(ratio $a $b) ;; $5"
  for f in pouch dv; do row "$1 ;; MB/s, RETR p50/p99 ms ($f) ;; $(j $W/$1-$f.json "'%.0f MB/s, %.2f/%.2f' % (d['mb_per_s'], d['commands']['RETR']['p50_us']/1000, d['commands']['RETR']['p99_us']/1000)") ;; ;; ;;"; done
}
case "$SCEN" in *S1*) log "S1"; full S1 $PP $PORT none "≥ 3×";; esac
case "$SCEN" in *S2*) log "S2"; full S2 $PTLS $DTLS implicit "≥ 2×";; esac

# --- S3: 100,000 messages: PASS → +OK, then UIDL --------------------------
# cold: first login ever (no index yet), servers just started, page cache
# dropped; warm: the same again at once; recold: servers restarted and page
# cache dropped again, with the index (Dovecot: dovecot-uidlist) that the
# first login wrote.
case "$SCEN" in *S3*)
  log "S3"
  for srv in pouch dv; do
    for phase in cold warm recold; do
      if [ $phase != warm ]; then
        if [ $srv = pouch ]; then start_pouch; else stop_dovecot; start_dovecot; fi
        sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
      fi
      addr=$PP; [ $srv = dv ] && addr=$PORT
      bench $W/S3-$srv-$phase.json --users $W/big.txt --clients 1 --sessions 1 --mix uidl 127.0.0.1:$addr
    done
  done
  for phase in cold warm recold; do
    a=$(j $W/S3-pouch-$phase.json "(d['commands']['PASS']['max_us']+d['commands']['UIDL']['max_us'])/1e6")
    b=$(j $W/S3-dv-$phase.json "(d['commands']['PASS']['max_us']+d['commands']['UIDL']['max_us'])/1e6")
    row "S3 $S3N messages, $phase ;; PASS→+OK + UIDL, s (PASS P/D: $(j $W/S3-pouch-$phase.json "'%.3f' % (d['commands']['PASS']['max_us']/1e6)")/$(j $W/S3-dv-$phase.json "'%.3f' % (d['commands']['PASS']['max_us']/1e6)")) ;; $(printf %.3f $a) ;; $(printf %.3f $b) ;; $(ratio $b $a) ;; $(case $phase in cold) echo 'Pouch ≤ 2 s';; warm) echo '≥ 1× (no slower)';; esac)"
  done ;;
esac

# --- S4: one 100 MB message ------------------------------------------------
case "$SCEN" in *S4*)
  log "S4"
  start_pouch
  # A login first, so that the baseline includes what any login costs (the
  # users file, the hash computation) and the growth is the RETR's own.
  $B bench --users $W/huge.txt --mix login 127.0.0.1:$PP >/dev/null 2>&1 || true
  # The message in the page cache for both servers (S3 drops the cache, and
  # Dovecot, measured second, would otherwise find it warm): a RETR rate, not
  # a disk's.
  cat $P/mail/huge0/*/* > /dev/null
  sleep 1
  before=$(rss_kb $POUCH_PID)
  bench $W/S4-pouch.json --users $W/huge.txt --clients 1 --sessions 3 127.0.0.1:$PP
  grow=$(( $(hwm_kb $POUCH_PID) - before ))
  bench $W/S4-dv.json --users $W/huge.txt --clients 1 --sessions 3 127.0.0.1:$PORT
  a=$(j $W/S4-pouch.json "d['mb_per_s']"); b=$(j $W/S4-dv.json "d['mb_per_s']")
  row "S4 RETR of one 100 MB message (3 sessions) ;; MB/s ;; $(printf %.0f $a) ;; $(printf %.0f $b) ;; $(ratio $a $b) ;; ≥ 1000 MB/s"
  row "S4 ;; server peak RSS growth, MB ;; $(python3 -c "print('%.1f' % ($grow/1024))") ;; ;; ;; < 16 MB" ;;
esac

# --- S5: idle logged-in sessions -----------------------------------------
idle() { # name addr memfn
  local out=$W/S5-$1.json ready=$W/S5-$1.ready
  : > $ready
  # Warm-up: every user logs in once and leaves, so the baseline holds what
  # logins cost (Pouch: the users file, the credential cache, the heap the
  # hash computations grew) and the growth is the open sessions' own.
  $B bench --users $W/users.txt --mix login --clients 64 --sessions $S5N --timeout 300s 127.0.0.1:$2 >/dev/null 2>&1 || true
  sleep 3
  local m0=$($3)
  $B bench --json --users $W/users.txt --mix idle --clients $S5N --duration 600s --timeout 120s 127.0.0.1:$2 >$out 2>$ready &
  local bp=$!
  for i in $(seq 1200); do grep -q "idle sessions logged in" $ready && break; kill -0 $bp 2>/dev/null || break; sleep 0.1; done
  sleep 2
  local m1=$($3)
  kill -INT $bp 2>/dev/null; wait $bp || true
  grep -q "idle sessions logged in" $ready || log "S5 $1: not all sessions logged in: $(tail -3 $ready)"
  python3 -c "print('%.1f' % (($m1-$m0)/$S5N))"
}
case "$SCEN" in *S5*)
  log "S5"
  # 10,000 connections waiting to log in at once: past the pre-login cap
  # too (Dovecot's limits are raised in start_dovecot).
  start_pouch --max-connections 0 --max-connections-per-ip 0 --max-prelogin-connections 0; sleep 0.5
  pk=$(idle pouch $PP pouch_pss)
  dk=$(idle dv $PORT dovecot_pss)
  row "S5 $S5N idle logged-in sessions ;; memory per session, KB (PSS) ;; $pk ;; $dk ;; $(ratio $dk $pk) ;; ≤ 32 KB" ;;
esac

# --- S6: login storm with argon2id hashes ---------------------------------
case "$SCEN" in *S6*)
  log "S6"
  N6=${S6N:-256}
  python3 - $N6 $W/s6.txt <<'PY'
import sys; n=int(sys.argv[1]); open(sys.argv[2],"w").write("".join("s%d:Storm-Passw0rd-%04d\n" % (i,i) for i in range(n)))
PY
  mkdir -p $W/s6data; : > $W/s6data/users
  # hashes made by pouch user add ({ARGON2ID}, m=19 MiB, t=2, p=1); Dovecot reads the same lines.
  while IFS=: read -r u pw; do echo "$pw" | $B user add --data $W/s6data "$u" >/dev/null 2>$W/useradd.err || { log "user add $u: $(cat $W/useradd.err)"; exit 1; }; done < $W/s6.txt
  grep '^s[0-9]' $W/s6data/users | cut -d: -f1-2 >> $P/users
  grep '^s[0-9]' $W/s6data/users | cut -d: -f1-2 >> $DIR/users
  for i in $(seq 0 $((N6-1))); do mkdir -p $P/mail/s$i/{new,cur,tmp} $DIR/mail/s$i/{new,cur,tmp}; done
  chown -R dovecot:dovecot $DIR/mail
  start_pouch
  stop_dovecot; start_dovecot
  for srv in pouch dv; do
    addr=$PP; [ $srv = dv ] && addr=$PORT
    # cold: every credential verified once (no cache can help); warm: the same users again for 10 s.
    bench $W/S6-$srv-cold.json --users $W/s6.txt --mix login --clients 64 --sessions $((N6-1)) --probe 10ms 127.0.0.1:$addr
    bench $W/S6-$srv-warm.json --users $W/s6.txt --mix login --clients 64 --duration 10s --probe 10ms 127.0.0.1:$addr
  done
  for phase in cold warm; do
    a=$(j $W/S6-pouch-$phase.json "d['sessions_per_s']"); b=$(j $W/S6-dv-$phase.json "d['sessions_per_s']")
    row "S6 login storm, 64 clients, argon2id, $phase ;; logins/s ;; $(printf %.0f $a) ;; $(printf %.0f $b) ;; $(ratio $a $b) ;;"
    row "S6 $phase ;; NOOP p99 of an open session, ms ;; $(j $W/S6-pouch-$phase.json "'%.1f' % (d['probe_noop']['p99_us']/1000)") ;; $(j $W/S6-dv-$phase.json "'%.1f' % (d['probe_noop']['p99_us']/1000)") ;; ;; ≤ 50 ms"
  done ;;
esac

# --- S7: 64 clients from one address ------------------------------------
# Every load here comes from 127.0.0.1; these two rows say so in their name:
# an office NAT, a carrier's CGNAT, a webmail host or a load balancer
# without the PROXY protocol, against Pouch's guard at its defaults. Full
# sessions, then login only (USER, PASS, QUIT), each server after its
# warm-up, Pouch freshly started.
case "$SCEN" in *S7*)
  log "S7"
  start_pouch
  pair S7-full $PP $PORT none full
  pair S7-login $PP $PORT none login
  for m in full login; do
    a=$(j $W/S7-$m-pouch.json "d['sessions_per_s']"); b=$(j $W/S7-$m-dv.json "d['sessions_per_s']")
    row "S7 from one address (127.0.0.1), 64 clients, $m ;; sessions/s (failed P/D: $(j $W/S7-$m-pouch.json "d['failed']")/$(j $W/S7-$m-dv.json "d['failed']"); PASS p99 ms P/D: $(j $W/S7-$m-pouch.json "'%.2f' % (d['commands']['PASS']['p99_us']/1000)")/$(j $W/S7-$m-dv.json "'%.2f' % (d['commands']['PASS']['p99_us']/1000)")) ;; $(printf %.0f $a) ;; $(printf %.0f $b) ;; $(ratio $a $b) ;; $(case $m in full) echo '≥ 3×';; login) echo '≥ 10×';; esac)"
  done ;;
esac

# --- S8: honest typos from one address -----------------------------------
# 64 clients from 127.0.0.1, the same load twice for TYPO_DURATION against a
# freshly started Pouch after the warm-up: once with every password right,
# once with TYPO_RATE of the sessions, drawn at random, sending the user's
# password with one character changed (so the typos fall on every user, a
# few at a time, between her correct logins). Pouch only: what is measured
# is what its guard does to the correct logins beside the typos. Wanted: no
# correct login refused, their PASS p99 within 100 ms of the run without
# typos, and no ban of the address. (A client retrying a stale password in
# a tight loop is another case: its name is locked after 10 failures, and
# about 100 refusals more within the window ban the address, as hammering.)
case "$SCEN" in *S8*)
  log "S8 (2 × $TYPO_DURATION)"
  bans0=$(grep -c "source banned" $W/pouch.log || true)
  for run in clean typo; do
    start_pouch
    warm $PP none
    rate=0; [ $run = typo ] && rate=$TYPO_RATE
    bench $W/S8-$run.json --users $W/users200.txt --clients 64 --duration $TYPO_DURATION --mix $TYPO_MIX --wrong-password-rate $rate 127.0.0.1:$PP
  done
  bans=$(( $(grep -c "source banned" $W/pouch.log || true) - bans0 ))
  listed=$($B ban list --data $P | grep -c . || true)
  p99() { j $W/S8-$1.json "d['commands']['PASS']['p99_us']/1000"; }
  a=$(p99 typo); b=$(p99 clean)
  row "S8 from one address, 64 clients, $TYPO_MIX, $(python3 -c "print('%g' % ($TYPO_RATE*100))")% mistyped passwords, $TYPO_DURATION ;; correct logins refused (of $(j $W/S8-typo.json "d['sessions']+d['correct_refused']"); mistyped: $(j $W/S8-typo.json "d['wrong_refused']") refused, $(j $W/S8-typo.json "d['wrong_accepted']") let in) ;; $(j $W/S8-typo.json "d['correct_refused']") ;; ;; ;; 0"
  row "S8 ;; correct logins' PASS p99 ms, with typos (without; difference) ;; $(printf %.2f $a) ($(printf %.2f $b); $(python3 -c "print('%+.2f' % ($a-$b))")) ;; ;; ;; within 100 ms"
  row "S8 ;; correct logins' PASS p50 / max ms, with typos (without) ;; $(j $W/S8-typo.json "'%.2f / %.0f' % (d['commands']['PASS']['p50_us']/1000, d['commands']['PASS']['max_us']/1000)") ($(j $W/S8-clean.json "'%.2f / %.0f' % (d['commands']['PASS']['p50_us']/1000, d['commands']['PASS']['max_us']/1000)")) ;; ;; ;;"
  row "S8 ;; sessions/s with typos (without) ;; $(j $W/S8-typo.json "'%.0f' % d['sessions_per_s']") ($(j $W/S8-clean.json "'%.0f' % d['sessions_per_s']")) ;; ;; ;;"
  row "S8 ;; bans of the address (log; pouch ban list) ;; $bans; $listed ;; ;; ;; 0"
  for f in clean typo; do
    e=$(j $W/S8-$f.json "'; '.join('%d× %s' % (n, k) for k, n in (d.get('errors') or {}).items())")
    [ -z "$e" ] || log "S8 $f: errors: $e"
  done ;;
esac
echo
cat $RES
[ -n "${OUT:-}" ] && cp $RES $OUT
exit 0
