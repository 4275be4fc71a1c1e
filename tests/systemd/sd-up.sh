#!/bin/bash
# Boot a throwaway, real systemd as PID 1 of new pid + mount + uts + cgroup namespaces, for the
# shmem-broker tests (tests/harness/systemd/) and for trying units by hand.
#
#   sd-up.sh WORKDIR          boot in the background; prints the host pid of that systemd
#                             (tear down with sd-down.sh WORKDIR)
#   sd-up.sh --exec WORKDIR   prepare, then become the namespace launcher (`unshare`) in the
#                             foreground: the test harness runs this, so the lab is its child
#                             and dies with it (PR_SET_PDEATHSIG + unshare --kill-child)
#
# WORKDIR/units is the lab's only unit folder besides a tmpfs /etc/systemd/system. Talk to it
# with:  nsenter -t "$(cat WORKDIR/systemd.pid)" -m -p systemctl ...
# Needs root (CAP_SYS_ADMIN), util-linux (unshare, nsenter) and a writable cgroup2 mount.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MODE=background
if [ "${1:-}" = "--exec" ]; then MODE=exec; shift; fi
W=$(realpath -m "${1:?usage: sd-up.sh [--exec] WORKDIR}")

[ "$(id -u)" = 0 ] || { echo "sd-up.sh: needs root" >&2; exit 1; }
[ -x /lib/systemd/systemd ] || { echo "sd-up.sh: /lib/systemd/systemd missing (apt-get install systemd)" >&2; exit 1; }
for tool in unshare nsenter findmnt; do
  command -v "$tool" >/dev/null || { echo "sd-up.sh: $tool missing (apt-get install util-linux)" >&2; exit 1; }
done

if [ "$MODE" = background ]; then
  mkdir -p "$W"
  setsid "$0" --exec "$W" </dev/null >"$W/launcher.log" 2>&1 &
  LPID=$!; echo "$LPID" > "$W/launcher.pid"
  SDPID=
  for _ in $(seq 1 400); do
    SDPID=$(cat "/proc/$LPID/task/$LPID/children" 2>/dev/null | awk '{print $1}')
    [ -n "$SDPID" ] && [ "$(cat "/proc/$SDPID/comm" 2>/dev/null)" = systemd ] && break
    SDPID=; kill -0 "$LPID" 2>/dev/null || break; sleep 0.025
  done
  [ -n "$SDPID" ] || { echo "sd-up.sh: systemd did not start" >&2; cat "$W/launcher.log" >&2; exit 1; }
  echo "$SDPID" > "$W/systemd.pid"
  state=
  for _ in $(seq 1 400); do
    state=$(nsenter -t "$SDPID" -m -p systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) break;; esac; sleep 0.025
  done
  case "$state" in running|degraded) ;; *) echo "sd-up.sh: systemd is '$state' after 10 s" >&2; exit 1;; esac
  echo "$SDPID"
  exit 0
fi

# --exec: prepare WORKDIR, enter a fresh cgroup, become the launcher.
mkdir -p "$W/units" "$W/empty"
cp /etc/machine-id "$W/machine-id"

cat > "$W/units/lab.target" <<'U'
[Unit]
Description=shmem-broker lab default target
Wants=systemd-journald.socket systemd-journald.service
U
# Empty stand-ins for the targets that DefaultDependencies=yes units reference.
for t in sysinit basic sockets timers paths slices local-fs local-fs-pre remote-fs swap \
         network network-pre network-online nss-lookup time-sync multi-user default \
         shutdown umount final; do
  printf '[Unit]\nDescription=stand-in %s.target\nDefaultDependencies=no\n' "$t" > "$W/units/$t.target"
done
# A minimal journald: volatile, no kmsg, no /dev/log.
cat > "$W/units/systemd-journald.socket" <<'U'
[Unit]
DefaultDependencies=no
[Socket]
ListenDatagram=/run/systemd/journal/socket
ListenStream=/run/systemd/journal/stdout
PassCredentials=yes
PassSecurity=yes
SocketMode=0666
Service=systemd-journald.service
U
cat > "$W/units/systemd-journald.service" <<'U'
[Unit]
DefaultDependencies=no
Requires=systemd-journald.socket
After=systemd-journald.socket
[Service]
Type=notify
ExecStart=/lib/systemd/systemd-journald
Sockets=systemd-journald.socket
StandardOutput=null
Restart=always
RestartSec=0
RuntimeDirectory=systemd/journal
RuntimeDirectoryPreserve=yes
FileDescriptorStoreMax=4224
U

# A cgroup of our own, unique per launcher pid and work dir, so labs can run in parallel; the
# new cgroup namespace is rooted there.
CG2=$(findmnt -n -t cgroup2 -o TARGET | head -n1)
[ -n "$CG2" ] || { echo "sd-up.sh: no cgroup2 mount" >&2; exit 1; }
CG=$CG2/shmem-broker-lab-$$-$(basename "$W")
mkdir "$CG"
echo "$CG" > "$W/cgroup"
echo $$ > "$CG/cgroup.procs"
exec unshare --pid --kill-child=SIGKILL --mount --uts --cgroup --propagation private --mount-proc \
    "$HERE/sd-init.sh" "$W"
