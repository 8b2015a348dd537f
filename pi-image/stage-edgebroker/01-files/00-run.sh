#!/bin/bash -e
# Runs on the build machine: copy edgebroker into the image for 02-install, under /tmp/edgebroker-install/:
#   src/     the edgebroker checkout this stage belongs to (pi-image/stage-edgebroker/ in it), or
#            $EDGEBROKER_SOURCE; its pi-image/install.sh is the installer that runs
#   dist/    $EDGEBROKER_WHEEL when set: install that wheel instead of building the checkout
#   wheels/  the wheels in $EDGEBROKER_FIND_LINKS when set: install from them only (no package index)
# Set those variables with `export` in pi-gen's config (pi-gen runs this script as a child process).
SOURCE="${EDGEBROKER_SOURCE:-$(cd "${STAGE_DIR}/../.." && pwd)}"
DEST="${ROOTFS_DIR}/tmp/edgebroker-install"

if [ ! -f "${SOURCE}/pi-image/install.sh" ]; then
	echo "edgebroker stage: ${SOURCE} is not an edgebroker checkout; set EDGEBROKER_SOURCE" >&2
	exit 1
fi
rm -rf "${DEST}"
install -d "${DEST}/src"
tar -C "${SOURCE}" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
	--exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis \
	-cf - . | tar -C "${DEST}/src" -xf -
if [ -n "${EDGEBROKER_WHEEL:-}" ]; then
	install -d "${DEST}/dist"
	install -m 644 "${EDGEBROKER_WHEEL}" "${DEST}/dist/"
fi
if [ -n "${EDGEBROKER_FIND_LINKS:-}" ]; then
	install -d "${DEST}/wheels"
	cp -r "${EDGEBROKER_FIND_LINKS}/." "${DEST}/wheels/"
fi
