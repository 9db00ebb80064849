"""A cron job or one-off script that evaluates FeatBit flags with featbit-shm.

    FEATBIT_ENV_SECRET=... FEATBIT_STREAMING_URL=wss://... FEATBIT_EVENT_URL=https://... \
        python flag_report.py user-1 user-2

Prints one JSON line per user and exits 0; exits 1 when it had no flag data
(it answered with the defaults) or FeatBit did not get its events in time.
"""

from __future__ import annotations

import json
import sys

from featbit_shm import Config, FBClient

FLAG = "report-format"


def main(user_keys: list[str]) -> int:
    # start_wait bounds the wait for flag data; it returns as soon as data is
    # there: at once when a sync process already serves this host, about a
    # second when this client has to start one (a cold host).
    with FBClient(Config.from_env(), start_wait=10) as client:
        ready = client.initialize
        if not ready:
            print("flag_report: no flag data, answering with the defaults", file=sys.stderr)
        for key in user_keys:
            user = {"key": key, "name": key}
            detail = client.variation_detail(FLAG, user, "csv")
            print(json.dumps({"user": key, "format": detail.variation, "kind": detail.kind.value}), flush=True)
            client.track_metric(user, "report-generated")
        # The events are in shared memory already; the sync process sends
        # them even after this script has exited. Waiting makes the exit
        # status say whether FeatBit has them.
        sent = client.flush_and_wait(timeout=10)
        if not sent:
            print("flag_report: events not sent within 10 s", file=sys.stderr)
    return 0 if ready and sent else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["user-1"]))
