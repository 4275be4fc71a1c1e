#!/bin/bash
# Install (or uninstall) shmem-broker and shmem-bridge: binaries, systemd units, system users,
# example configs, docs.
#
#   systemd/install.sh [--prefix PREFIX] [--from DIR] [--uninstall]
#
#   --prefix PREFIX  where binaries, sysusers.d and docs go (default /usr/local)
#   --from DIR       the built binaries (default <repo>/target/release; built with
#                    `cargo build --release` if missing there and cargo is available)
#   --uninstall      remove what an install with the same PREFIX put there; a config that was
#                    edited after installation is kept
#   DESTDIR=...      stage everything below this folder (for packaging): nothing outside it is
#                    touched, and systemd-sysusers / systemctl are not run
#
# Layout (PREFIX=/usr/local):
#   PREFIX/bin/shmem-broker, PREFIX/bin/shmemctl, PREFIX/bin/shmem-bridge
#   /etc/systemd/system/shmem-broker.{socket,service}, shmem-bridge.service,
#                       shmem-broker-metrics.{service,timer}
#                                                       (PREFIX=/usr: /usr/lib/systemd/system)
#   PREFIX/lib/sysusers.d/shmem-broker.conf
#   /etc/shmem-broker/shmem-broker.toml, bridge.toml    (never overwritten: a changed example
#                                                        goes next to it as .toml.new)
#   PREFIX/share/doc/shmem-broker/{README.md,PROTOCOL.md,bridge.md}
#   PREFIX/lib/libshmem_broker.{so,a}, PREFIX/include/shmem_broker.h,
#   PREFIX/lib/pkgconfig/shmem-broker.pc                 (the C library, when --from has it)
# Afterwards (DESTDIR empty): systemd-sysusers creates the shmem-broker user and the shmem
# group, and systemd reloads its units if it is running. Start with:
#   systemctl enable --now shmem-broker.socket
# and, once /etc/shmem-broker/bridge.toml describes your exports and imports:
#   systemctl enable --now shmem-bridge.service
# and, to feed node_exporter's textfile collector (/run/shmem-broker-metrics) every 15 s:
#   systemctl enable --now shmem-broker-metrics.timer
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/usr/local
FROM=
UNINSTALL=no
DESTDIR=${DESTDIR:-}

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "$*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; PREFIX=$2; shift 2;;
    --prefix=*) PREFIX=${1#--prefix=}; shift;;
    --from) [ $# -ge 2 ] || die "--from needs a value"; FROM=$2; shift 2;;
    --from=*) FROM=${1#--from=}; shift;;
    --uninstall) UNINSTALL=yes; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0;;
    *) die "unknown argument: $1 (see --help)";;
  esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, not '$PREFIX'";; esac
PREFIX=${PREFIX%/}; [ -n "$PREFIX" ] || PREFIX=/
case "$DESTDIR" in ''|/*) ;; *) die "DESTDIR must be an absolute path, not '$DESTDIR'";; esac
DESTDIR=${DESTDIR%/}

BINDIR=${PREFIX%/}/bin
if [ "$PREFIX" = /usr ]; then UNITDIR=/usr/lib/systemd/system; else UNITDIR=/etc/systemd/system; fi
SYSUSERSDIR=${PREFIX%/}/lib/sysusers.d
DOCDIR=${PREFIX%/}/share/doc/shmem-broker
LIBDIR=${PREFIX%/}/lib
INCLUDEDIR=${PREFIX%/}/include
PKGCONFIGDIR=$LIBDIR/pkgconfig
CLIBS="libshmem_broker.so libshmem_broker.a"   # built by `cargo build` in bindings/c
CONFDIR=/etc/shmem-broker
CONFIGS="shmem-broker.toml bridge.toml"   # config/NAME -> $CONFDIR/NAME
UNITS="shmem-broker.socket shmem-broker.service shmem-bridge.service shmem-broker-metrics.service shmem-broker-metrics.timer"
BINARIES="shmem-broker shmemctl shmem-bridge"
DOCS="README.md PROTOCOL.md bridge/README.md:bridge.md"   # SOURCE[:INSTALLED NAME]
doc_src() { echo "${1%%:*}"; }
doc_dst() { case "$1" in *:*) echo "${1#*:}";; *) echo "$1";; esac; }

# Acting on the real system (not staging into DESTDIR) with systemd running?
live_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

remove() {  # remove FILE if it exists, saying so
  if [ -e "$DESTDIR$1" ] || [ -L "$DESTDIR$1" ]; then
    rm -f -- "$DESTDIR$1"; say "removed $DESTDIR$1"
  fi
}
remove_dir_if_empty() {
  if [ -d "$DESTDIR$1" ] && rmdir -- "$DESTDIR$1" 2>/dev/null; then say "removed $DESTDIR$1/"; fi
}

if [ "$UNINSTALL" = yes ]; then
  if live_systemd; then
    for unit in $UNITS; do
      if systemctl cat "$unit" >/dev/null 2>&1; then
        say "systemctl disable --now $unit"
        systemctl disable --now "$unit" || echo "install.sh: warning: could not stop/disable $unit" >&2
      fi
    done
  fi
  for bin in $BINARIES; do remove "$BINDIR/$bin"; done
  for unit in $UNITS; do remove "$UNITDIR/$unit"; done
  remove "$SYSUSERSDIR/shmem-broker.conf"
  for doc in $DOCS; do remove "$DOCDIR/$(doc_dst "$doc")"; done
  remove_dir_if_empty "$DOCDIR"
  for lib in $CLIBS; do remove "$LIBDIR/$lib"; done
  remove "$INCLUDEDIR/shmem_broker.h"
  remove "$PKGCONFIGDIR/shmem-broker.pc"
  remove_dir_if_empty "$PKGCONFIGDIR"
  # A config stays if anyone changed it; so does a .new that differs from this version's.
  for name in $CONFIGS; do
    for file in "$CONFDIR/$name" "$CONFDIR/$name.new"; do
      if [ -e "$DESTDIR$file" ]; then
        if cmp -s "$DESTDIR$file" "$REPO/config/$name"; then
          remove "$file"
        else
          say "kept $DESTDIR$file (edited; remove it yourself if it is no longer wanted)"
        fi
      fi
    done
  done
  remove_dir_if_empty "$CONFDIR"
  if live_systemd; then say "systemctl daemon-reload"; systemctl daemon-reload; fi
  say "uninstalled shmem-broker from $DESTDIR$PREFIX (the shmem-broker user and the shmem group are kept)"
  exit 0
fi

# --- install ---
if [ -z "$FROM" ]; then
  FROM=$REPO/target/release
  missing=no
  for bin in $BINARIES; do [ -x "$FROM/$bin" ] || missing=yes; done
  for lib in $CLIBS; do [ -f "$FROM/$lib" ] || missing=yes; done
  if [ "$missing" = yes ]; then
    command -v cargo >/dev/null ||
      die "no release build in $FROM and no cargo in PATH: run 'cargo build --release' in $REPO first"
    say "cargo build --release (in $REPO)"
    (cd "$REPO" && cargo build --release --bins && cargo build --release -p shmem-broker-c) ||
      die "cargo build --release failed"
  fi
fi
for bin in $BINARIES; do
  [ -x "$FROM/$bin" ] || die "$FROM/$bin not found: run 'cargo build --release' in $REPO first"
done
for file in $(for unit in $UNITS; do echo "$REPO/systemd/$unit"; done) \
            "$REPO/systemd/shmem-broker.sysusers" \
            $(for name in $CONFIGS; do echo "$REPO/config/$name"; done) \
            $(for doc in $DOCS; do echo "$REPO/$(doc_src "$doc")"; done); do
  [ -f "$file" ] || die "$file is missing from the source tree"
done
case "$PREFIX" in
  /home|/home/*|/root|/root/*|/tmp|/tmp/*|/var/tmp|/var/tmp/*|/run|/run/*)
    echo "install.sh: warning: the service's sandbox (ProtectHome=, PrivateTmp=) hides $PREFIX; the broker will not start from there" >&2;;
esac

install -d -m 0755 "$DESTDIR$BINDIR" "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR" "$DESTDIR$DOCDIR" "$DESTDIR$CONFDIR"

for bin in $BINARIES; do
  install -m 0755 "$FROM/$bin" "$DESTDIR$BINDIR/$bin"
  say "installed $DESTDIR$BINDIR/$bin"
done

# Units: ExecStart= runs the installed binary (arguments kept), docs point at the installed README.
tmp=$(mktemp -d); trap 'rm -rf -- "$tmp"' EXIT
for unit in $UNITS; do
  sed -e "s|^ExecStart=[^ ]*/shmem-broker\\b|ExecStart=$BINDIR/shmem-broker|" \
      -e "s|^ExecStart=[^ ]*/shmem-bridge\\b|ExecStart=$BINDIR/shmem-bridge|" \
      -e "s|^ExecStart=[^ ]*/shmemctl\\b|ExecStart=$BINDIR/shmemctl|" \
      -e "s|file:///[^ ]*/share/doc/shmem-broker/|file://$DOCDIR/|g" \
      "$REPO/systemd/$unit" > "$tmp/$unit"
done
grep -qx "ExecStart=$BINDIR/shmem-broker\( .*\)\{0,1\}" "$tmp/shmem-broker.service" ||
  die "could not point ExecStart= of shmem-broker.service at $BINDIR/shmem-broker"
grep -qx "ExecStart=$BINDIR/shmem-bridge\( .*\)\{0,1\}" "$tmp/shmem-bridge.service" ||
  die "could not point ExecStart= of shmem-bridge.service at $BINDIR/shmem-bridge"
grep -qx "ExecStart=$BINDIR/shmemctl\( .*\)\{0,1\}" "$tmp/shmem-broker-metrics.service" ||
  die "could not point ExecStart= of shmem-broker-metrics.service at $BINDIR/shmemctl"
for unit in $UNITS; do
  install -m 0644 "$tmp/$unit" "$DESTDIR$UNITDIR/$unit"
  say "installed $DESTDIR$UNITDIR/$unit ($(grep -m1 -E '^(ExecStart|ListenStream)=' "$tmp/$unit"))"
done

install -m 0644 "$REPO/systemd/shmem-broker.sysusers" "$DESTDIR$SYSUSERSDIR/shmem-broker.conf"
say "installed $DESTDIR$SYSUSERSDIR/shmem-broker.conf"

for doc in $DOCS; do
  install -m 0644 "$REPO/$(doc_src "$doc")" "$DESTDIR$DOCDIR/$(doc_dst "$doc")"
  say "installed $DESTDIR$DOCDIR/$(doc_dst "$doc")"
done

# The C library, header and pkg-config file, when the build has them (cargo build --release
# makes them with the binaries).
if [ -f "$FROM/libshmem_broker.so" ] && [ -f "$FROM/libshmem_broker.a" ]; then
  install -d -m 0755 "$DESTDIR$LIBDIR" "$DESTDIR$INCLUDEDIR" "$DESTDIR$PKGCONFIGDIR"
  for lib in $CLIBS; do
    install -m 0644 "$FROM/$lib" "$DESTDIR$LIBDIR/$lib"
    say "installed $DESTDIR$LIBDIR/$lib"
  done
  install -m 0644 "$REPO/bindings/c/include/shmem_broker.h" "$DESTDIR$INCLUDEDIR/shmem_broker.h"
  say "installed $DESTDIR$INCLUDEDIR/shmem_broker.h"
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -n1)
  sed -e "s|@PREFIX@|${PREFIX%/}|" -e "s|@VERSION@|$version|" "$REPO/bindings/c/shmem-broker.pc.in" \
    > "$tmp/shmem-broker.pc"
  install -m 0644 "$tmp/shmem-broker.pc" "$DESTDIR$PKGCONFIGDIR/shmem-broker.pc"
  say "installed $DESTDIR$PKGCONFIGDIR/shmem-broker.pc"
else
  say "no C library in $FROM (libshmem_broker.so/.a): the C header and pkg-config file are not installed"
fi

# Never overwrite the administrator's configs.
for name in $CONFIGS; do
  CONFIG=$CONFDIR/$name
  EXAMPLE_CONFIG=$REPO/config/$name
  if [ ! -e "$DESTDIR$CONFIG" ]; then
    install -m 0644 "$EXAMPLE_CONFIG" "$DESTDIR$CONFIG"
    say "installed $DESTDIR$CONFIG"
  elif cmp -s "$DESTDIR$CONFIG" "$EXAMPLE_CONFIG"; then
    say "kept $DESTDIR$CONFIG (already this version's example)"
    rm -f -- "$DESTDIR$CONFIG.new"
  else
    install -m 0644 "$EXAMPLE_CONFIG" "$DESTDIR$CONFIG.new"
    say "kept $DESTDIR$CONFIG (it differs from the example); this version's example is $DESTDIR$CONFIG.new"
  fi
done

if [ -z "$DESTDIR" ]; then
  if command -v systemd-sysusers >/dev/null; then
    say "systemd-sysusers $SYSUSERSDIR/shmem-broker.conf"
    systemd-sysusers "$SYSUSERSDIR/shmem-broker.conf"
  else
    echo "install.sh: warning: systemd-sysusers not found; create user shmem-broker and group shmem (member shmem-broker) yourself" >&2
  fi
  if live_systemd; then
    say "systemctl daemon-reload"
    systemctl daemon-reload
  fi
  say "done; start the broker with: systemctl enable --now shmem-broker.socket"
  say "and the bridge, once $CONFDIR/bridge.toml says what to carry: systemctl enable --now shmem-bridge.service"
  say "and metrics for node_exporter (/run/shmem-broker-metrics): systemctl enable --now shmem-broker-metrics.timer"
else
  say "staged in $DESTDIR (systemd-sysusers and systemctl daemon-reload not run)"
fi
