#!/usr/bin/env bash
# Boots the appliance image in QEMU and checks it: installs what the
# harness needs, then runs hwtests/vm.py (see its docstring and
# docs/image.md). Build the image first: image/build.sh.
#
#   hwtests/vm.sh [--image DIR] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mkfs.fat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v ffprobe >/dev/null || need+=(ffmpeg)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v qemu-system-x86_64 >/dev/null; then
    # qemu-utils on build machines comes from bookworm-backports; QEMU's
    # system emulator must match it.
    if dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
        if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/lockstep-backports.list
            apt-get update -qq
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
    else
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 qemu-utils >/dev/null
    fi
fi
exec python3 hwtests/vm.py "$@"
