"""pool_job.py with fbclient's pattern: one client built when the module is imported.

    python pool_job_module.py --start-method fork < users.jsonl

Under fork the parent builds the client and every pool process inherits it.
Under spawn and forkserver this module is imported again in each new
process (as ``__mp_main__``), so each builds a client of its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from typing import Any

from featbit_shm import Config, FBClient

FLAG = "pricing-model"

client = FBClient(Config.from_env(), start_wait=10)


def handle(line: str) -> dict[str, Any]:
    """One task: decide the pricing model for one user, then do the work."""
    user = json.loads(line)
    detail = client.variation_detail(FLAG, user, "standard")
    time.sleep(0.01)  # stands in for this job's real work on the user
    return {"pid": os.getpid(), "user": user["key"], "value": detail.variation, "kind": detail.kind.value}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--start-method", choices=["fork", "forkserver", "spawn"], default="fork")
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()

    pool = multiprocessing.get_context(args.start_method).Pool(args.processes)
    try:
        for answer in pool.imap(handle, sys.stdin, chunksize=1):
            print(json.dumps(answer), flush=True)
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
