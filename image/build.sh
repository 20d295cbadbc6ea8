#!/usr/bin/env bash
# Builds the Lockstep appliance image (docs/image.md):
#
#   image/build.sh [--out DIR] [--binary PATH]
#
# DIR (default image/out) receives:
#   disk.img       GPT disk to flash: ESP (systemd-boot), read-only root,
#                  writable state (/var: config, keys, segments, journal)
#   vmlinuz, initrd.img, cmdline   the same kernel for direct boot (VMs)
#   image-version, packages.txt, SHA256SUMS
#
# Needs root (debootstrap, chroot) but no loop devices or mounts: the file
# systems are made from directories with `mkfs.ext4 -d` and mtools. The
# binary is target/release/lockstep unless --binary names one (built
# first when missing). Settings: image/image.conf.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$here/out
binary=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$(realpath -m "$2"); shift 2 ;;
        --binary) binary=$(realpath "$2"); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "image/build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
# shellcheck source=image.conf
. "$here/image.conf"

started=$(date +%s)
step=0
progress() {
    step=$((step + 1))
    printf '[%s] image %d/9: %s (%ds)\n' "$(date +%T)" "$step" "$*" "$(( $(date +%s) - started ))" >&2
}
fail() { echo "image/build.sh: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and chroot need it)"

progress "build tools"
need=()
for tool in debootstrap:debootstrap mkfs.ext4:e2fsprogs mkfs.fat:dosfstools mcopy:mtools sfdisk:fdisk; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -z "$binary" ]; then
    binary=$repo/target/release/lockstep
    if [ ! -x "$binary" ]; then
        (cd "$repo" && cargo build --release --locked -p lockstep)
    fi
fi
[ -x "$binary" ] || fail "no daemon binary at $binary"
lockstep_version=$("$binary" --version | awk '{print $2}')
commit=$(git -C "$repo" rev-parse --short=10 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$repo" status --porcelain 2>/dev/null)" ]; then commit=$commit-dirty; fi
# Time stamps inside the image: the commit's time (reproducible builds).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
version="$lockstep_version+$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).$commit"

work=$out/work
# debootstrap mounts /proc and /sys in the target; none may stay mounted
# (mkfs would copy them, rm would descend into them).
unmount_all() {
    local m
    for m in $(findmnt -rno TARGET 2>/dev/null | grep "^$work/" | sort -r || true); do
        umount -l "$m" || true
    done
}
unmount_all
trap unmount_all EXIT
rm -rf "$work"
mkdir -p "$work" "$out"
root=$work/rootfs
state=$work/state

progress "debootstrap $SUITE ($PACKAGES)"
cache=${LOCKSTEP_IMAGE_CACHE:-/var/cache/lockstep-image}
mkdir -p "$cache"
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$cache" "$SUITE" "$root" "$MIRROR" \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap failed (log: $work/debootstrap.log)"; }

unmount_all
for d in proc sys dev/pts; do
    [ -z "$(ls -A "$root/$d" 2>/dev/null)" ] || fail "$root/$d is not empty after debootstrap (still mounted?)"
done

progress "daemon, units and layout"
install -m 0755 "$binary" "$root/usr/bin/lockstep"
strip --strip-debug "$root/usr/bin/lockstep" 2>/dev/null || true
install -d "$root/usr/lib/lockstep" "$root/usr/share/doc/lockstep"
install -m 0755 "$repo/systemd/provision-from-drive" "$repo/systemd/tune" "$root/usr/lib/lockstep/"
for unit in "$repo"/systemd/*.service; do
    install -m 0644 "$unit" "$root/usr/lib/systemd/system/"
done
install -m 0644 "$repo"/docs/*.md "$root/usr/share/doc/lockstep/"
echo "$version" > "$root/usr/lib/lockstep/image-version"
printf 'IMAGE_ID=lockstep\nIMAGE_VERSION=%s\n' "$version" >> "$root/usr/lib/os-release"

missing=$(chroot "$root" ldd /usr/bin/lockstep | grep "not found" || true)
[ -z "$missing" ] || fail "the daemon needs libraries the image lacks: $missing (build it without optional features, or add the packages to PACKAGES)"

chroot "$root" /bin/sh -e <<'CHROOT'
useradd --system --home-dir /var/lib/lockstep --no-create-home --shell /usr/sbin/nologin --groups video lockstep
systemctl enable lockstep.service lockstep-provision.service lockstep-tune.service \
    lockstep-ptp4l.service lockstep-phc2sys.service systemd-networkd.service >/dev/null 2>&1
systemctl mask systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
CHROOT

# Read-only root: what must change lives on the state partition (/var).
ln -sfn /var/lib/lockstep/config/hostname "$root/etc/hostname"
ln -sfn /var/lib/lockstep/config "$root/etc/lockstep"
: > "$root/etc/machine-id"
cat > "$root/etc/fstab" <<EOF
# Lockstep appliance: read-only root, writable state on /var.
PARTUUID=$ROOT_PARTUUID  /          ext4   ro,noatime                 0 1
PARTUUID=$STATE_PARTUUID /var       ext4   rw,noatime,x-systemd.growfs 0 2
PARTUUID=$ESP_PARTUUID   /boot/efi  vfat   ro,noauto,umask=0077       0 0
tmpfs                    /tmp       tmpfs  mode=1777,nosuid,nodev     0 0
EOF
mkdir -p "$root/boot/efi"
mkdir -p "$root/etc/systemd/network" "$root/etc/systemd/journald.conf.d" \
    "$root/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat > "$root/etc/systemd/network/80-lockstep-dhcp.network" <<'EOF'
# Every wired interface by DHCP until provisioning says otherwise.
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
cat > "$root/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF
cat > "$root/etc/systemd/journald.conf.d/lockstep.conf" <<'EOF'
# Persistent journal on the state partition; warnings also on the console.
[Journal]
Storage=persistent
SystemMaxUse=256M
ForwardToConsole=yes
MaxLevelConsole=warning
EOF

# Smaller: no docs, locales, package caches or drivers an encoder never
# loads (sound, wireless, GPUs' DRM stays for NVIDIA/Intel KMS).
rm -rf "$root"/usr/share/doc/[!l]* "$root"/usr/share/man "$root"/usr/share/locale/[!C]* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
kver=$(basename "$(ls -d "$root"/usr/lib/modules/*)")
for dir in sound net/wireless drivers/net/wireless drivers/bluetooth net/bluetooth drivers/isdn \
    drivers/infiniband drivers/staging drivers/iio drivers/input/joystick drivers/input/touchscreen; do
    rm -rf "$root/usr/lib/modules/$kver/kernel/$dir"
done
chroot "$root" depmod "$kver"

progress "kernel command line"
cmdline="root=PARTUUID=$ROOT_PARTUUID ro rootwait console=tty0 console=ttyS0,115200 $KERNEL_TUNING"
if [ -n "$ISOLATE_CPUS" ]; then
    cmdline="$cmdline isolcpus=managed_irq,domain,$ISOLATE_CPUS nohz_full=$ISOLATE_CPUS rcu_nocbs=$ISOLATE_CPUS"
fi
echo "$cmdline" > "$out/cmdline"
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"

progress "state partition (/var) with the factory configuration"
mkdir -p "$state"
cp -a "$root/var/." "$state/"
find "$root/var" -mindepth 1 -delete
factory=$state/lib/lockstep/config.d/factory
mkdir -p "$factory" "$state/lib/lockstep/out" "$state/log/journal"
"$binary" default-config | sed -e 's/^listen = "127.0.0.1:8080"/listen = "0.0.0.0:8080"/' > "$factory/lockstep.toml"
echo lockstep > "$factory/hostname"
ln -sfn config.d/factory "$state/lib/lockstep/config"
"$binary" check-config "$factory/lockstep.toml" >/dev/null
uid=$(chroot "$root" id -u lockstep)
gid=$(chroot "$root" id -g lockstep)
chown -R "$uid:$gid" "$state/lib/lockstep"
chmod 0750 "$state/lib/lockstep"

progress "pinning time stamps to $SOURCE_DATE_EPOCH"
for tree in "$root" "$state"; do
    find "$tree" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
done
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' > "$out/packages.txt"

progress "file systems"
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
root_mb=$ROOT_MB
if [ "$root_mb" = 0 ]; then
    used=$(du -sm --apparent-size "$root" | cut -f1)
    root_mb=$(( used + used / 5 + 64 ))
fi
rm -f "$work/root.ext4" "$work/state.ext4" "$work/esp.fat"
mkfs.ext4 -q -F -L lockstep-root -U "$ROOT_FSUUID" -E "hash_seed=$ROOT_FSUUID,root_owner=0:0" \
    -O ^has_journal -m 0 -d "$root" "$work/root.ext4" "${root_mb}M"
mkfs.ext4 -q -F -L lockstep-state -U "$STATE_FSUUID" -E "hash_seed=$STATE_FSUUID,root_owner=0:0" \
    -m 1 -d "$state" "$work/state.ext4" "${STATE_MB}M"
mkfs.fat -C -n ESP -i 4c4b5354 "$work/esp.fat" $(( ESP_MB * 1024 )) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.fat" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/lockstep
mcopy -i "$work/esp.fat" "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.fat" "$out/vmlinuz" "$out/initrd.img" ::/lockstep/
printf 'default lockstep.conf\ntimeout 0\n' > "$work/loader.conf"
printf 'title Lockstep %s\nlinux /lockstep/vmlinuz\ninitrd /lockstep/initrd.img\noptions %s\n' "$version" "$cmdline" \
    > "$work/lockstep.conf"
mcopy -i "$work/esp.fat" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$work/esp.fat" "$work/lockstep.conf" ::/loader/entries/lockstep.conf

progress "disk image"
sectors() { echo $(( $(stat -c %s "$1") / 512 )); }
esp_start=2048
esp_size=$(sectors "$work/esp.fat")
root_start=$(( esp_start + esp_size ))
root_size=$(sectors "$work/root.ext4")
state_start=$(( root_start + root_size ))
state_size=$(sectors "$work/state.ext4")
total=$(( state_start + state_size + 2048 ))
rm -f "$out/disk.img"
truncate -s $(( total * 512 )) "$out/disk.img"
sfdisk --quiet "$out/disk.img" <<EOF
label: gpt
label-id: $DISK_GUID
unit: sectors
start=$esp_start, size=$esp_size, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_PARTUUID, name="ESP"
start=$root_start, size=$root_size, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name="lockstep-root"
start=$state_start, size=$state_size, type=4D21B016-B534-45C2-A9FB-5C16E091FD2D, uuid=$STATE_PARTUUID, name="lockstep-state"
EOF
dd if="$work/esp.fat" of="$out/disk.img" bs=512 seek=$esp_start conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$out/disk.img" bs=512 seek=$root_start conv=notrunc,sparse status=none
dd if="$work/state.ext4" of="$out/disk.img" bs=512 seek=$state_start conv=notrunc,sparse status=none

progress "checksums"
echo "$version" > "$out/image-version"
rm -rf "$work"
(cd "$out" && sha256sum disk.img vmlinuz initrd.img cmdline image-version packages.txt > SHA256SUMS)
size_mb=$(( $(stat -c %s "$out/disk.img") / 1048576 ))
used_mb=$(( $(du -k "$out/disk.img" | cut -f1) / 1024 ))
echo "image $version: $out/disk.img ${size_mb} MiB (${used_mb} MiB allocated), root ${root_mb} MiB, state ${STATE_MB} MiB, built in $(( $(date +%s) - started )) s" >&2
