"""Imports inside edgebroker/ point downward only (docs: ARCHITECTURE.md, "Modules and the direction of imports").

Theory of operation: every .py file under edgebroker/ is parsed with `ast` (never imported, so this
test runs even while other modules are broken or missing). Each file belongs to a *unit*: the first
path component under edgebroker/ (`codec.py` -> codec, `cli/pub.py` -> cli). Every import that
resolves into the edgebroker package, absolute or relative, at module level or inside a function,
is checked against LAYERS: a unit may import only units of a strictly lower layer. Imports within
one unit (cli.broker -> cli.common) are fine. errors, packets and the package's __init__ (which
holds only `__version__`) are importable by everyone.

A file whose unit is not in LAYERS fails the test: add it to the table, at the right layer.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import pytest

PACKAGE = "edgebroker"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE

# Lower number = lower layer. A unit may import only units of a strictly lower layer.
LAYERS: Dict[str, int] = {
    # The package's own module holds `__version__` and imports nothing: a leaf, like errors.
    # (Re-exporting the broker from it would make broker -> __init__ -> broker a cycle.)
    "__init__": 0,
    "errors": 0,
    "packets": 0,
    "log": 0,
    # Frozen record classes for the configuration (dataclasses without its inspect import): a leaf.
    "record": 0,
    # A bridge's typed configuration (a leaf like errors, so config can hold it).
    "bridgeconfig": 0,
    "codec": 1,
    # The [[serial]]/[[gpio]] schema: typed values config.py holds, validated like Config's own.
    "devices": 0,
    "config": 1,
    # systemd's notify protocol: a socket and the environment, nothing of ours.
    "notify": 1,
    # accept() out of file descriptors: a spare descriptor and the errno values; nothing of ours.
    "fdreserve": 1,
    # The loop's selector (epoll, or the standard library's where there is none): nothing of ours.
    "poller": 1,
    # The garbage collector's settings for a running broker: nothing of ours.
    "gcpolicy": 1,
    # The loop's questions to the OS (TCP_INFO, scheduling policy, resident memory): log only.
    "hostos": 1,
    # What tls uses of the standard library's ssl, from its C module _ssl: nothing of ours.
    "sslcore": 0,
    # The password files' hashes, built in or OpenSSL's: nothing of ours.
    "passhash": 0,
    # A module imported with stand-ins for a few standard-library modules of its imports: nothing of ours.
    "standins": 0,
    # TLS as bytes in, bytes out (MemoryBIO + SSLObject): sans-IO like the codec; the loop and the
    # clients (tools, bridges) drive it.
    "tls": 1,
    # Reads TOML and mosquitto.conf files into config's schema: above config, below everything that runs.
    # configread: Origin, value kinds and the two syntaxes' value readers; configbridge: bridge blocks,
    # read with configread; configfile: the option tables and the builder, using both.
    "configread": 2,
    # The TOML parser, imported when a file needs it (without `typing`): nothing of ours but record.
    "tomlread": 1,
    "configbridge": 3,
    "configfile": 4,
    "topics": 2,
    "retained": 2,
    "session": 2,
    "sysstats": 2,
    # In-process clients' handle: holds the core by reference, imports nothing of it.
    "local": 2,
    "store": 2,
    # The bridge's client-side MQTT session, sans-IO like the codec it uses.
    "uplink": 2,
    # The database's lock file and directory checks, taken before the store opens the database.
    "dblock": 2,
    # Password and ACL files, and the decisions the core asks for: pure, below the core.
    "auth": 2,
    # The core's connection record (layer 3), the core's per-concern mixins (4), the core (5).
    "connection": 3,
    "handle_connect": 4,
    "handle_subscribe": 4,
    "handle_acks": 4,
    "handle_local": 4,
    "broker": 5,
    # A TLS connection with a socket's face, for the loop (over tls.py).
    "tlssocket": 3,
    # The thread that verifies password hashes off the loop; the server starts it.
    "hashing": 3,
    # Bridges hosted in the loop (the server starts them; they use the core through its local clients).
    "bridge": 3,
    # The loop's hooks for hosted concerns (a mixin of the server): its selector and log, nothing of the core.
    "hosting": 5,
    "server": 6,
    "client": 6,
    "cli": 7,
    # `python -m edgebroker`: runs the CLI, so it sits just above it; nothing imports it.
    "__main__": 8,
}

# Leaf modules of typed values, exceptions, the version and the record decorator: every layer may use them.
IMPORTABLE_BY_ALL = frozenset({"__init__", "errors", "packets", "record"})


def unit_of(module: str, package: str = PACKAGE) -> str:
    """`edgebroker.cli.broker` -> `cli`; `edgebroker` or `edgebroker.__init__` -> `__init__`."""
    parts = module.split(".")
    assert parts[0] == package, module
    return parts[1] if len(parts) > 1 else "__init__"


def _imported_units(module: str, tree: ast.AST, known_units: set, package: str) -> List[tuple]:
    """(line, imported unit or None, how it was written) for each import into `package`.

    None as the unit means the import could not be resolved (a relative import above the top).
    """
    # The package a relative import is relative to: a package's __init__ is its own package.
    parts = module.split(".")
    own_package = ".".join(parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == package or name.startswith(package + "."):
                    found.append((node.lineno, unit_of(name, package), f"import {name}"))
        elif isinstance(node, ast.ImportFrom):
            written = "." * node.level + (node.module or "")
            text = f"from {written} import {', '.join(a.name for a in node.names)}"
            if node.level:
                try:
                    target = importlib.util.resolve_name(written, own_package)
                except (ImportError, ValueError):
                    found.append((node.lineno, None, text))
                    continue
            else:
                target = node.module or ""
            if target == package:
                # `from edgebroker import codec` names a module; `from edgebroker import Broker`
                # takes a name from the package's __init__.
                for alias in node.names:
                    unit = alias.name if alias.name in known_units else "__init__"
                    found.append((node.lineno, unit, text))
            elif target.startswith(package + "."):
                found.append((node.lineno, unit_of(target, package), text))
    return found


def check_layering(
    sources: Mapping[str, str],
    layers: Mapping[str, int] = LAYERS,
    package: str = PACKAGE,
) -> List[str]:
    """Return one message per violation; `sources` maps dotted module names to source text.

    A package's own module is named `pkg.sub.__init__`, so relative imports resolve correctly.
    """
    problems: List[str] = []
    units = {unit_of(m, package) for m in sources}
    for unit in sorted(units - set(layers)):
        problems.append(
            f"{package}/{unit}: not in the LAYERS table of tests/test_layering.py; "
            f"add it at the layer where it belongs"
        )
    known_units = set(layers) | units
    for module, source in sorted(sources.items()):
        unit = unit_of(module, package)
        if unit not in layers:
            continue  # already reported above
        tree = ast.parse(source, filename=module)
        for line, target, text in _imported_units(module, tree, known_units, package):
            where = f"{module}:{line}: {text}"
            if target is None:
                problems.append(f"{where}: relative import beyond the top-level package")
            elif target == unit or target in IMPORTABLE_BY_ALL:
                continue
            elif target not in layers:
                problems.append(f"{where}: imports {target}, which is not in the LAYERS table")
            elif layers[target] >= layers[unit]:
                problems.append(
                    f"{where}: {unit} (layer {layers[unit]}) must not import "
                    f"{target} (layer {layers[target]}); imports point down only"
                )
    return problems


def load_package(package_dir: Path = PACKAGE_DIR, package: str = PACKAGE) -> Dict[str, str]:
    """Dotted module name -> source text for every .py file under `package_dir`."""
    sources: Dict[str, str] = {}
    if not package_dir.is_dir():
        return sources
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("")
        # edgebroker/cli/__init__.py -> edgebroker.cli.__init__ (see check_layering)
        sources[".".join((package,) + rel.parts)] = path.read_text(encoding="utf-8")
    return sources


def test_edgebroker_imports_point_down_only():
    problems = check_layering(load_package())
    assert not problems, "layering violations:\n" + "\n".join(problems)


# --- the checker itself, on small in-memory packages: proof that the test above can fail ------

DOWNWARD_OK = {
    "edgebroker.__init__": "__version__ = '0'\n",
    "edgebroker.errors": "from edgebroker import packets\nfrom . import __version__\n",
    "edgebroker.log": "import sys\n",
    "edgebroker.packets": "from .errors import ProtocolError\n",
    "edgebroker.codec": "from . import packets, errors, log\n",
    "edgebroker.topics": "import edgebroker.codec\n",
    "edgebroker.broker": "from . import __version__\nfrom edgebroker.topics import Trie\nfrom .session import Session\n",
    "edgebroker.session": "from edgebroker import config\n",
    "edgebroker.config": "",
    "edgebroker.server": "from edgebroker import broker\ndef f():\n    from .codec import decode\n",
    "edgebroker.cli.__init__": "from . import broker\nfrom .. import Broker\n",
    "edgebroker.cli.broker": "from ..server import Server\nfrom .common import parse\nfrom edgebroker import __version__\n",
    "edgebroker.cli.common": "from edgebroker.cli import broker\n",
    "edgebroker.__main__": "from .cli.broker import main\n",
}


def test_checker_accepts_downward_imports():
    assert check_layering(DOWNWARD_OK) == []


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("edgebroker.codec", "from .broker import Broker\n", "codec (layer 1) must not import broker (layer 5)"),
        ("edgebroker.codec", "from . import broker\n", "codec (layer 1) must not import broker (layer 5)"),
        ("edgebroker.codec", "from edgebroker import server\n", "must not import server"),
        ("edgebroker.codec", "from edgebroker.server import Server\n", "must not import server"),
        ("edgebroker.codec", "import edgebroker.broker\n", "must not import broker"),
        ("edgebroker.codec", "import edgebroker.broker as b\n", "must not import broker"),
        ("edgebroker.__init__", "from .broker import Broker\n", "__init__ (layer 0) must not import broker (layer 5)"),
        ("edgebroker.log", "from .config import Config\n", "log (layer 0) must not import config (layer 1)"),
        ("edgebroker.codec", "def lazy():\n    from .server import Server\n", "must not import server"),
        ("edgebroker.broker", "from .server import Server\n", "broker (layer 5) must not import server (layer 6)"),
        ("edgebroker.server", "from edgebroker.cli.broker import main\n", "must not import cli"),
        ("edgebroker.server", "from .client import Client\n", "server (layer 6) must not import client (layer 6)"),
        ("edgebroker.topics", "from .session import Session\n", "topics (layer 2) must not import session (layer 2)"),
        ("edgebroker.config", "from .codec import decode\n", "config (layer 1) must not import codec (layer 1)"),
        ("edgebroker.cli.pub", "from .. import __main__\n", "cli (layer 7) must not import __main__ (layer 8)"),
        ("edgebroker.codec", "from .whatever import x\n", "imports whatever, which is not in the LAYERS table"),
        ("edgebroker.codec", "from ... import x\n", "relative import beyond the top-level package"),
    ],
)
def test_checker_finds_upward_import(module, source, expected):
    sources = dict(DOWNWARD_OK)
    sources[module] = source
    problems = check_layering(sources)
    assert len(problems) == 1, problems
    assert expected in problems[0], problems
    assert problems[0].startswith(module + ":1:") or problems[0].startswith(module + ":2:")


def test_checker_rejects_module_missing_from_table():
    sources = dict(DOWNWARD_OK)
    sources["edgebroker.shiny"] = "from .codec import decode\n"
    problems = check_layering(sources)
    assert problems == [
        "edgebroker/shiny: not in the LAYERS table of tests/test_layering.py; add it at the layer where it belongs"
    ]


def test_load_package_reads_files_from_disk(tmp_path):
    pkg = tmp_path / "edgebroker"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "codec.py").write_text("from .server import Server\n")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "cli" / "broker.py").write_text("from ..server import Server\n")
    sources = load_package(pkg)
    assert sorted(sources) == [
        "edgebroker.__init__",
        "edgebroker.cli.__init__",
        "edgebroker.cli.broker",
        "edgebroker.codec",
    ]
    problems = check_layering(sources)
    assert len(problems) == 1 and problems[0].startswith("edgebroker.codec:1:"), problems


def test_missing_package_dir_checks_nothing(tmp_path):
    assert load_package(tmp_path / "nope") == {}


# --- firmware_bridge: its own package, below nothing and loaded only when the config asks for it ------

FIRMWARE_BRIDGE_DIR = PACKAGE_DIR.parent / "firmware_bridge"
#: The only edgebroker modules that may import firmware_bridge, and only inside a function (lazily).
FIRMWARE_BRIDGE_IMPORTERS = frozenset({"edgebroker.server"})


def _imports_of(tree: ast.AST, package: str) -> List[tuple]:
    """(line, module-level?) for each absolute import of `package` in `tree`."""
    top_level = {id(node) for node in getattr(tree, "body", [])}
    found = []
    for node in ast.walk(tree):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        if any(n == package or n.startswith(package + ".") for n in names):
            found.append((node.lineno, id(node) in top_level))
    return found


def check_firmware_bridge(bridge_sources: Mapping[str, str], broker_sources: Mapping[str, str]) -> List[str]:
    problems = []
    for module, source in sorted(bridge_sources.items()):
        for line, _ in _imports_of(ast.parse(source), PACKAGE):
            problems.append(f"{module}:{line}: firmware_bridge must not import edgebroker (it runs standalone)")
    for module, source in sorted(broker_sources.items()):
        for line, top in _imports_of(ast.parse(source), "firmware_bridge"):
            if module not in FIRMWARE_BRIDGE_IMPORTERS:
                problems.append(f"{module}:{line}: only {', '.join(sorted(FIRMWARE_BRIDGE_IMPORTERS))} may "
                                "import firmware_bridge")
            elif top:
                problems.append(f"{module}:{line}: imports firmware_bridge at module level; import it inside "
                                "the function that starts serial/GPIO, so a broker without them never loads it")
    return problems


def test_firmware_bridge_is_independent_and_loaded_lazily():
    bridge = load_package(FIRMWARE_BRIDGE_DIR, "firmware_bridge")
    assert "firmware_bridge.firmware.frames" in bridge
    problems = check_firmware_bridge(bridge, load_package())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("bridge, broker, expected", [
    ({"firmware_bridge.ports": "from edgebroker.broker import Broker\n"}, {}, "must not import edgebroker"),
    ({"firmware_bridge.ports": "def f():\n    import edgebroker\n"}, {}, "must not import edgebroker"),
    ({}, {"edgebroker.server": "import firmware_bridge.host\n"}, "at module level"),
    ({}, {"edgebroker.broker": "def f():\n    from firmware_bridge import host\n"}, "only edgebroker.server"),
])
def test_firmware_bridge_checker_finds(bridge, broker, expected):
    problems = check_firmware_bridge(bridge, broker)
    assert len(problems) == 1 and expected in problems[0], problems


def test_firmware_bridge_checker_accepts_lazy_import():
    assert check_firmware_bridge({"firmware_bridge.ports": "import serial\n"},
                                 {"edgebroker.server": "def start():\n    from firmware_bridge import host\n"}) == []
