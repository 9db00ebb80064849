"""The layout's import rules that import-linter cannot state (issue 15).

``lint-imports`` (pyproject.toml) checks the layers, that worker and sync code
never import each other, and that there is no import cycle. What it cannot
say is "the pure core imports only the standard library and msgpack": that
is checked here, over every import of every ``_core`` module, function-level
ones included.
"""

from __future__ import annotations

import sys

import grimp

ALLOWED_EXTERNAL = {"msgpack"}


def test_the_pure_core_imports_only_the_standard_library_and_msgpack() -> None:
    graph = grimp.build_graph("featbit_shm", include_external_packages=True, exclude_type_checking_imports=True, cache_dir=None)
    core = {"featbit_shm._core", *graph.find_descendants("featbit_shm._core")}
    outside = set()
    for module in core:
        for imported in graph.find_modules_directly_imported_by(module):
            top = imported.split(".")[0]
            if imported in core or top in sys.stdlib_module_names or top in ALLOWED_EXTERNAL:
                continue
            outside.add(f"{module} -> {imported}")
    assert outside == set()


def test_worker_and_sync_code_never_import_each_other() -> None:
    graph = grimp.build_graph("featbit_shm", exclude_type_checking_imports=True, cache_dir=None)
    assert graph.find_shortest_chain("featbit_shm.worker", "featbit_shm.sync", as_packages=True) is None
    assert graph.find_shortest_chain("featbit_shm.sync", "featbit_shm.worker", as_packages=True) is None
    for upper in ("featbit_shm.worker", "featbit_shm.sync", "featbit_shm.client", "featbit_shm.config"):
        assert graph.find_shortest_chain("featbit_shm.shm", upper, as_packages=True) is None, upper
