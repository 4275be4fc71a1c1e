#!/bin/bash
# Tear down a lab started by `sd-up.sh WORKDIR` (background mode): stop its systemd (which ends
# every process in the namespace), then remove its cgroups. Only the pids recorded in WORKDIR
# are signalled.
W=$(realpath -m "${1:?usage: sd-down.sh WORKDIR}")
SD=$(cat "$W/systemd.pid" 2>/dev/null); L=$(cat "$W/launcher.pid" 2>/dev/null); CG=$(cat "$W/cgroup" 2>/dev/null)
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
if alive "$SD"; then
  timeout 10 nsenter -t "$SD" -m -p systemctl exit -f >/dev/null 2>&1 || true
  for _ in $(seq 1 200); do alive "$L" || break; sleep 0.05; done
fi
# The launcher is `unshare --kill-child`: killing it takes the namespace's PID 1, and with it
# every process of the namespace, down.
if alive "$L"; then
  kill -KILL "$L"
  for _ in $(seq 1 100); do alive "$L" || break; sleep 0.05; done
fi
if [ -n "$CG" ] && [ -d "$CG" ]; then
  for _ in $(seq 1 100); do
    find "$CG" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$CG" ] || break; sleep 0.05
  done
  [ -d "$CG" ] && { echo "sd-down.sh: cannot remove $CG" >&2; exit 1; }
fi
exit 0
