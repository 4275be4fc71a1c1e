#!/bin/bash
# Build the Debian package of shmem-broker (the broker and shmemctl) with cargo-deb:
#
#   packaging/build-deb.sh [CARGO-DEB ARGS]  -> target/debian/shmem-broker_<version>-1_<arch>.deb
#   PROFILE=dev BUILD=no packaging/build-deb.sh -o DIR
#                          the debug build, as already built (tests/deb.rs does this: it
#                          packages the binaries the other tests run, and a cargo build from a
#                          running `cargo test` would wait for its lock)
#
# Everything packaged is staged in target/release/deb-assets/ (the path cargo-deb resolves
# `target/release/` in daemon/Cargo.toml to), the binaries copied there from the profile's
# folder, so cargo-deb always runs with its default profile.
# 1. cargo build --release of both binaries;
# 2. the binaries and the generated assets, into target/release/deb-assets/: the man pages shmem-broker(8) and
#    shmemctl(1) (with shmemctl-SUBCOMMAND(1)) rendered by clap_mangen from the binaries' own
#    clap definitions (`shmem-broker --man`, `shmemctl man`, both hidden), the hand-written
#    shmem-broker.toml(5), completions for bash, zsh and fish (`shmemctl completions`), and the
#    units with their paths pointed at /usr;
# 3. cargo deb --no-build, with the file list in daemon/Cargo.toml ([package.metadata.deb]).
#
# The generators run the built binaries, so the pages and completions always describe exactly
# the command line that is packaged. Needs cargo-deb: cargo install cargo-deb --locked
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
command -v cargo-deb >/dev/null || { echo "build-deb.sh: cargo-deb missing (cargo install cargo-deb --locked)" >&2; exit 1; }

PROFILE=${PROFILE:-release}
case "$PROFILE" in dev) BIN=$REPO/target/debug;; *) BIN=$REPO/target/$PROFILE;; esac
if [ "${BUILD:-yes}" != no ]; then
    cargo build --profile "$PROFILE" -p shmem-broker-daemon -p shmemctl
fi
for bin in shmem-broker shmemctl; do
    [ -x "$BIN/$bin" ] || { echo "build-deb.sh: $BIN/$bin not built" >&2; exit 1; }
done
OUT=$REPO/target/release/deb-assets
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/man" "$OUT/completions" "$OUT/units"
cp "$BIN/shmem-broker" "$BIN/shmemctl" "$OUT/bin/"

"$BIN/shmem-broker" --man > "$OUT/man/shmem-broker.8"
"$BIN/shmemctl" man > "$OUT/man/shmemctl.1"
for sub in $("$BIN/shmemctl" man --list); do
    "$BIN/shmemctl" man "$sub" > "$OUT/man/shmemctl-$sub.1"
done
cp packaging/shmem-broker.toml.5 "$OUT/man/"
# Debian policy: man pages compressed, reproducibly (no name or time in the gzip header).
gzip -9n "$OUT"/man/*

"$BIN/shmemctl" completions bash > "$OUT/completions/shmemctl"
"$BIN/shmemctl" completions zsh > "$OUT/completions/_shmemctl"
"$BIN/shmemctl" completions fish > "$OUT/completions/shmemctl.fish"

# The units as shipped, run from /usr/bin, their docs in /usr/share/doc/shmem-broker.
for unit in shmem-broker.service shmem-broker.socket shmem-broker-metrics.service shmem-broker-metrics.timer; do
    sed -e 's|/usr/local/bin/|/usr/bin/|g' \
        -e 's|file:///usr/local/share/doc/shmem-broker/|file:///usr/share/doc/shmem-broker/|g' \
        "systemd/$unit" > "$OUT/units/$unit"
done
if grep -q /usr/local "$OUT"/units/*; then
    echo "build-deb.sh: a unit still points into /usr/local:" >&2
    grep -n /usr/local "$OUT"/units/* >&2
    exit 1
fi

# Stripped: the release profile keeps line tables (debug = 1) for backtraces and profiles.
cargo deb -p shmem-broker-daemon --no-build --strip "$@"
