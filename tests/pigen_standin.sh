#!/bin/bash
# shellcheck disable=SC2119,SC2120  # on_chroot takes its script on stdin, as in pi-gen
# A stand-in for pi-gen's build.sh running ONE stage, so CI exercises the very files a pi-gen build uses
# (pi-gen itself needs the Raspberry Pi archive, which CI cannot reach).
#
#   bash tests/pigen_standin.sh STAGE_DIR PREVIOUS_ROOTFS.tar WORK_DIR
#
# As pi-gen does: exports STAGE_DIR, STAGE_WORK_DIR (WORK_DIR/<stage name>), ROOTFS_DIR (its rootfs/) and
# the functions log, copy_previous and on_chroot; runs prerun.sh, then each sub-stage directory in order,
# and in it, for i in 00..99: i-debconf, i-packages-nr, i-packages (apt-get install in the chroot),
# i-run.sh (executed on the host, in the sub-stage directory) and i-run-chroot.sh (fed to bash -e in the
# chroot); finally reads EXPORT_IMAGE for IMG_SUFFIX. Differences: the previous stage is a tar of a
# debootstrap root file system (copy_previous unpacks it), on_chroot uses chroot(8) instead of capsh,
# quilt patches are refused, and everything runs in a private mount namespace (unshare), so the
# proc/dev/sys mounts on_chroot makes vanish with this script however it ends.
set -eu

if [ "${EDGEBROKER_STANDIN_NS:-}" != 1 ]; then
    exec env EDGEBROKER_STANDIN_NS=1 unshare --mount --propagation private bash "$0" "$@"
fi
[ "$#" -eq 3 ] || { echo "usage: $0 STAGE_DIR PREVIOUS_ROOTFS.tar WORK_DIR" >&2; exit 2; }

STAGE_DIR=$(realpath "$1")
PREV_ROOTFS_TAR=$(realpath "$2")
WORK_DIR=$(realpath "$3")
STAGE=$(basename "$STAGE_DIR")
STAGE_WORK_DIR=$WORK_DIR/$STAGE
ROOTFS_DIR=$STAGE_WORK_DIR/rootfs
USE_QEMU=${USE_QEMU:-0}
export STAGE_DIR PREV_ROOTFS_TAR WORK_DIR STAGE STAGE_WORK_DIR ROOTFS_DIR USE_QEMU

log() { date +"[%T] $*"; }

copy_previous() {
    mkdir -p "$ROOTFS_DIR"
    tar -C "$ROOTFS_DIR" -xf "$PREV_ROOTFS_TAR"
}

mounted() { mountpoint -q "$1"; }

on_chroot() {
    mounted "$ROOTFS_DIR/proc" || mount -t proc proc "$ROOTFS_DIR/proc"
    mounted "$ROOTFS_DIR/dev" || mount --bind /dev "$ROOTFS_DIR/dev"
    mounted "$ROOTFS_DIR/dev/pts" || mount --bind /dev/pts "$ROOTFS_DIR/dev/pts"
    mounted "$ROOTFS_DIR/sys" || mount --bind /sys "$ROOTFS_DIR/sys"
    chroot "$ROOTFS_DIR" /bin/bash -e "$@"
}
export -f log copy_previous mounted on_chroot

packages() { sed -e 's/#.*//' "$1" | tr -s ' \n' '  '; }

run_sub_stage() {
    log "Begin $SUB_STAGE_DIR"
    cd "$SUB_STAGE_DIR"
    for i in $(seq -w 0 99); do
        if [ -f "$i-debconf" ]; then
            log "Begin $SUB_STAGE_DIR/$i-debconf"
            on_chroot <<EOF
debconf-set-selections <<SELEOF
$(cat "$i-debconf")
SELEOF
EOF
        fi
        if [ -f "$i-packages-nr" ]; then
            log "Begin $SUB_STAGE_DIR/$i-packages-nr"
            on_chroot <<EOF
apt-get install --no-install-recommends -y $(packages "$i-packages-nr")
EOF
        fi
        if [ -f "$i-packages" ]; then
            log "Begin $SUB_STAGE_DIR/$i-packages"
            on_chroot <<EOF
apt-get install -y $(packages "$i-packages")
EOF
        fi
        if [ -d "$i-patches" ]; then
            echo "pigen_standin: $SUB_STAGE_DIR/$i-patches: quilt patches are not supported here" >&2
            exit 1
        fi
        if [ -x "$i-run.sh" ]; then
            log "Begin $SUB_STAGE_DIR/$i-run.sh"
            "./$i-run.sh"
        fi
        if [ -f "$i-run-chroot.sh" ]; then
            log "Begin $SUB_STAGE_DIR/$i-run-chroot.sh"
            on_chroot < "$i-run-chroot.sh"
        fi
    done
    log "End $SUB_STAGE_DIR"
}

log "Begin $STAGE_DIR"
cd "$STAGE_DIR"
if [ -x prerun.sh ]; then
    log "Begin $STAGE_DIR/prerun.sh"
    ./prerun.sh
fi
[ -d "$ROOTFS_DIR" ] || { echo "pigen_standin: prerun.sh made no $ROOTFS_DIR" >&2; exit 1; }
for SUB_STAGE_DIR in "$STAGE_DIR"/*; do
    if [ -d "$SUB_STAGE_DIR" ] && [ ! -f "$SUB_STAGE_DIR/SKIP" ]; then
        run_sub_stage
    fi
done
if [ -f "$STAGE_DIR/EXPORT_IMAGE" ]; then
    IMG_SUFFIX=""
    # shellcheck source=/dev/null
    . "$STAGE_DIR/EXPORT_IMAGE"
    [ -n "$IMG_SUFFIX" ] || { echo "pigen_standin: EXPORT_IMAGE sets no IMG_SUFFIX" >&2; exit 1; }
    log "EXPORT_IMAGE: IMG_SUFFIX=$IMG_SUFFIX"
fi
log "End $STAGE_DIR"
