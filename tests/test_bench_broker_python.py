"""The interpreter the benchmark runs edgebroker with (bench.brokers.broker_python): the repository
venv's Python in a virtualenv of its own, so the broker starts as an installed one does, without the
editable install's import hooks, yet reaches the working tree and the venv's packages; kill_all()
removes it. No timing and no memory figure is asserted."""
from __future__ import annotations

import os
import subprocess

from bench import brokers

_PROBE = ("import sys, edgebroker, sqlite_utils; "
          "print(edgebroker.__file__); "
          "print(sorted(m for m in sys.modules if m.startswith('__editable__')))")


def _run(python: str) -> list:
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True,
                         env=dict(os.environ, PYTHONPATH=brokers.ROOT))
    return out.stdout.splitlines()


def test_the_broker_interpreter_reaches_the_tree_and_the_packages_without_the_editable_hooks():
    python = brokers.broker_python()
    try:
        assert python != brokers.repo_python() and os.path.exists(python)
        tree, hooks = _run(python)
        assert tree == os.path.join(brokers.ROOT, "edgebroker", "__init__.py")
        assert hooks == "[]"
        # The same probe under the repository's own venv shows what it leaves out (when that venv has
        # the editable install the test command makes).
        if any(n.startswith("__editable__") for n in os.listdir(os.path.dirname(sqlite_utils_dir()))):
            assert _run(brokers.repo_python())[1] != "[]"
        assert brokers.broker_python() == python  # made once per run
    finally:
        brokers.kill_all()
    assert not os.path.exists(python)


def sqlite_utils_dir() -> str:
    import sqlite_utils
    return os.path.dirname(sqlite_utils.__file__)


def test_a_script_that_never_calls_kill_all_leaves_no_venv_or_seed_behind():
    # A script of one's own (a scratch A/B, an interrupted helper) used to leave both in /tmp.
    script = ("from bench import brokers; "
              "print(brokers.broker_python()); print(brokers.edgebroker_seed_dir())")
    out = subprocess.run([brokers.repo_python(), "-c", script], capture_output=True, text=True, timeout=120,
                         check=True, cwd=brokers.ROOT)
    python, seed = out.stdout.splitlines()[-2:]
    assert python != brokers.repo_python(), "no virtualenv was made: nothing to check"
    assert seed != "None", "no seed directory was made: nothing to check"
    assert not os.path.exists(python)
    assert not os.path.exists(os.path.dirname(os.path.dirname(python)))
    assert not os.path.exists(seed)


def test_the_broker_command_is_the_installed_script_without_runpy():
    # The command pi-image's service runs (pip's console script less install.sh's `re` lines), by the
    # broker interpreter: `edgebroker --version` answers from the working tree, and nothing of runpy.
    try:
        command = brokers.broker_command()
        assert command[0] == brokers.broker_python() and os.path.basename(command[1]) == "edgebroker"
        with open(command[1]) as f:
            assert f.read() == brokers.EDGEBROKER_SCRIPT
        out = subprocess.run([command[0], "-X", "importtime", command[1], "--version"], capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, PYTHONPATH=brokers.ROOT))
        assert out.returncode == 0 and out.stdout.startswith("edgebroker"), out
        imported = [line.rpartition("|")[2].strip() for line in out.stderr.splitlines()]
        assert "edgebroker.cli.broker" in imported and "runpy" not in imported
    finally:
        brokers.kill_all()
