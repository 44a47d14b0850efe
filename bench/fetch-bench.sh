#!/bin/bash
# Compare POP3 fetch clients downloading N messages of about 4 KB from Dovecot
# through a proxy adding DELAY each way, keeping mail on the server and
# storing to Maildir. Needs root (for Dovecot) and mpop, fetchmail, getmail6.
#   bench/fetch-bench.sh [N=2000] [DELAY=20ms] [CLIENTS="pouch mpop getmail fetchmail"]
# The clients write under TMPDIR (/tmp). Dovecot's Maildir stands for another
# machine's disk, so it lives apart, under SERVER_TMPDIR (/dev/shm when it
# exists): the server's own writes then do not add to the clients' fsyncs.
# TMPDIR=/dev/shm puts the clients' Maildirs on tmpfs as well (the built
# binaries too, so that tmpfs must allow exec), which leaves the disk out.
set -eu
N=${1:-${N:-2000}}; DELAY=${DELAY:-20ms}
CLIENTS=${CLIENTS:-"pouch mpop getmail fetchmail"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/pouch-bench-XXXX"); chmod 755 $W
[ -d /dev/shm ] && [ -w /dev/shm ] && SERVER_TMPDIR=${SERVER_TMPDIR:-/dev/shm}
SW=$(mktemp -d "${SERVER_TMPDIR:-${TMPDIR:-/tmp}}/pouch-bench-server-XXXX"); chmod 755 $SW
export DIR=$SW/dv PORT=${PORT:-11210}
PPORT=$((PORT+1))
cleanup() { "$ROOT/../shared/tools/dovecot-peer.sh" stop >/dev/null 2>&1 || /work/shared/tools/dovecot-peer.sh stop; [ -n "${PROXY:-}" ] && kill $PROXY 2>/dev/null; rm -rf $W $SW; }
trap cleanup EXIT
PEER=/work/shared/tools/dovecot-peer.sh
mkdir -p $DIR/mail/alice/{new,cur,tmp}
echo 'alice:{PLAIN}secret' > $DIR/users
body=$(head -c 3000 /dev/urandom | base64 -w 76)
for i in $(seq $N); do
  printf 'From: a@example.org\nTo: alice@example.org\nSubject: message %d\nMessage-Id: <%d@bench>\n\n%s\n' $i $i "$body" > $DIR/mail/alice/new/$((1700000000+i)).M${i}P1.bench
done
$PEER start >/dev/null 2>&1 </dev/null
(cd "$ROOT" && go build -o $W/pouch ./cmd/pouch && go build -o $W/proxy ./bench/latencyproxy)
$W/proxy -listen 127.0.0.1:$PPORT -to 127.0.0.1:$PORT -delay $DELAY 2>/dev/null & PROXY=$!
for i in $(seq 50); do ss -ltn | grep -q "127.0.0.1:$PPORT " && break; sleep 0.1; done
echo secret > $W/pw
count() { ls $1/new $1/cur 2>/dev/null | grep -c bench\\\|P || true; }
run() { # name command...
  local name=$1; shift
  sync # each client starts with nothing of the set-up or of the last client left to write
  local s=$(date +%s.%N)
  "$@" >$W/$name.log 2>&1 || { echo "$name failed:"; tail -5 $W/$name.log; }
  local e=$(date +%s.%N)
  local n=$(find $W/$name-mail/new $W/$name-mail/cur -type f 2>/dev/null | wc -l)
  printf '%-10s %8.2f s  %5d messages\n' $name $(echo "$e - $s" | bc) $n
}
# Dovecot builds its index on the first login, reading every message for
# its size: do that once here, so that no client pays for it.
$W/pouch fetch --server 127.0.0.1:$PORT --tls none --user alice --password-file $W/pw \
  --dry-run --keep forever --state-dir $W/warm-state -q
echo "N=$N messages, ~4 KB each, $DELAY each way, keep on server, Maildir, $(nproc) CPUs"
for c in $CLIENTS; do
  mkdir -p $W/$c-mail/{new,cur,tmp}
  case $c in
  pouch) run pouch $W/pouch fetch --server 127.0.0.1:$PPORT --tls none --user alice --password-file $W/pw \
           --to maildir:$W/pouch-mail --keep forever --state-dir $W/pouch-state ${POUCH_FLAGS:-} ;;
  mpop) run mpop mpop --host=127.0.0.1 --port=$PPORT --tls=off --auth=user --user=alice \
           --passwordeval="cat $W/pw" --keep=on --delivery=maildir,$W/mpop-mail --uidls-file=$W/mpop-uidls \
           --received-header=off --only-new=on -q ;;
  getmail) cat > $W/getmailrc <<RC
[retriever]
type = SimplePOP3Retriever
server = 127.0.0.1
port = $PPORT
username = alice
password = secret
[destination]
type = Maildir
path = $W/getmail-mail/
$( [ $(id -u) = 0 ] && echo "user = nobody" )
[options]
delete = false
read_all = false
received = false
delivered_to = false
verbose = 0
RC
           # getmail refuses to deliver as root: it switches to nobody.
           [ $(id -u) = 0 ] && chown -R nobody $W/getmail-mail
           run getmail getmail --getmaildir=$W --rcfile=$W/getmailrc ;;
  fetchmail) cat > $W/fetchmailrc <<RC
set no syslog
poll 127.0.0.1 port $PPORT proto pop3 auth password
  user alice password secret keep
  sslproto '' no sslcertck
  mda "sh -c 'f=\$(mktemp -p $W/fetchmail-mail/tmp) && cat > \$f && sync \$f && mv \$f $W/fetchmail-mail/new/'"
RC
           chmod 600 $W/fetchmailrc
           run fetchmail env FETCHMAILHOME=$W fetchmail -f $W/fetchmailrc --idfile $W/fetchids --uidl -s ;;
  esac
done
