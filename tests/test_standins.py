"""edgebroker.standins: a module imported while its imports of a few standard-library modules get
stand-ins (`_sqlite3` and tomllib without functools and the collections package, issue 19).

The stand-in lru_cache must cache as functools.lru_cache does. The imports run in fresh interpreters
with -S (this test process, and a venv's site hooks, imported functools long ago): `_sqlite3` imported
by the store leaves functools and collections out and runs statements; a module that asks a stand-in
for a name it lacks is not left half-imported, and the ordinary import then works; with `importers`,
only those packages' modules get the stand-ins.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgebroker import standins

ROOT = Path(__file__).resolve().parent.parent


def _counted(cache):
    calls = []

    def square(x):
        calls.append(x)
        return x * x
    return cache(square), calls


@pytest.mark.parametrize("args", [(2,), (2, True), (None,), (0,), (-1,), (128, False)])
def test_lru_cache_caches_as_functools(args):
    ours, our_calls = _counted(standins.lru_cache(*args))
    theirs, their_calls = _counted(functools.lru_cache(*args))
    for x in (1, 2, 1, 3, 1.0, 2, 1, 4, 4, 3):
        assert ours(x) == theirs(x)
        assert our_calls == their_calls
    assert ours.cache_info()[:4] == tuple(theirs.cache_info())
    ours.cache_clear()
    ours(1)
    assert our_calls[-1] == 1


def test_lru_cache_as_a_bare_decorator_and_its_errors():
    ours, our_calls = _counted(standins.lru_cache)
    assert [ours(x) for x in (3, 3, 4)] == [9, 9, 16] and our_calls == [3, 4]
    with pytest.raises(TypeError, match="integer, a callable, or None"):
        standins.lru_cache("big")


def _fresh(code: str, *args: str, path: str = "") -> list:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), path) if p))
    out = subprocess.run([sys.executable, "-S", "-c", code] + list(args), env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_store_imports_sqlite_without_functools(tmp_path):
    lines = _fresh("""
import sys
from edgebroker import store
print(*[m for m in ("functools", "collections") if m in sys.modules], "before")
store._import_sqlite3()
db = store.sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
for i in range(300):  # more statements than the cache holds, each prepared again: its evictions
    db.execute(f"INSERT INTO t (v) VALUES ('{i}')")
    db.execute("SELECT count(*) FROM t").fetchone()
print(db.execute("SELECT count(*), max(v) FROM t").fetchone())
print(*[m for m in ("functools", "collections") if m in sys.modules], "after")
""", str(tmp_path / "t.db"))
    assert lines == ["before", "(300, '99')", "after"]


def test_a_stand_in_that_lacks_a_name_leaves_nothing_and_the_ordinary_import_works(tmp_path):
    package = tmp_path / "needsmore"
    package.mkdir()
    (package / "__init__.py").write_text("from .inner import total\n")
    (package / "inner.py").write_text("from functools import reduce\n"
                                      "def total(xs):\n    return reduce(lambda a, b: a + b, xs)\n")
    lines = _fresh("""
import sys
from edgebroker import standins
got = standins.import_with_stand_ins("needsmore", {"functools": standins.functools()}, lambda m: None)
print(got, sorted(m for m in sys.modules if m.startswith("needsmore")), "functools" in sys.modules)
import needsmore
print(needsmore.total([1, 2, 3]), type(sys.modules["functools"].reduce).__name__)
""", path=str(tmp_path))
    assert lines == ["None [] False", "6 builtin_function_or_method"]


def test_a_failed_check_leaves_nothing(tmp_path):
    (tmp_path / "plain.py").write_text("from functools import lru_cache\nVALUE = 1\n")
    lines = _fresh("""
import sys
from edgebroker import standins
def check(module):
    raise ImportError("no")
print(standins.import_with_stand_ins("plain", {"functools": standins.functools()}, check),
      "plain" in sys.modules, "functools" in sys.modules)
""", path=str(tmp_path))
    assert lines == ["None False False"]


def test_only_the_importers_modules_get_the_stand_ins(tmp_path):
    for name, text in (("mine", "from functools import lru_cache\nimport theirs\n"),
                       ("theirs", "from functools import lru_cache, reduce\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(text)
    lines = _fresh("""
import sys
from edgebroker import standins
stand_in = standins.functools()
mine = standins.import_with_stand_ins("mine", {"functools": stand_in}, lambda m: None, importers=("mine",))
print(mine.lru_cache is standins.lru_cache, sys.modules["theirs"].lru_cache is sys.modules["functools"].lru_cache,
      sys.modules["functools"] is stand_in)
""", path=str(tmp_path))
    assert lines == ["True True False"]
