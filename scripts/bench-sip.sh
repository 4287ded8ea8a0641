#!/usr/bin/env bash
# SIP benchmarks beside Kamailio 5.6, in one run on loopback (never part of the tests):
#   OPTIONS: 200,000 at 20,000/s, no authentication on either side;
#   digest REGISTER: 50,000 users registering with MD5 digest (401, then 200) at 5,000/s.
# Needs sipp and kamailio (apt-get install sip-tester kamailio) and the team's recipes
# (kamailio configurations and sipp scenarios): pass their folder, default ../shared/recipes.
# Prints one line per server and test: completed, failed, wall seconds, CPU µs per call.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPES=$(cd "${1:-../shared/recipes}" && pwd)
cargo build --release -q -p supernode
SN=./target/release/supernode
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
ticks() { local t=0 q v; for q in "$1" $(pgrep -P "$1"); do v=$(awk '{print $14+$15}' /proc/$q/stat 2>/dev/null || echo 0); t=$((t+v)); done; echo $t; }
port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
measure() { # name pid target scenario rate count [sipp args...]
  local name=$1 pid=$2 target=$3 sc=$4 rate=$5 n=$6; shift 6
  local c0 c1 s e; c0=$(ticks "$pid"); s=$(date +%s.%N)
  timeout 120 sipp "$target" -sf "$sc" -i 127.0.0.1 -p "$(port)" -r "$rate" -m "$n" -l 100000 \
    -trace_screen -screen_file "$work/$name.txt" -nostdin "$@" >/dev/null 2>&1 || true
  e=$(date +%s.%N); c1=$(ticks "$pid")
  local ok fl; ok=$(awk -F'|' '/Successful call/{gsub(/ /,"",$3); v=$3} END{print v+0}' "$work/$name.txt")
  fl=$(awk -F'|' '/Failed call/{gsub(/ /,"",$3); v=$3} END{print v+0}' "$work/$name.txt")
  echo "$name: ok $ok failed $fl wall $(echo "$e - $s" | bc) s cpu $(( (c1-c0) * 10000 / (ok>0?ok:1) )) us/call"
}
# supernode, no authentication (loopback only), then with MD5 digest for 50,000 users.
$SN run --data "$work/open" --domain example.org --sip 127.0.0.1:0 --admin 127.0.0.1:0 --turn 127.0.0.1:0 --p2p 127.0.0.1:0 --sip-auth none >"$work/sn1.log" 2>&1 &
P=$!; sleep 1; A=$(grep -oE 'sip udp [0-9.:]+' "$work/sn1.log" | awk '{print $3}')
measure supernode-options $P "$A" "$RECIPES/digest/sipp-options.xml" 20000 200000
kill $P; wait $P 2>/dev/null || true
$SN user add user1 --password secret --data "$work/auth" --domain example.org >/dev/null
python3 - "$work/auth/supernode.db" <<'PY'
import hashlib, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1])
h = lambda f, u: f(f"{u}:example.org:secret".encode()).hexdigest()
c.executemany("INSERT OR REPLACE INTO accounts VALUES (?,?,?,?)",
    [(f"user{i}", h(hashlib.md5, f"user{i}"), h(hashlib.sha256, f"user{i}"), int(time.time())) for i in range(1, 50001)])
c.commit()
PY
printf '[registrar]\ndigest_algorithms = ["MD5"]\n' >"$work/md5.toml"
$SN run --config "$work/md5.toml" --data "$work/auth" --domain example.org --sip 127.0.0.1:0 --admin 127.0.0.1:0 --turn 127.0.0.1:0 --p2p 127.0.0.1:0 >"$work/sn2.log" 2>&1 &
P=$!; sleep 1; A=$(grep -oE 'sip udp [0-9.:]+' "$work/sn2.log" | awk '{print $3}')
measure supernode-digest-register $P "$A" "$RECIPES/digest/sipp-register-digest.xml" 5000 50000 -s user
kill $P; wait $P 2>/dev/null || true
# Kamailio, as the anchors recipe starts it.
K=$(port); sed "s/^listen=udp:127.0.0.1:5070/listen=udp:127.0.0.1:$K/" "$RECIPES/kamailio-registrar.cfg" >"$work/k.cfg"
kamailio -m 1024 -M 64 -f "$work/k.cfg" -P "$work/k.pid" -DD -E >"$work/k.log" 2>&1 &
P=$!; sleep 1.5
measure kamailio-options $P "127.0.0.1:$K" "$RECIPES/digest/sipp-options.xml" 20000 200000
kill $P; wait $P 2>/dev/null || true
K=$(port); sed -e "s/127.0.0.1:5070/127.0.0.1:$K/g" -e 's/"algorithm", "SHA-256"/"algorithm", "MD5"/' "$RECIPES/digest/kamailio-auth.cfg" >"$work/ka.cfg"
kamailio -m 1024 -M 64 -f "$work/ka.cfg" -P "$work/ka.pid" -DD -E >"$work/ka.log" 2>&1 &
P=$!; sleep 1.5
measure kamailio-digest-register $P "127.0.0.1:$K" "$RECIPES/digest/sipp-register-digest.xml" 5000 50000 -s user
kill $P; wait $P 2>/dev/null || true
