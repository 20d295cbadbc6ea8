#!/usr/bin/env bash
# Hardware test of lockstep-ptp's PTP hardware clock access
# (drivers/ptp/src/phc.rs) on a real clock: a NIC's PHC, or ptp_kvm's in a
# VM (`modprobe ptp_kvm`; it has no interface).
#
#   hwtests/phc.sh [/dev/ptpN [INTERFACE]]
#
# The clock defaults to $LOCKSTEP_PHC, else the first /dev/ptp*; the
# interface to $LOCKSTEP_PHC_IFACE (then its PHC index and hardware
# timestamping are checked too). Runs the ignored tests in hwtests/phc.rs:
# open, capabilities, the offset method, and every ioctl measurement
# against a clock_gettime reading of the same clock. Nothing may step the
# PHC or the system clock meanwhile (ptp4l and phc2sys settled or stopped).
# Fails, never skips, when there is no clock.
set -euo pipefail

phc=${1:-${LOCKSTEP_PHC:-}}
iface=${2:-${LOCKSTEP_PHC_IFACE:-}}

if [ -z "$phc" ]; then
    shopt -s nullglob
    clocks=(/dev/ptp[0-9]*)
    if [ ${#clocks[@]} -eq 0 ]; then
        echo "hwtests/phc.sh: FAIL: no PTP hardware clock on this machine (no /dev/ptp*)." >&2
        echo "  Run it on an appliance with a PTP-capable NIC, or in a VM after 'modprobe ptp_kvm'." >&2
        exit 1
    fi
    phc=${clocks[0]}
fi
if [ ! -c "$phc" ]; then
    echo "hwtests/phc.sh: FAIL: $phc is not a character device (want a /dev/ptpN clock)." >&2
    exit 1
fi
if [ -z "$iface" ]; then
    echo "hwtests/phc.sh: no interface given: checking $phc alone (the PHC index check needs one)." >&2
fi

cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "hwtests/phc.sh: testing $phc${iface:+ (interface $iface)}" >&2
LOCKSTEP_PHC=$phc LOCKSTEP_PHC_IFACE=$iface \
    nice cargo test --release -p lockstep-ptp --lib -- --ignored --nocapture phc::hwtests:: 2>&1 | tee "$log"
# A filter that matches nothing passes with zero tests: that is a failure here.
if ! grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$log"; then
    echo "hwtests/phc.sh: FAIL: no PHC hardware test ran (were hwtests/phc.rs's tests renamed?)." >&2
    exit 1
fi
