#!/bin/sh
# pi-image/install.sh: make a Raspberry Pi OS (bookworm, bullseye) or Debian install an edgebroker gateway.
#
#   sudo sh pi-image/install.sh                      install or upgrade from this checkout, start the service
#   sudo sh pi-image/install.sh --wheel FILE.whl     install or upgrade from a built wheel
#   sudo sh pi-image/install.sh --uninstall          remove the program and the service, keep config and data
#   sudo sh pi-image/install.sh --uninstall --purge  remove config, data, logs and the user too
#
# Options: --source DIR (a checkout; default: the one holding this script), --wheel FILE,
# --find-links DIR (install from the wheels in DIR only, no package index: pip --no-index),
# --python PYTHON (default python3, 3.9 or newer), --no-start (enable, do not start now).
#
# What it does, every run (re-running it is an upgrade; it changes nothing you edited):
#   - a system user `edgebroker` in the groups dialout (serial ports) and gpio (created when missing);
#   - a virtualenv at /opt/edgebroker holding edgebroker and its dependencies (PEP 668: no pip into the
#     system Python), recreated when the system's Python version changed; links in /usr/local/bin;
#   - /etc/edgebroker/edgebroker.toml and an empty /etc/edgebroker/passwd when absent (never overwritten),
#     /var/lib/edgebroker, /var/log/edgebroker;
#   - /etc/systemd/system/edgebroker.service, /etc/modules-load.d/edgebroker.conf, and an example udev
#     rule /etc/udev/rules.d/99-edgebroker-sensors.rules when absent;
#   - checks the configuration with the installed broker, enables the service and (re)starts it when
#     systemd runs (in a chroot or an image build it is only enabled: it starts at first boot).
# The network is used only for the package index (pip, and apt-get for python3-venv when it is missing).
set -eu

PREFIX=/opt/edgebroker
SHARE=$PREFIX/share/edgebroker
CONF_DIR=/etc/edgebroker
CONF=$CONF_DIR/edgebroker.toml
STATE_DIR=/var/lib/edgebroker
LOG_DIR=/var/log/edgebroker
UNIT=/etc/systemd/system/edgebroker.service
UDEV_RULE=/etc/udev/rules.d/99-edgebroker-sensors.rules
MODULES=/etc/modules-load.d/edgebroker.conf
SERVICE_USER=edgebroker
COMMANDS="edgebroker edgebroker-pub edgebroker-sub edgebroker-passwd"

HERE=$(cd "$(dirname "$0")" && pwd)
SOURCE=$(dirname "$HERE")
WHEEL=""
FIND_LINKS=""
PYTHON=python3
START=yes
ACTION=install
PURGE=no

say() { printf 'edgebroker-install: %s\n' "$*"; }
die() { printf 'edgebroker-install: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; exit "$1"; }

need_value() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --source) need_value "$@"; SOURCE=$2; shift 2 ;;
        --wheel) need_value "$@"; WHEEL=$2; shift 2 ;;
        --find-links) need_value "$@"; FIND_LINKS=$2; shift 2 ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        --no-start) START=no; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=yes; shift ;;
        -h|--help) usage 0 ;;
        *) printf 'edgebroker-install: unknown option %s\n' "$1" >&2; usage 2 ;;
    esac
done
[ "$PURGE" = no ] || [ "$ACTION" = uninstall ] || die "--purge goes with --uninstall"
[ "$(id -u)" -eq 0 ] || die "run as root (sudo sh $0 ...)"

# systemd manages this system now (not a chroot, not an image being built, not a container without it).
systemd_running() {
    [ -d /run/systemd/system ] || return 1
    if command -v systemd-detect-virt >/dev/null 2>&1 && systemd-detect-virt --quiet --chroot; then
        return 1
    fi
    return 0
}

# Run a command as the service user (so a check sees the files as the service will).
as_service_user() {
    if command -v runuser >/dev/null 2>&1; then
        runuser -u "$SERVICE_USER" -- "$@"
    else
        "$@"
    fi
}

python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

apt_install_venv() {
    command -v apt-get >/dev/null 2>&1 || die "$PYTHON cannot create a virtualenv; install its venv module"
    say "installing python3-venv with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
    }
}

make_venv() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (sudo apt install python3)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
        die "edgebroker needs Python 3.9 or newer; $PYTHON is $("$PYTHON" -V 2>&1)"
    want=$(python_version "$PYTHON")
    if [ -x "$PREFIX/bin/python" ]; then
        have=$(python_version "$PREFIX/bin/python" 2>/dev/null || echo none)
        if [ "$have" != "$want" ]; then
            say "the system's Python changed ($have -> $want): recreating $PREFIX"
            rm -rf "$PREFIX"
        fi
    fi
    if [ ! -x "$PREFIX/bin/python" ]; then
        say "creating the virtualenv $PREFIX (Python $want)"
        if ! "$PYTHON" -m venv "$PREFIX" >/dev/null 2>&1; then
            rm -rf "$PREFIX"
            apt_install_venv
            "$PYTHON" -m venv "$PREFIX" || die "cannot create a virtualenv with $PYTHON -m venv"
        fi
    fi
}

# Install edgebroker into the venv from the wheel, or from a wheel built out of a copy of the checkout
# (the checkout itself stays untouched: no build/ or egg-info left in it).
pip_install() {
    set -- --disable-pip-version-check --no-input --quiet
    if [ -n "$FIND_LINKS" ]; then
        [ -d "$FIND_LINKS" ] || die "--find-links $FIND_LINKS: no such directory"
        set -- "$@" --no-index --find-links "$FIND_LINKS"
    fi
    work=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $work now: it is local to this run
    trap "rm -rf '$work'" EXIT
    if [ -n "$WHEEL" ]; then
        [ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file"
        wheel=$WHEEL
    else
        if [ ! -f "$SOURCE/pyproject.toml" ] || [ ! -d "$SOURCE/edgebroker" ]; then
            die "$SOURCE is not an edgebroker checkout: give --source DIR or --wheel FILE"
        fi
        mkdir "$work/src" "$work/dist"
        (cd "$SOURCE" && tar --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis \
            -cf - .) | tar -C "$work/src" -xf -
        say "building edgebroker from $SOURCE"
        "$PREFIX/bin/python" -m pip wheel "$@" --no-deps --wheel-dir "$work/dist" "$work/src" ||
            die "building the wheel failed"
        for wheel in "$work"/dist/edgebroker-*.whl; do :; done
        [ -f "$wheel" ] || die "no wheel was built"
    fi
    say "installing $(basename "$wheel") into $PREFIX"
    "$PREFIX/bin/python" -m pip install "$@" "$wheel" || die "pip install failed"
    # The same version number again (a checkout between releases) still replaces the code.
    "$PREFIX/bin/python" -m pip install "$@" --force-reinstall --no-deps "$wheel" || die "pip install failed"
    rm -rf "$work"
    trap - EXIT
    lean_broker_script
}

# The pip of bookworm's venv (23.0.1) writes console scripts that import `re` to strip a "-script.pyw" or
# ".exe" ending from argv[0], which never has one here: with `re` comes enum, about 0.4 MiB of resident
# memory for the broker's whole life (bench/README.md, "Issue 19"). The service's script gets those two
# lines taken out (newer pips write no `re` there either); a script of any other form is left as it is.
lean_broker_script() {
    script=$PREFIX/bin/edgebroker
    if grep -qx 'import re' "$script" &&
        grep -qxF "    sys.argv[0] = re.sub(r'(-script\.pyw|\.exe)?$', '', sys.argv[0])" "$script"; then
        sed -e '/^import re$/d' -e '/^    sys\.argv\[0\] = re\.sub(/d' "$script" >"$script.new"
        chmod 755 "$script.new"
        mv "$script.new" "$script"
    fi
}

make_user() {
    if ! getent group gpio >/dev/null; then
        say "creating the group gpio"
        groupadd -f -r gpio
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        say "creating the system user $SERVICE_USER"
        useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "edgebroker MQTT broker" "$SERVICE_USER"
    fi
    usermod -a -G dialout,gpio "$SERVICE_USER"
}

install_files() {
    install -d -m 0755 "$SHARE"
    install -m 0644 "$HERE/edgebroker.toml" "$SHARE/edgebroker.toml"
    install -m 0644 "$HERE/README.md" "$SHARE/README.md"
    for name in $COMMANDS; do
        if [ -x "$PREFIX/bin/$name" ]; then
            ln -sfn "$PREFIX/bin/$name" "/usr/local/bin/$name"
        fi
    done

    install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
    if [ -e "$CONF" ]; then
        say "kept $CONF (the shipped default is $SHARE/edgebroker.toml)"
    else
        install -m 0640 -o root -g "$SERVICE_USER" "$HERE/edgebroker.toml" "$CONF"
        say "wrote the default $CONF"
    fi
    # The default config's password_file: empty (no one may connect) until a user is added.
    if [ ! -e "$CONF_DIR/passwd" ]; then
        install -m 0640 -o root -g "$SERVICE_USER" /dev/null "$CONF_DIR/passwd"
        say "created an empty $CONF_DIR/passwd: add users with edgebroker-passwd $CONF_DIR/passwd USERNAME"
    fi
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR" "$LOG_DIR"

    install -d -m 0755 "$(dirname "$UNIT")" "$(dirname "$MODULES")" "$(dirname "$UDEV_RULE")"
    install -m 0644 "$HERE/edgebroker.service" "$UNIT"
    install -m 0644 "$HERE/modules-load.conf" "$MODULES"
    if [ ! -e "$UDEV_RULE" ]; then
        install -m 0644 "$HERE/99-edgebroker-sensors.rules" "$UDEV_RULE"
    fi
}

check_config() {
    if ! as_service_user "$PREFIX/bin/edgebroker" --check-config -c "$CONF"; then
        die "$CONF does not pass the installed broker's check (above); fix it, then: sudo systemctl restart edgebroker"
    fi
}

start_service() {
    if ! command -v systemctl >/dev/null 2>&1; then
        say "no systemctl here: start the broker with $PREFIX/bin/edgebroker -c $CONF"
        return
    fi
    if ! systemd_running; then
        systemctl enable edgebroker.service  # offline: a chroot or an image; it starts at boot
        say "enabled edgebroker.service (systemd is not running here: it starts at the next boot)"
        return
    fi
    systemctl daemon-reload
    if command -v udevadm >/dev/null 2>&1; then
        udevadm control --reload || true
    fi
    modprobe -a usbserial cdc_acm 2>/dev/null || true
    systemctl enable edgebroker.service
    if [ "$START" = no ]; then
        say "enabled edgebroker.service (not started: --no-start)"
        return
    fi
    # Type=notify: restart returns once the broker sent READY=1, or fails.
    systemctl restart edgebroker.service ||
        die "edgebroker did not start: see systemctl status edgebroker; journalctl -u edgebroker"
    say "edgebroker is running: systemctl status edgebroker"
}

uninstall() {
    if command -v systemctl >/dev/null 2>&1; then
        if systemd_running; then
            systemctl disable --now edgebroker.service 2>/dev/null || true
        else
            systemctl disable edgebroker.service 2>/dev/null || true
        fi
    fi
    rm -f "$UNIT" "$MODULES"
    if [ -e "$UDEV_RULE" ]; then
        if [ "$PURGE" = yes ] || cmp -s "$UDEV_RULE" "$HERE/99-edgebroker-sensors.rules"; then
            rm -f "$UDEV_RULE"
        else
            say "kept $UDEV_RULE (edited)"
        fi
    fi
    for name in $COMMANDS; do
        link=/usr/local/bin/$name
        if [ -L "$link" ] && [ "$(readlink "$link")" = "$PREFIX/bin/$name" ]; then
            rm -f "$link"
        fi
    done
    rm -rf "$PREFIX"
    if systemd_running; then
        systemctl daemon-reload
    fi
    if [ "$PURGE" = yes ]; then
        rm -rf "$CONF_DIR" "$STATE_DIR" "$LOG_DIR" "$UNIT.d"
        if getent passwd "$SERVICE_USER" >/dev/null; then
            userdel "$SERVICE_USER"
        fi
        say "removed edgebroker, its configuration, data, logs and user (the group gpio stays)"
    else
        say "removed edgebroker; kept $CONF_DIR, $STATE_DIR, $LOG_DIR and the user $SERVICE_USER (--purge removes them)"
    fi
}

if [ "$ACTION" = uninstall ]; then
    uninstall
    exit 0
fi
make_user
make_venv
pip_install
install_files
check_config
start_service
