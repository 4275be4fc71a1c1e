#!/bin/bash
# PID 1 of the lab's new pid namespace (started by sd-up.sh through unshare): private mounts,
# then exec a real systemd. Usage: sd-init.sh WORKDIR
set -euo pipefail
W=$1
UNIT_PATH="/etc/systemd/system:$W/units"
# SystemdLab::boot_overlaid: /etc, /usr and /var as overlays with a tmpfs on top, so a package
# can be installed and purged here without touching the host (first, before the mounts below
# land on top of /etc). The lab also loads the units packages put in /usr/lib/systemd/system,
# which starts EMPTY (a tmpfs): the host's units there must never be loaded here, since their
# sysinit.target.wants/ links would start e.g. systemd-tmpfiles-setup.service, whose
# `--remove --boot` empties the host's /tmp. /tmp is private too, for the same reason.
if [ -e "$W/overlay-root" ]; then
    mkdir -p "$W/overlay"
    mount -n -t tmpfs -o mode=755 tmpfs "$W/overlay"
    for d in etc usr var; do
        mkdir "$W/overlay/$d-upper" "$W/overlay/$d-work"
        mount -n -t overlay overlay \
            -o "lowerdir=/$d,upperdir=$W/overlay/$d-upper,workdir=$W/overlay/$d-work" "/$d"
    done
    mount -n -t tmpfs -o mode=755 tmpfs /usr/lib/systemd/system
    mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
    UNIT_PATH="$UNIT_PATH:/usr/lib/systemd/system"
fi
mount -n -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToWall=no\nForwardToConsole=no\nForwardToSyslog=no\n' \
    > /run/systemd/journald.conf.d/shmem-broker-lab.conf
# No sysctl writes reach the host.
mount -n --bind /proc/sys /proc/sys
mount -n -o remount,bind,ro /proc/sys
# A read-only /sys with a cgroup2 rooted at the lab's cgroup (the cgroup namespace).
umount -n -R /sys/fs/cgroup
mount -n -o remount,bind,ro /sys
mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
# Never write the host's machine-id; `systemctl enable` lands in a tmpfs, not in host /etc.
mount -n --bind "$W/machine-id" /etc/machine-id
mount -n -t tmpfs -o mode=755 tmpfs /etc/systemd/system
# Keep PID 1 off the machine's real console.
mount -n --bind /dev/null /dev/console
# container= makes systemd behave as in a container (its shutdown leaves host mounts alone).
exec env -i container=shmem-broker-lab SYSTEMD_UNIT_PATH="$UNIT_PATH" \
    SYSTEMD_GENERATOR_PATH="$W/empty" SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$W/empty" \
    /lib/systemd/systemd --system --unit=lab.target --show-status=no
