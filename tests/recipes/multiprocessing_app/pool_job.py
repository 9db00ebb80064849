"""Decide a flag for a stream of users in a multiprocessing.Pool, with featbit-shm.

    python pool_job.py --start-method spawn < users.jsonl

Reads one user per line on stdin (a JSON object with at least "key"), has a
pool process handle each, and prints one JSON line per user, in order.
Works with every start method: fork, forkserver and spawn.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from typing import Any

import featbit_shm

FLAG = "pricing-model"


def init_process() -> None:
    """Pool initializer: attach this process to the host's flags before its
    first task. Under fork it adopts the client the parent built."""
    featbit_shm.get()


def handle(line: str) -> dict[str, Any]:
    """One task: decide the pricing model for one user, then do the work."""
    user = json.loads(line)
    detail = featbit_shm.get().variation_detail(FLAG, user, "standard")
    time.sleep(0.01)  # stands in for this job's real work on the user
    return {"pid": os.getpid(), "user": user["key"], "value": detail.variation, "kind": detail.kind.value}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--start-method", choices=["fork", "forkserver", "spawn"], default="spawn")
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()

    featbit_shm.start_wait = 10  # how long get() may wait for flag data (default 15 s)
    # The parent attaches first: on a host with no sync process it starts
    # one, once, before any pool process needs it.
    featbit_shm.get()

    pool = multiprocessing.get_context(args.start_method).Pool(args.processes, initializer=init_process)
    try:
        for answer in pool.imap(handle, sys.stdin, chunksize=1):
            print(json.dumps(answer), flush=True)
    except BaseException:
        pool.terminate()
        raise
    pool.close()  # no more tasks: every process exits once the queue is empty
    pool.join()
    # The events the tasks recorded are in shared memory, even those of pool
    # processes that have exited: the sync process sends them within about
    # a second (FEATBIT_EVENTS_FLUSH_INTERVAL).
    return 0


if __name__ == "__main__":
    sys.exit(main())
