#!/bin/bash
# Static checks of the project's systemd units, for CI:
#  1. `systemd-analyze verify` of copies of shmem-broker.socket and .service whose ExecStart=
#     runs the built binary must be clean: exit 0 and no output line about the units.
#  2. `systemd-analyze security --offline=yes` of the service must rate its exposure at most
#     MAX_EXPOSURE (default 1.5; 0 is best, 10 worst).
#  The same two checks for shmem-bridge.service and for shmem-broker-metrics.service (with its
#  .timer), whose ExecStart= runs the built shmem-bridge / shmemctl.
#
#   systemd/check-units.sh [--bin-dir DIR] [--max-exposure N]
#
# DIR holds the built shmem-broker: default $SHMEM_BROKER_BIN_DIR, else $CARGO_TARGET_DIR/debug,
# else <repo>/target/debug (run `cargo build --workspace` first). Needs systemd-analyze (package
# systemd); no running systemd and no root.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MAX_EXPOSURE=1.5
if [ -n "${SHMEM_BROKER_BIN_DIR:-}" ]; then
  BIN_DIR=$SHMEM_BROKER_BIN_DIR
elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
  case "$CARGO_TARGET_DIR" in /*) BIN_DIR=$CARGO_TARGET_DIR/debug;; *) BIN_DIR=$REPO/$CARGO_TARGET_DIR/debug;; esac
else
  BIN_DIR=$REPO/target/debug
fi

die() { echo "check-units.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a value"; BIN_DIR=$2; shift 2;;
    --max-exposure) [ $# -ge 2 ] || die "--max-exposure needs a value"; MAX_EXPOSURE=$2; shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0;;
    *) die "unknown argument: $1 (see --help)";;
  esac
done
command -v systemd-analyze >/dev/null || die "systemd-analyze not found (apt-get install systemd)"
BROKER=$(realpath -m "$BIN_DIR/shmem-broker")
[ -x "$BROKER" ] || die "$BROKER not found: run 'cargo build --workspace' first"

T=$(mktemp -d); trap 'rm -rf -- "$T"' EXIT
cp "$REPO/systemd/shmem-broker.socket" "$T/shmem-broker.socket"
# ExecStart= runs the built binary; its arguments, if any, are kept.
# ExecReload= checks the config with the same binary before the SIGHUP.
sed -e "s|^ExecStart=[^ ]*/shmem-broker\\b|ExecStart=$BROKER|" \
    -e "s|^ExecReload=[^ ]*/shmem-broker\\b|ExecReload=$BROKER|" \
    "$REPO/systemd/shmem-broker.service" > "$T/shmem-broker.service"
grep -q "^ExecStart=$BROKER\\b" "$T/shmem-broker.service" ||
  die "no ExecStart=.../shmem-broker line to point at $BROKER in systemd/shmem-broker.service"

failed=0

echo "== systemd-analyze verify shmem-broker.socket shmem-broker.service"
rc=0
out=$(cd "$T" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify "$T/shmem-broker.socket" "$T/shmem-broker.service" 2>&1) || rc=$?
[ -z "$out" ] || printf '%s\n' "$out"
if [ "$rc" -ne 0 ]; then
  echo "FAIL: systemd-analyze verify exited $rc"; failed=1
elif printf '%s\n' "$out" | grep -q 'shmem-broker'; then
  echo "FAIL: systemd-analyze verify has something to say about the units (above)"; failed=1
else
  echo "ok: verify is clean"
fi

echo "== systemd-analyze security --offline=yes shmem-broker.service"
rc=0
out=$(cd "$T" && SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=yes --no-pager "$T/shmem-broker.service" 2>&1) || rc=$?
line=$(printf '%s\n' "$out" | grep 'Overall exposure level for shmem-broker.service' || true)
exposure=$(printf '%s\n' "$line" | sed -n 's/.*Overall exposure level for shmem-broker\.service: *\([0-9][0-9]*\.[0-9]*\).*/\1/p')
if [ -z "$exposure" ]; then
  printf '%s\n' "$out"
  echo "FAIL: no 'Overall exposure level' line (systemd-analyze security exited $rc)"; failed=1
elif awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 > m + 0) }'; then
  printf '%s\n' "$out" | grep -E '^✗|^\s*✗' || true
  echo "FAIL: exposure $exposure is above $MAX_EXPOSURE (items marked ✗ above)"; failed=1
else
  echo "ok: exposure $exposure <= $MAX_EXPOSURE"
fi

# ---- shmem-bridge.service (issue 16): the same two checks, against the built shmem-bridge ----
BRIDGE=$(realpath -m "$BIN_DIR/shmem-bridge")
[ -x "$BRIDGE" ] || die "$BRIDGE not found: run 'cargo build --workspace' first"
sed -e "s|^ExecStart=[^ ]*/shmem-bridge\\b|ExecStart=$BRIDGE|" \
    "$REPO/systemd/shmem-bridge.service" > "$T/shmem-bridge.service"
echo "== systemd-analyze verify shmem-bridge.service (with the broker's units)"
rc=0
out=$(cd "$T" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify "$T/shmem-broker.socket" "$T/shmem-broker.service" "$T/shmem-bridge.service" 2>&1) || rc=$?
[ -z "$out" ] || printf '%s\n' "$out"
if [ "$rc" -ne 0 ] || printf '%s\n' "$out" | grep -q 'shmem-bridge'; then
  echo "FAIL: systemd-analyze verify of shmem-bridge.service (exit $rc, output above)"; failed=1
else
  echo "ok: verify is clean"
fi
out=$(cd "$T" && SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=yes --no-pager "$T/shmem-bridge.service" 2>&1) || true
exposure=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for shmem-bridge\.service: *\([0-9][0-9]*\.[0-9]*\).*/\1/p')
if [ -z "$exposure" ] || awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 > m + 0) }'; then
  printf '%s\n' "$out" | grep -E '^✗|^\s*✗' || true
  echo "FAIL: shmem-bridge.service exposure ${exposure:-unknown} is above $MAX_EXPOSURE"; failed=1
else
  echo "ok: shmem-bridge.service exposure $exposure <= $MAX_EXPOSURE"
fi
# ---- end shmem-bridge.service ----

# ---- shmem-broker-metrics.service and .timer (issue 15): the same checks, with the built shmemctl ----
CTL=$(realpath -m "$BIN_DIR/shmemctl")
[ -x "$CTL" ] || die "$CTL not found: run 'cargo build --workspace' first"
sed -e "s|^ExecStart=[^ ]*/shmemctl\\b|ExecStart=$CTL|" \
    "$REPO/systemd/shmem-broker-metrics.service" > "$T/shmem-broker-metrics.service"
grep -q "^ExecStart=$CTL\\b" "$T/shmem-broker-metrics.service" ||
  die "no ExecStart=.../shmemctl line to point at $CTL in systemd/shmem-broker-metrics.service"
cp "$REPO/systemd/shmem-broker-metrics.timer" "$T/shmem-broker-metrics.timer"
echo "== systemd-analyze verify shmem-broker-metrics.service .timer (with the broker's units)"
rc=0
out=$(cd "$T" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify "$T/shmem-broker.socket" "$T/shmem-broker.service" "$T/shmem-broker-metrics.service" "$T/shmem-broker-metrics.timer" 2>&1) || rc=$?
[ -z "$out" ] || printf '%s\n' "$out"
if [ "$rc" -ne 0 ] || printf '%s\n' "$out" | grep -q 'shmem-broker-metrics'; then
  echo "FAIL: systemd-analyze verify of the metrics units (exit $rc, output above)"; failed=1
else
  echo "ok: verify is clean"
fi
out=$(cd "$T" && SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=yes --no-pager "$T/shmem-broker-metrics.service" 2>&1) || true
exposure=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for shmem-broker-metrics\.service: *\([0-9][0-9]*\.[0-9]*\).*/\1/p')
if [ -z "$exposure" ] || awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 > m + 0) }'; then
  printf '%s\n' "$out" | grep -E '^✗|^\s*✗' || true
  echo "FAIL: shmem-broker-metrics.service exposure ${exposure:-unknown} is above $MAX_EXPOSURE"; failed=1
else
  echo "ok: shmem-broker-metrics.service exposure $exposure <= $MAX_EXPOSURE"
fi
# ---- end shmem-broker-metrics ----

[ "$failed" -eq 0 ] || exit 1
echo "units OK"
