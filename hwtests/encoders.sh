#!/usr/bin/env bash
# Hardware test of the NVENC and QSV encoding sessions on a real GPU,
# against the portable OpenH264 path on the same frames (one run, two
# renditions of the same size): the same segment list, frame count and
# packet timestamps, an IDR at every segment start, clean decodes and
# matching pictures (PSNR > 30 dB). See appliance/tests/hardware_encoders.rs.
#
#   hwtests/encoders.sh [nvenc|qsv|all]     (default: all)
#
# `all` tests every backend `lockstep devices` reports as able to open a
# session and fails when there is none. A backend named on the command
# line fails, with the driver's reason, when it cannot encode here.
set -euo pipefail
cd "$(dirname "$0")/.."

want=${1:-all}
case "$want" in nvenc|qsv|all) ;; *) echo "usage: hwtests/encoders.sh [nvenc|qsv|all]" >&2; exit 2 ;; esac

cargo build --release --locked -p lockstep >&2
report=$(target/release/lockstep devices --json)
ready() {
    python3 -c 'import json,sys; e=[e for e in json.load(sys.stdin)["encoders"] if e["name"]==sys.argv[1]][0]
print("yes" if e.get("session") else e.get("detail","") + " " + e.get("note",""))' "$1" <<<"$report"
}

backends=()
for b in nvenc qsv; do
    [ "$want" = all ] || [ "$want" = "$b" ] || continue
    state=$(ready "$b")
    if [ "$state" = yes ]; then
        backends+=("$b")
    elif [ "$want" = "$b" ]; then
        echo "hwtests/encoders.sh: FAIL: $b cannot encode on this machine: $state" >&2
        exit 1
    else
        echo "hwtests/encoders.sh: $b not tested here: $state" >&2
    fi
done
if [ ${#backends[@]} -eq 0 ]; then
    echo "hwtests/encoders.sh: FAIL: no hardware encoder opens a session on this machine (see above)." >&2
    echo "  Run it on an appliance with an NVIDIA GPU (driver 470 or newer) or an Intel GPU (oneVPL GPU runtime)." >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for b in "${backends[@]}"; do
    echo "hwtests/encoders.sh: testing $b against the software path" >&2
    nice cargo test --release --locked -p lockstep --test hardware_encoders -- --ignored --nocapture --exact \
        "${b}_output_matches_the_portable_path" 2>&1 | tee "$log"
    # A filter that matches nothing passes with zero tests: a failure here.
    if ! grep -Eq '^test result: ok\. 1 passed' "$log"; then
        echo "hwtests/encoders.sh: FAIL: the $b test did not run and pass." >&2
        exit 1
    fi
done
echo "hwtests/encoders.sh: passed: ${backends[*]}" >&2
