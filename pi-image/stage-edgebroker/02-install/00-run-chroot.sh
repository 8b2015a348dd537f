#!/bin/bash -e
# Runs inside the image (pi-gen's on_chroot feeds it to bash on stdin): the same installer a user runs on
# a Pi. It creates the user, the venv, /etc/edgebroker and the unit, and enables the service for first
# boot (systemd does not run here, so nothing starts). Then the copied sources go.
SRC=/tmp/edgebroker-install
set -- --source "${SRC}/src" --no-start
for wheel in "${SRC}"/dist/*.whl; do
	if [ -f "${wheel}" ]; then
		set -- "$@" --wheel "${wheel}"
	fi
done
if [ -d "${SRC}/wheels" ]; then
	set -- "$@" --find-links "${SRC}/wheels"
fi
# </dev/null: this script itself arrives on stdin, which nothing it runs may read.
sh "${SRC}/src/pi-image/install.sh" "$@" </dev/null
rm -rf "${SRC}"
