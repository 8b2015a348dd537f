#!/bin/sh
# The one test command, for developers and CI alike: `sh scripts/test.sh [pytest args...]`.
#
# Works on a clean clone where nothing is installed:
#   1. installs Debian's mosquitto-clients and mosquitto (used by interoperability tests) when
#      mosquitto_sub, mosquitto_pub or mosquitto is missing, and makes sure the package did not
#      leave a mosquitto service running on port 1883;
#   1b. installs node/npm (Debian packages) and MicroPython's WebAssembly port (npm) when missing;
#   1c. installs rabbitmq-server (an upstream for the bridge tests) when missing, service stopped;
#   1d. installs shellcheck, systemd-analyze, debootstrap, qemu-user-static and binfmt-support for the
#      pi-image tests, and registers qemu's arm64 interpreter with binfmt_misc when run as root;
#   2. creates the virtualenv .venv (if missing) and installs edgebroker with its test extras;
#   3. checks that edgebroker/, firmware_bridge/ and bench/ still run on Python 3.9 (vermin);
#   4. runs pytest with the given arguments and exits with pytest's exit code.
set -eu

cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

say() { printf 'test.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

# Run as root directly, otherwise through sudo (non-interactive when there is no terminal,
# e.g. in CI, so a password prompt fails fast instead of hanging).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
    else
        die "need root (or sudo) to run: $*"
    fi
}

# The mosquitto broker binary lives in /usr/sbin, which is not on a normal user's PATH.
have_mosquitto_broker() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}

# Is any process named mosquitto running? Reads /proc so it needs no procps.
mosquitto_running() {
    for comm in /proc/[0-9]*/comm; do
        if [ "$(cat "$comm" 2>/dev/null)" = mosquitto ]; then
            return 0
        fi
    done
    return 1
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "missing $* and no apt-get here: install them with your package manager"
    say "installing $* with apt-get"
    # Wait for another apt/dpkg (a second test run, unattended upgrades) instead of failing at once.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}

# --- 1. mosquitto clients and broker --------------------------------------------------------
if ! command -v mosquitto_sub >/dev/null 2>&1 ||
   ! command -v mosquitto_pub >/dev/null 2>&1 ||
   ! have_mosquitto_broker; then
    running_before=no
    if mosquitto_running; then running_before=yes; fi
    apt_install mosquitto-clients mosquitto
    # The Debian package may start a system service listening on port 1883, which would take
    # the port users expect edgebroker on. Stop and disable it (there may be no systemd here).
    # A mosquitto that was already running before we installed is the user's own: leave it.
    if [ "$running_before" = no ]; then
        as_root service mosquitto stop >/dev/null 2>&1 || true
        if command -v systemctl >/dev/null 2>&1; then
            as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
        fi
        as_root update-rc.d mosquitto disable >/dev/null 2>&1 || true
        tries=0
        while mosquitto_running; do   # give a stopping daemon a few seconds to exit
            tries=$((tries + 1))
            [ "$tries" -le 5 ] ||
                die "the mosquitto package left a mosquitto service running (port 1883); stop it and rerun"
            sleep 1
        done
    fi
    if ! command -v mosquitto_sub >/dev/null 2>&1 || ! command -v mosquitto_pub >/dev/null 2>&1 ||
       ! have_mosquitto_broker; then
        die "mosquitto-clients/mosquitto installed but not found"
    fi
fi

# --- 1b. node and MicroPython ----------------------------------------------------------------
# The firmware tests run the board code under real MicroPython 1.27: its WebAssembly port, the npm
# package below, under Debian's node. Installed into a cache directory outside the repository.
MICROPYTHON_NPM=@micropython/micropython-webassembly-pyscript
MICROPYTHON_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/edgebroker-test/micropython
EDGEBROKER_MICROPYTHON=$MICROPYTHON_DIR/node_modules/$MICROPYTHON_NPM/micropython.mjs
export EDGEBROKER_MICROPYTHON
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if [ ! -f "$EDGEBROKER_MICROPYTHON" ]; then
    say "installing $MICROPYTHON_NPM@1.27.0 into $MICROPYTHON_DIR"
    mkdir -p "$MICROPYTHON_DIR"
    npm install --prefix "$MICROPYTHON_DIR" --no-audit --no-fund --silent "$MICROPYTHON_NPM@1.27.0" ||
        die "npm could not install $MICROPYTHON_NPM"
fi

# --- 1c. RabbitMQ (a second kind of upstream for the bridge tests) ----------------------------
# tests/test_bridge.py starts its own node (own epmd, ports, data, cookie) on loopback; the package's
# system service is not wanted: stop it, and its epmd, when installing started them.
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    apt_install rabbitmq-server
    as_root service rabbitmq-server stop >/dev/null 2>&1 || true
    if command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now rabbitmq-server epmd.socket epmd.service >/dev/null 2>&1 || true
    fi
    as_root update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
fi

# --- 1d. what the pi-image tests use ----------------------------------------------------------
# tests/test_pi_image.py lints every shell script with shellcheck, checks the unit with systemd-analyze,
# runs the pi-gen stage in a Debian root file system made by debootstrap, and its arm64 twin through
# qemu-user-static and binfmt-support.
pi_tools=""
command -v shellcheck >/dev/null 2>&1 || pi_tools="$pi_tools shellcheck"
command -v systemd-analyze >/dev/null 2>&1 || pi_tools="$pi_tools systemd"
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || pi_tools="$pi_tools debootstrap"
if [ "$(dpkg --print-architecture 2>/dev/null || echo unknown)" != arm64 ]; then
    command -v qemu-aarch64-static >/dev/null 2>&1 || pi_tools="$pi_tools qemu-user-static"
    command -v update-binfmts >/dev/null 2>&1 || [ -x /usr/sbin/update-binfmts ] ||
        pi_tools="$pi_tools binfmt-support"
fi
if [ -n "$pi_tools" ]; then
    # shellcheck disable=SC2086  # a list of package names
    apt_install $pi_tools
fi
# Register qemu's arm64 interpreter with binfmt_misc (mounting it first) where the kernel lets root do
# so; where it cannot, the arm64 chroot test is skipped and says why.
if [ "$(id -u)" -eq 0 ] && [ -x /usr/sbin/update-binfmts ] && [ -d /proc/sys/fs/binfmt_misc ]; then
    [ -e /proc/sys/fs/binfmt_misc/status ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
        /usr/sbin/update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi

# --- 2. virtualenv with the test extras -----------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian/Ubuntu ship venv's ensurepip separately.
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV" || die "cannot create a virtualenv with $PYTHON -m venv"
    fi
    # Old pips (Python 3.9's 20.x) cannot do editable installs of a pyproject-only project.
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check --upgrade pip
fi
"$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e '.[test]'

# --- 3. Python 3.9 compatibility ------------------------------------------------------------
# vermin flags (each proven on throwaway files: match, dataclass(slots=True), zip(strict=True) and
# `int | None` fail; Optional[int], dict | dict, str.removeprefix pass):
#   -t=3.9-                 exit 1 when any file needs a Python newer than 3.9
#   --feature union-types   detect `X | Y` types; without it vermin misses `def f(x: int | None)`,
#                           which raises TypeError at import on 3.9. It flags them in annotations
#                           even under `from __future__ import annotations`: write Optional[X] and
#                           Union[X, Y]. It is a heuristic: `NAME_A | NAME_B` of imported constants
#                           or attributes (Flag.A | Flag.B, self.a | self.b) looks like a type union
#                           too; end such a line with `# novm` (vermin honours it on assignments).
#   --eval-annotations      judge annotations as evaluated at run time (dataclasses, get_type_hints)
#   --violations --no-tips  print only the offending files and lines
# A directory without .py files makes vermin fail ("no files"), so only those with some are passed.
vermin_targets=""
for d in edgebroker firmware_bridge bench; do
    if [ -d "$d" ] && [ -n "$(find "$d" -name '*.py' | head -n 1)" ]; then
        vermin_targets="$vermin_targets $d"
    fi
done
if [ -n "$vermin_targets" ]; then
    # shellcheck disable=SC2086
    "$VENV/bin/vermin" -q -t=3.9- --feature union-types --eval-annotations --violations --no-tips \
        --no-make-paths-absolute $vermin_targets ||
        { say "vermin: the code above needs a Python newer than 3.9 (we support 3.9+)"; exit 1; }
fi

# --- 4. the tests ---------------------------------------------------------------------------
status=0
"$VENV/bin/python" -m pytest "$@" || status=$?
exit "$status"
