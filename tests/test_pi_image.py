"""pi-image/: the installer, the systemd unit, the default config and the pi-gen stage, with real tools.

Theory of operation.
- Fast checks: shellcheck on every shell script of the repository; `systemd-analyze security
  --offline=true --threshold=20` (the threshold is on the 0-100 scale: 2.0 as printed) and
  `systemd-analyze verify --recursive-errors=no` (without it, verify exits 0 on unknown directives) on
  pi-image/edgebroker.service, verify in a scratch root holding the executables the unit names; the
  default config passes the broker's own check.
- Chroot tests (marker `chroot`, run by scripts/test.sh like everything else; they need root): a Debian
  bookworm root file system made with debootstrap stands for Raspberry Pi OS Lite (pi-gen's stage2,
  which needs the Raspberry Pi archive, unreachable from CI). It is cached as a tar under
  /var/cache/edgebroker-test/ (or $EDGEBROKER_TEST_CACHE), keyed by suite, architecture, mirror and the
  package list (the stage's NN-packages files plus what Lite has and minbase lacks), built under a lock
  and renamed into place, so concurrent runs share one build. tests/pigen_standin.sh then runs
  pi-image/stage-edgebroker exactly as pi-gen's build.sh would (prerun.sh/copy_previous, NN-packages,
  NN-run.sh, NN-run-chroot.sh through on_chroot), installing from wheels built here (no package index
  inside the chroot). The installed broker is then started inside the chroot as the edgebroker user with
  the installed config (its listener moved to 127.0.0.1 and an ephemeral port) and reached with
  mosquitto_pub/mosquitto_sub from outside; its notify messages arrive on an abstract socket (abstract
  names are per network namespace, so they cross the chroot). `systemd-analyze verify --root` checks the
  installed unit. The same runs on arm64 through qemu-user-static when binfmt_misc has qemu-aarch64
  registered (scripts/test.sh registers it), else it is skipped with the reason. Every mount is made in a
  private mount namespace (unshare), so it ends with the process that made it, however the test ends;
  the test checks that none is left before deleting a root file system (rm --one-file-system).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

try:
    from notifysock import Manager
except ImportError:
    from tests.notifysock import Manager  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
PI = REPO / "pi-image"
UNIT = PI / "edgebroker.service"
STAGE = PI / "stage-edgebroker"
STANDIN = REPO / "tests" / "pigen_standin.sh"

CACHE = Path(os.environ.get("EDGEBROKER_TEST_CACHE", "/var/cache/edgebroker-test"))
SUITE = "bookworm"
MIRROR = os.environ.get("EDGEBROKER_TEST_MIRROR", "http://deb.debian.org/debian")
#: What Raspberry Pi OS Lite (pi-gen's stage0-2) has, the stage relies on, and debootstrap's minbase lacks.
LITE_PACKAGES = ["systemd"]
#: Seconds for one step inside a chroot (an emulated arm64 Python is slow to start).
STEP = 180.0

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (Debian's systemd package)")


def run(argv: List[str], timeout: float = STEP, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          **kw)


# ---- shellcheck ---------------------------------------------------------------------------------------------

def shell_scripts() -> List[Path]:
    """Every shell script in the repository: *.sh, files starting with a sh/bash shebang, and the files
    pi-gen sources (they say `# shellcheck shell=bash`)."""
    found = []
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if not path.is_file() or rel.parts[0] in (".git", ".venv", "node_modules") or "node_modules" in rel.parts:
            continue
        if path.suffix == ".sh":
            found.append(path)
            continue
        if path.suffix in ("", ".run") or rel.parts[0] in ("pi-image", ".ci", "scripts"):
            try:
                head = path.read_bytes()[:200]
            except OSError:
                continue
            if re.match(rb"#!\s*/(usr/)?bin/(env )?(ba)?sh\b", head) or b"# shellcheck shell=" in head:
                found.append(path)
    return found


def test_shellcheck_every_script():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (scripts/test.sh installs it)")
    scripts = shell_scripts()
    names = {str(p.relative_to(REPO)) for p in scripts}
    # The files this issue ships are among them (the search found what it must).
    assert {"pi-image/install.sh", "pi-image/stage-edgebroker/prerun.sh", "pi-image/config",
            "pi-image/stage-edgebroker/EXPORT_IMAGE", "pi-image/stage-edgebroker/01-files/00-run.sh",
            "pi-image/stage-edgebroker/02-install/00-run-chroot.sh", "scripts/test.sh",
            "tests/pigen_standin.sh"} <= names, names
    result = run(["shellcheck", "--external-sources", *map(str, scripts)], cwd=str(REPO))
    assert result.returncode == 0, result.stdout


# ---- the unit ---------------------------------------------------------------------------------------------

@needs_systemd_analyze
def test_unit_security_exposure_is_at_most_2():
    result = run(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(UNIT)])
    level = re.search(r"Overall exposure level for edgebroker\.service: (\d+\.\d+)", result.stdout)
    assert level, result.stdout
    assert result.returncode == 0 and float(level.group(1)) <= 2.0, result.stdout
    # The threshold does bite: Debian's mosquitto.service-like unit (root, no hardening) fails it.
    bare = run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "/dev/stdin"],
               input="[Service]\nExecStart=/bin/true\n")
    assert bare.returncode != 0, bare.stdout


def _verify_root(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on the unit inside a scratch root that holds the programs it runs (verify
    checks that ExecStart/ExecReload exist, inside --root): copies of the real broker entry point and kill."""
    root = tmp_path / "root"
    unit = root / "etc/systemd/system/edgebroker.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(unit_text)
    for inside, real in (("opt/edgebroker/bin/edgebroker", REPO / ".venv/bin/edgebroker"),
                         ("bin/kill", Path("/bin/kill"))):
        target = root / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(real), str(target))
    return run(["systemd-analyze", "verify", "--recursive-errors=no", f"--root={root}",
                "/etc/systemd/system/edgebroker.service"])


@needs_systemd_analyze
def test_unit_verify_is_clean(tmp_path):
    if not (REPO / ".venv/bin/edgebroker").exists() or not Path("/bin/kill").exists():
        pytest.skip("needs the .venv made by scripts/test.sh and /bin/kill (procps)")
    text = UNIT.read_text()
    result = _verify_root(tmp_path / "good", text)
    assert result.returncode == 0 and result.stdout == "", result.stdout
    # And it would complain: an unknown directive is an error with --recursive-errors=no.
    bad = _verify_root(tmp_path / "bad", text.replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nNoSuchKey=1"))
    assert bad.returncode != 0 and "NoSuchKey" in bad.stdout, bad.stdout


def test_unit_is_what_the_issue_asks():
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "User=edgebroker",
                 "StateDirectory=edgebroker", "ConfigurationDirectory=edgebroker", "LogsDirectory=edgebroker",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                 "DeviceAllow=char-ttyUSB rw", "DeviceAllow=char-ttyACM rw", "DeviceAllow=char-gpiochip rw",
                 "ExecStart=/opt/edgebroker/bin/edgebroker -c /etc/edgebroker/edgebroker.toml"):
        assert line in text.splitlines(), line
    assert "PrivateDevices=yes" not in text  # it would hide /dev/ttyUSB*
    assert any(line.startswith("SystemCallFilter=@system-service") for line in text.splitlines())


# ---- the default config and the installer's command line ------------------------------------------------------

def test_default_config_passes_the_broker_check_and_has_the_defaults(tmp_path):
    # The broker's check wants the data directory and the password file to exist: point them at
    # scratch copies (the installer creates the real ones before it checks).
    text = (PI / "edgebroker.toml").read_text()
    (tmp_path / "passwd").write_text("")
    copy = tmp_path / "edgebroker.toml"
    copy.write_text(text.replace('"/var/lib/edgebroker"', f'"{tmp_path}"')
                    .replace('"/etc/edgebroker/passwd"', f'"{tmp_path}/passwd"'))
    result = run([sys.executable, "-m", "edgebroker", "--check-config", "-c", str(copy)], cwd=str(REPO))
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stdout
    from edgebroker.configfile import load_config
    config = load_config(str(PI / "edgebroker.toml")).config
    assert config.persistence and config.persistence_location == "/var/lib/edgebroker"
    assert config.password_file == "/etc/edgebroker/passwd" and config.allow_anonymous is False
    assert [(listener.port, listener.address) for listener in config.listeners] == [(1883, None)]  # the LAN
    assert "# port = 8883" in text and "# certfile = " in text  # the commented TLS listener
    assert "# [[serial]]" in text  # the commented serial example


def _uncomment(text: str, first_line: str) -> str:
    """The commented block starting at `first_line` ("# [[listener]]") made live: its "# " prefixes go."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line == first_line and lines[i + 1].startswith("# "))
    i = start
    while i < len(lines) and lines[i].startswith("# "):
        lines[i] = lines[i][2:]
        i += 1
    return "\n".join(lines)


def test_default_config_commented_examples_work_when_uncommented(tmp_path):
    """The commented TLS listener and serial sensor, uncommented with a real certificate (trustme) and a
    real pseudo-terminal standing for the sensor, pass the broker's check."""
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("gateway.local", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "gateway.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "gateway.key"))
    master, slave = os.openpty()
    try:
        text = (PI / "edgebroker.toml").read_text()
        live = _uncomment(_uncomment(text, "# [[listener]]"), "# [[serial]]")
        assert "\n[[listener]]\nport = 8883\n" in live and "\n[[serial]]\nport = " in live
        (tmp_path / "passwd").write_text("")
        live = (live.replace('"/var/lib/edgebroker"', f'"{tmp_path}"')
                .replace('"/etc/edgebroker/passwd"', f'"{tmp_path}/passwd"')
                .replace('"/etc/edgebroker/certs/', f'"{tmp_path}/')
                .replace('"/dev/serial/by-id/usb-Silicon_Labs_CP2102-if00-port0"', f'"{os.ttyname(slave)}"')
                .replace("port = 1883\n", 'port = 0\naddress = "127.0.0.1"\n')
                .replace("port = 8883\n", 'port = 0\naddress = "127.0.0.1"\n'))
        conf = tmp_path / "live.toml"
        conf.write_text(live)
        result = run([sys.executable, "-m", "edgebroker", "--check-config", "-c", str(conf)], cwd=str(REPO))
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stdout + live
        from edgebroker.configfile import load_config
        config = load_config(str(conf)).config
        assert [bool(listener.certfile) for listener in config.listeners] == [False, True]
        assert [s.port for s in config.serial] == [os.ttyname(slave)]
    finally:
        os.close(master)
        os.close(slave)


def test_installer_refuses_bad_usage():
    bogus = run(["sh", str(PI / "install.sh"), "--bogus"])
    assert bogus.returncode == 2 and "unknown option --bogus" in bogus.stdout
    purge = run(["sh", str(PI / "install.sh"), "--purge"])
    assert purge.returncode == 1 and "--purge goes with --uninstall" in purge.stdout


#: What bookworm's pip (23.0.1) writes as the broker's console script.
PIP23_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from edgebroker.cli.broker import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def test_installer_takes_re_out_of_the_brokers_script(tmp_path):
    # install.sh's lean_broker_script, run on pip 23.0.1's script (and again, and on another form): the
    # broker's script no longer imports re (0.4 MiB for the service's life), and it still runs the broker.
    function = re.search(r"(?ms)^lean_broker_script\(\) \{.*?^\}$", (PI / "install.sh").read_text()).group(0)
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "edgebroker"
    original = PIP23_SCRIPT.format(python=sys.executable)
    script.write_text(original)
    script.chmod(0o755)
    for _ in range(2):  # an upgrade runs it again on what it wrote: nothing more changes
        assert run(["sh", "-c", f"set -eu\n{function}\nPREFIX={tmp_path}\nlean_broker_script"]).returncode == 0
        assert script.read_text() == "".join(line + "\n" for line in original.splitlines()
                                             if line != "import re" and "re.sub" not in line)
        assert script.stat().st_mode & 0o777 == 0o755
    env = dict(os.environ, PYTHONPATH=str(REPO))
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env, timeout=STEP)
    assert version.returncode == 0 and version.stdout.startswith("edgebroker"), version.stdout + version.stderr
    other = "#!/bin/sh\nimport re\n"  # not pip's form: left alone
    script.write_text(other)
    assert run(["sh", "-c", f"set -eu\n{function}\nPREFIX={tmp_path}\nlean_broker_script"]).returncode == 0
    assert script.read_text() == other


# ---- chroot: the stage run as pi-gen would, then the installed broker ------------------------------------------

def native_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], stdout=subprocess.PIPE, text=True,
                          check=True).stdout.strip()


def stage_packages() -> List[str]:
    names = set(LITE_PACKAGES)
    for path in STAGE.glob("*/[0-9][0-9]-packages*"):
        for line in path.read_text().splitlines():
            names.update(line.split("#", 1)[0].split())
    return sorted(names)


def rootfs_tar(arch: str) -> Path:
    """The cached debootstrap root file system for `arch`, built when missing (one build at a time)."""
    packages = stage_packages()
    key = hashlib.sha256(f"{SUITE} {arch} minbase {MIRROR} {' '.join(packages)}".encode()).hexdigest()[:16]
    tar = CACHE / f"{SUITE}-{arch}-{key}.tar"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{SUITE}-{arch}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building the same one: wait for it, then reuse
        if tar.exists():
            return tar
        build = Path(tempfile.mkdtemp(prefix=f".build-{arch}-", dir=str(CACHE)))
        try:
            started = time.monotonic()
            result = run(["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase",
                          f"--arch={arch}", f"--include={','.join(packages)}", SUITE, str(build / "root"), MIRROR],
                         timeout=1800)
            assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-4000:]}"
            for deb in (build / "root/var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            result = run(["tar", "-C", str(build / "root"), "-cf", str(build / "rootfs.tar"), "."], timeout=600)
            assert result.returncode == 0, result.stdout
            os.rename(str(build / "rootfs.tar"), str(tar))
            print(f"\ndebootstrap {SUITE} {arch}: {time.monotonic() - started:.0f} s, cached as {tar}")
            for old in CACHE.glob(f"{SUITE}-{arch}-*.tar"):
                if old != tar:
                    old.unlink()  # an older package list's
        finally:
            remove_tree(build)
    return tar


def mounts_under(path: Path) -> List[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def remove_tree(path: Path) -> None:
    left = mounts_under(path)
    assert not left, f"mounts left under {path}: {left}"
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def arch_ready(arch: str) -> Optional[str]:
    """None when this machine can run `arch` binaries in a chroot, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mounts)"
    for tool in ("debootstrap", "unshare", "chroot", "mosquitto_sub", "mosquitto_pub", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/test.sh installs it)"
    if arch == native_arch():
        return None
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if arch != "arm64":
        return f"no emulation set up for {arch}"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        return ("binfmt_misc has no enabled qemu-aarch64 entry (scripts/test.sh registers it with "
                "qemu-user-static and binfmt-support where the kernel allows)")
    return None


ARCHES = [native_arch()] + (["arm64"] if native_arch() != "arm64" else [])


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """Wheels of edgebroker's dependencies (pyproject.toml) and of setuptools (to build the checkout)
    plus edgebroker's own wheel, made here, so the chroot installs without a package index."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    out = tmp_path_factory.mktemp("wheels")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    result = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                  "--wheel-dir", str(out), *deps, "setuptools>=64", "wheel"], timeout=600)
    assert result.returncode == 0, result.stdout
    src = tmp_path_factory.mktemp("src")
    subprocess.run(f"tar -C '{REPO}' --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' "
                   f"--exclude=__pycache__ -cf - . | tar -C '{src}' -xf -", shell=True, check=True)
    result = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                  "--wheel-dir", str(out / "own"), str(src)], timeout=600)
    assert result.returncode == 0, result.stdout
    return out


class Staged:
    def __init__(self, arch: str, work: Path) -> None:
        self.arch = arch
        self.work = work
        self.root = work / STAGE.name / "rootfs"


@pytest.fixture(scope="module")
def staged(wheelhouse, tmp_path_factory) -> Iterator:
    """staged(arch) -> Staged: the stage run by the pi-gen stand-in on a copy of the cached rootfs (once per
    arch and module); removed at the end after checking no mount is left."""
    made: Dict[str, Staged] = {}

    def get(arch: str) -> Staged:
        if arch in made:
            return made[arch]
        reason = arch_ready(arch)
        if reason:
            pytest.skip(f"chroot test on {arch}: {reason}")
        tar = rootfs_tar(arch)
        work = Path(tempfile.mkdtemp(prefix=f"edgebroker-stage-{arch}-"))
        made[arch] = st = Staged(arch, work)
        # This machine's pip settings (PIP_FIND_LINKS, ...) are not the image's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(EDGEBROKER_FIND_LINKS=str(wheelhouse), LC_ALL="C.UTF-8")
        started = time.monotonic()
        result = run(["bash", str(STANDIN), str(STAGE), str(tar), str(work)], timeout=1800, env=env)
        print(f"\npi-gen stand-in, stage-edgebroker on {arch}: {time.monotonic() - started:.0f} s")
        assert result.returncode == 0, f"the stage failed on {arch}:\n{result.stdout[-6000:]}"
        assert "EXPORT_IMAGE: IMG_SUFFIX=-edgebroker" in result.stdout
        return st

    yield get
    for st in made.values():
        remove_tree(st.work)


def in_chroot(root: Path, *argv: str, user: Optional[str] = None, timeout: float = STEP,
              popen: bool = False, env: Optional[Dict[str, str]] = None):
    """Run argv inside the chroot (proc and dev mounted in a private namespace), as root or as `user`."""
    spec: List[str] = []
    if user is not None:
        uid, gid, groups = ids_in(root, user)
        spec = [f"--userspec={uid}:{gid}", f"--groups={','.join(map(str, groups))}"]
    script = ('set -e; r=$1; shift; mount -t proc proc "$r/proc"; mount --bind /dev "$r/dev"; '
              'exec chroot "$@"')
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(root), *spec,
           str(root), *argv]
    full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                "HOME": "/root" if user is None else "/var/lib/edgebroker"}
    full_env.update(env or {})
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
    return run(cmd, timeout=timeout, env=full_env)


def ids_in(root: Path, user: str):
    entry = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                 if line.split(":")[0] == user)
    uid, gid = int(entry[2]), int(entry[3])
    groups = [int(fields[2]) for fields in (line.split(":") for line in (root / "etc/group").read_text().splitlines())
              if user in fields[3].split(",")]
    return uid, gid, groups


def group_members(root: Path, name: str) -> List[str]:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields[3].split(",") if fields[3] else []
    raise AssertionError(f"no group {name} in {root}/etc/group")


class ChrootBroker:
    """The installed broker running inside the chroot as the edgebroker user; log lines in a queue."""

    def __init__(self, root: Path, conf: str, notify: str) -> None:
        self.p = in_chroot(root, "/opt/edgebroker/bin/edgebroker", "-c", conf, user="edgebroker", popen=True,
                           env={"NOTIFY_SOCKET": notify})
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:  # type: ignore[union-attr]
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def port(self) -> int:
        deadline = time.monotonic() + STEP
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"broker exited ({self.p.poll()}):\n" + "\n".join(self.seen)
            self.seen.append(line)
            m = re.search(r"Opening ipv4 listen socket on port (\d+)\.", line)
            if m:
                return int(m.group(1))

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(STEP)


def loopback_config(root: Path) -> str:
    """The installed config with only its LAN listener moved to 127.0.0.1 on an ephemeral port (tests
    listen on loopback only); written next to it, readable by the service user as the real one is."""
    installed = (root / "etc/edgebroker/edgebroker.toml").read_text()
    lan = "[[listener]]\nport = 1883\n"
    assert installed.count(lan) == 1, "the default config's LAN listener changed: update this test"
    path = root / "etc/edgebroker/loopback-test.toml"
    path.write_text(installed.replace(lan, '[[listener]]\nport = 0\naddress = "127.0.0.1"\n'))
    os.chown(str(path), 0, ids_in(root, "edgebroker")[1])
    path.chmod(0o640)
    return "/etc/edgebroker/loopback-test.toml"


LOGIN = ("-u", "sensor", "-P", "greenhouse-secret")


def add_user(root: Path, user: str, password: str) -> None:
    """Add a user to the installed password file with the installed edgebroker-passwd, run as root as the
    README says; the file must stay readable by the broker (root:edgebroker, 0640)."""
    passwd = root / "etc/edgebroker/passwd"
    assert passwd.exists() and passwd.read_text() == ""  # the installer made it, empty
    result = in_chroot(root, "/usr/local/bin/edgebroker-passwd", "-b", "/etc/edgebroker/passwd", user, password)
    assert result.returncode == 0, result.stdout
    assert passwd.read_text().startswith(f"{user}:$7$")
    st = passwd.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, ids_in(root, "edgebroker")[1], 0o640)


def mosquitto(tool: str, port: int, *args: str) -> str:
    result = run([tool, "-h", "127.0.0.1", "-p", str(port), "-i", f"pi-image-{uuid.uuid4().hex[:8]}", *args])
    assert result.returncode == 0, f"{tool} {' '.join(args)}: {result.stdout}"
    return result.stdout


@pytest.mark.chroot
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("arch", ARCHES)
def test_stage_makes_a_gateway_in_a_chroot(staged, arch):
    st = staged(arch)
    root = st.root
    # What the installer made, as the image will have it.
    assert os.access(str(root / "opt/edgebroker/bin/edgebroker"), os.X_OK)
    assert "import re" not in (root / "opt/edgebroker/bin/edgebroker").read_text()  # lean_broker_script
    assert "edgebroker" in group_members(root, "dialout") and "edgebroker" in group_members(root, "gpio")
    conf = root / "etc/edgebroker/edgebroker.toml"
    assert conf.read_text() == (PI / "edgebroker.toml").read_text()
    uid, gid, _ = ids_in(root, "edgebroker")
    assert (conf.stat().st_mode & 0o777, conf.stat().st_uid, conf.stat().st_gid) == (0o640, 0, gid)
    passwd = (root / "etc/edgebroker/passwd").stat()  # the default config's password file, empty
    assert (passwd.st_size, passwd.st_mode & 0o777, passwd.st_uid, passwd.st_gid) == (0, 0o640, 0, gid)
    state = (root / "var/lib/edgebroker").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (uid, 0o750)
    assert (root / "etc/systemd/system/edgebroker.service").read_text() == UNIT.read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edgebroker.service"
    assert os.readlink(str(wants)) == "/etc/systemd/system/edgebroker.service"  # enabled for first boot
    assert (root / "etc/udev/rules.d/99-edgebroker-sensors.rules").exists()
    assert (root / "etc/modules-load.d/edgebroker.conf").exists()
    assert os.readlink(str(root / "usr/local/bin/edgebroker")) == "/opt/edgebroker/bin/edgebroker"
    assert not (root / "tmp/edgebroker-install").exists()

    # The unit, against the installed file system (its executables, its systemd's targets).
    result = run(["systemd-analyze", "verify", "--recursive-errors=no", f"--root={root}",
                  "/etc/systemd/system/edgebroker.service"])
    assert result.returncode == 0 and result.stdout == "", result.stdout

    # The installed broker checks the installed config, as the service user.
    result = in_chroot(root, "/opt/edgebroker/bin/edgebroker", "--check-config", "-c",
                       "/etc/edgebroker/edgebroker.toml", user="edgebroker")
    assert result.returncode == 0 and result.stdout.strip() == "/etc/edgebroker/edgebroker.toml: OK", result.stdout

    # Start it as systemd would (the user, the config, NOTIFY_SOCKET), reach it from outside.
    test_conf = loopback_config(root)
    manager = Manager(f"@edgebroker-chroot-{uuid.uuid4().hex}")
    brokers: List[ChrootBroker] = []
    try:
        started = time.monotonic()
        brokers.append(ChrootBroker(root, test_conf, manager.address))
        manager.expect(timeout=STEP, READY="1")
        print(f"\n{arch}: broker ready {time.monotonic() - started:.1f} s after start")
        port = brokers[-1].port()
        # Passwords are required and the installed password file is empty: nobody gets in.
        refused = run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "x", "-m", "1"])
        assert refused.returncode != 0 and "not authorised" in refused.stdout, refused.stdout
        # As the README says: add a user, then `systemctl reload edgebroker` (SIGHUP).
        add_user(root, "sensor", "greenhouse-secret")
        brokers[-1].p.send_signal(signal.SIGHUP)
        manager.expect(timeout=STEP, RELOADING="1")
        manager.expect(timeout=STEP, READY="1")
        mosquitto("mosquitto_pub", port, *LOGIN, "-t", "gateway/greenhouse/temp", "-m", "21.5", "-q", "1", "-r")
        assert mosquitto("mosquitto_sub", port, *LOGIN, "-t", "gateway/#", "-C", "1", "-W", "60", "-v") == \
            "gateway/greenhouse/temp 21.5\n"
        brokers[-1].p.send_signal(signal.SIGTERM)  # systemctl stop
        manager.expect(timeout=STEP, STOPPING="1")
        assert brokers[-1].p.wait(STEP) == 0
        db = root / "var/lib/edgebroker/edgebroker.db"
        assert db.stat().st_uid == uid

        # A restart finds the retained message in the database.
        brokers.append(ChrootBroker(root, test_conf, manager.address))
        manager.expect(timeout=STEP, READY="1")
        port = brokers[-1].port()
        assert mosquitto("mosquitto_sub", port, *LOGIN, "-t", "gateway/#", "-C", "1", "-W", "60", "-v") == \
            "gateway/greenhouse/temp 21.5\n"
        brokers[-1].p.send_signal(signal.SIGTERM)
        assert brokers[-1].p.wait(STEP) == 0
    finally:
        for b in brokers:
            b.stop()
        manager.close()
        (root / test_conf.lstrip("/")).unlink()
    assert not mounts_under(st.work)


@pytest.mark.chroot
@pytest.mark.timeout(3600)
def test_installer_upgrades_in_place_and_uninstalls(staged, wheelhouse):
    """Re-running the installer (an upgrade, from a wheel this time) keeps an edited config; --uninstall
    removes the program and the service but keeps config, data and user; --purge removes those too."""
    root = staged(ARCHES[0]).root
    conf = root / "etc/edgebroker/edgebroker.toml"
    shipped = conf.read_text()
    carry = root / "tmp/reinstall"
    shutil.copytree(str(PI), str(carry / "pi-image"))
    wheel = next((wheelhouse / "own").glob("edgebroker-*.whl"))
    shutil.copy2(str(wheel), str(carry))
    shutil.copytree(str(wheelhouse), str(carry / "wheels"), ignore=shutil.ignore_patterns("own"))
    reinstall = ["sh", "/tmp/reinstall/pi-image/install.sh", "--wheel", f"/tmp/reinstall/{wheel.name}",
                 "--find-links", "/tmp/reinstall/wheels"]
    try:
        # An edit the broker refuses (a global option after the listener table): the upgrade stops there,
        # naming the file, line and option, and leaves the file alone.
        broken = shipped + "\nmax_queued_messages = 500\n"
        conf.write_text(broken)
        result = in_chroot(root, *reinstall, timeout=900)
        assert result.returncode == 1, result.stdout
        assert "/etc/edgebroker/edgebroker.toml:" in result.stdout and "max_queued_messages" in result.stdout
        assert "does not pass the installed broker's check" in result.stdout
        assert conf.read_text() == broken

        edited = "# edited on the gateway\nmax_queued_messages = 500\n" + shipped
        conf.write_text(edited)
        result = in_chroot(root, *reinstall, timeout=900)
        assert result.returncode == 0, result.stdout
        assert "kept /etc/edgebroker/edgebroker.toml" in result.stdout
        assert conf.read_text() == edited
        assert (root / "opt/edgebroker/share/edgebroker/edgebroker.toml").read_text() == \
            (PI / "edgebroker.toml").read_text()
        version = in_chroot(root, "/usr/local/bin/edgebroker", "--version", user="edgebroker")
        assert version.returncode == 0 and version.stdout.startswith("edgebroker version"), version.stdout

        result = in_chroot(root, "sh", "/tmp/reinstall/pi-image/install.sh", "--uninstall")
        assert result.returncode == 0, result.stdout
        for gone in ("opt/edgebroker", "etc/systemd/system/edgebroker.service", "usr/local/bin/edgebroker",
                     "etc/systemd/system/multi-user.target.wants/edgebroker.service",
                     "etc/modules-load.d/edgebroker.conf", "etc/udev/rules.d/99-edgebroker-sensors.rules"):
            assert not os.path.lexists(str(root / gone)), gone
        assert conf.read_text() == edited and (root / "var/lib/edgebroker").is_dir()
        assert "edgebroker" in group_members(root, "dialout")

        result = in_chroot(root, "sh", "/tmp/reinstall/pi-image/install.sh", "--uninstall", "--purge")
        assert result.returncode == 0, result.stdout
        for gone in ("etc/edgebroker", "var/lib/edgebroker", "var/log/edgebroker"):
            assert not (root / gone).exists(), gone
        assert not any(line.startswith("edgebroker:") for line in (root / "etc/passwd").read_text().splitlines())
        group_members(root, "gpio")  # the group stays (other programs use it)
    finally:
        shutil.rmtree(str(carry), ignore_errors=True)
