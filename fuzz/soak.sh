#!/usr/bin/env bash
# Soak test (not in CI): the real broker, one channel, N checked messages while producers and
# consumers attach, detach and get SIGKILLed at random. See fuzz/SOAK.md.
#
#   fuzz/soak.sh [MESSAGES] [MAX_SECONDS] [extra options for shmem-broker-soak run...]
#   fuzz/soak.sh                        # one-to-one: 100 million messages, at most 900 s
#   fuzz/soak.sh 1000000 60 --seed 7 --event-ms 5 --capacity 64KiB
#   fuzz/soak.sh 30000000 900 --fanout  # fan-out: 3 producers, 2 durable + 2 anonymous consumers
#   fuzz/soak.sh 3000000 120 --fanout --producers 4 --durable 3 --anonymous 3 --capacity 256KiB
#
# Builds target/release/shmem-broker and soak/ (its own workspace), then runs the driver.
# Exits 0 only if every message arrived in order with lost=0 and corrupted=0 (fan-out: and
# repeated=0 beyond what a kill allows, every ring in layout 2).
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-100000000}
seconds=${2:-900}
shift $(( $# > 2 ? 2 : $# ))
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release --quiet -p shmem-broker-daemon --bin shmem-broker
cargo build --release --quiet --manifest-path soak/Cargo.toml
exec soak/target/release/shmem-broker-soak run --broker target/release/shmem-broker \
    --messages "$messages" --max-seconds "$seconds" "$@"
