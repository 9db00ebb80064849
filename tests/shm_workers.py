"""Process bodies for the shared-memory tests (importable by spawned children)."""

from __future__ import annotations

import os
import time
from typing import Any

from featbit_shm._core.dataset import Changes, DataSet
from featbit_shm._core.wire import normalize_flag
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.reader import SnapshotReader
from featbit_shm.shm.writer import SnapshotWriter
from featbit_shm.testing import builders as b

MARKED_FLAGS = [f"m{i}" for i in range(10)]


def marked_dataset(marker: int, version: int) -> DataSet:
    """Ten flags that all serve str(marker): a consistent snapshot agrees on it."""
    flags = {
        k: normalize_flag(b.flag(k, variations=[str(marker), "other"], variation_type="string", updated_at=version))
        for k in MARKED_FLAGS
    }
    return DataSet(flags, {})


def publish_marked(tag: str, count: int, start_marker: int = 0, delay: float = 0.0, patch: bool = False) -> int:
    """Publish ``count`` generations; each one's marker is its generation number."""
    writer = SnapshotWriter(StoreNames(tag), grace=0.05, keep=2)
    previous = None
    for i in range(count):
        marker = writer.generation + 1
        ds = marked_dataset(marker, 1_700_000_000_000 + start_marker + i + 1)
        changes = Changes(False, frozenset(MARKED_FLAGS), frozenset()) if patch and previous is not None else None
        writer.publish(ds, changes)
        previous = ds
        if delay:
            time.sleep(delay)
    writer.close()
    return writer.generation


def read_marked(tag: str, deadline_s: float, stop_file: str) -> dict[str, Any]:
    """Evaluate continuously; report any inconsistency or generation going back."""
    reader = SnapshotReader(StoreNames(tag))
    seen: set[int] = set()
    last = -1
    errors: list[str] = []
    evaluations = 0
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        view = reader.current()
        if view is not None:
            values = []
            for key in MARKED_FLAGS:
                flag = view.flag(key)
                if flag is None or flag.static is None:
                    errors.append(f"gen {view.generation}: flag {key} missing")
                    break
                values.append(flag.static.value)
            evaluations += 1
            if len(set(values)) > 1 or (values and values[0] != str(view.generation)):
                errors.append(f"gen {view.generation}: inconsistent markers {sorted(set(values))}")
            if view.generation < last:
                errors.append(f"generation went back from {last} to {view.generation}")
            last = view.generation
            seen.add(view.generation)
        if os.path.exists(stop_file):
            # one last look after the writer finished
            final = reader.current()
            return {"errors": errors[:20], "seen": len(seen), "last": final.generation if final else -1, "evaluations": evaluations}
    return {"errors": [*errors[:20], "deadline reached"], "seen": len(seen), "last": last, "evaluations": evaluations}
