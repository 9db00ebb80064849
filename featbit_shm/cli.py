"""The ``featbit-shm`` command.

    featbit-shm sync                 run the sync process in the foreground
    featbit-shm status [--json] [--all]  leader, heartbeat, generation, counters, last error,
                                     workers that cannot follow; exits 1 unless a live sync
                                     process serves data (a probe)
    featbit-shm dump [--flag KEY]    the current snapshot as JSON
    featbit-shm eval FLAG --user JSON  one evaluation, as a worker would see it

The store is the one a client with the same environment would use: its name
comes from ``FEATBIT_ENV_SECRET`` (empty when offline) and
``FEATBIT_NAMESPACE`` (default ``default``), or ``--namespace``. The secret
itself is never printed. ``status`` with none of those set (or ``--all``)
lists every store of this account on the host instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ._core.errors import ConfigError, SharedMemoryError
from ._runtime.environment import env_bool, env_given, env_str
from ._runtime.processes import pid_alive
from .shm.control import SOURCES, W_FLAGS, W_LAST_PUBLISH, W_SEGMENTS, W_SOURCE, SyncState
from .shm.names import PREFIX, SHM_DIR, StoreNames
from .shm.objects import audit, map_readonly
from .shm.reader import find_control, generation_bytes
from .shm.registry import CLAIMED, SPARE, peek
from .shm.ring import W_PID, W_SERVED, W_STALE_SINCE
from .shm.trust import CONTROL, RING, StoreAccess
from .shm.writer import open_image


def _names(args: argparse.Namespace) -> StoreNames:
    secret = env_str("FEATBIT_ENV_SECRET")
    namespace = args.namespace or env_str("FEATBIT_NAMESPACE")
    return StoreNames.for_env("" if env_bool("FEATBIT_OFFLINE") else secret, namespace)


def read_status(names: StoreNames, now: float | None = None) -> dict[str, Any]:
    """The store's status as a dict (the keys ``status --json`` prints)."""
    now = time.time() if now is None else now
    refused = [vars(r) for r in audit(names)]
    block, _refusal = find_control(names)
    if block is None:
        state = "refused" if any(r["kind"] == CONTROL for r in refused) else "absent"
        return {"state": state, "store": names.tag, "refused": refused, "error": "no control block of this store's account"}
    pointer = block.read_pointer()
    heartbeat = block.heartbeat
    status: dict[str, Any] = {
        "store": names.tag,
        "state": block.state.name,
        "state_since": block.state_since,
        "generation": pointer.generation if pointer else None,
        "data_version": pointer.data_version if pointer else None,
        "flags": int(block.q[W_FLAGS]),
        "segments": int(block.q[W_SEGMENTS]),
        "leader_pid": block.leader_pid,
        "leader_alive": block.leader_alive(now),
        "heartbeat_age_s": round(now - heartbeat, 3) if heartbeat else None,
        "snapshot_name": pointer.name if pointer else None,
        "snapshot_bytes": generation_bytes(names, pointer.name) if pointer and pointer.name else None,
        "root_bytes": pointer.length if pointer else None,
        "last_publish_age_s": round(now - float(block.d[W_LAST_PUBLISH]), 3) if block.d[W_LAST_PUBLISH] else None,
    }
    source = int(block.q[W_SOURCE])
    status["data_source"] = SOURCES[source] if 0 <= source < len(SOURCES) else "unknown"
    for name in ("publishes", "publish_errors", "reconnects"):
        status[name] = block.counter(name)
    # Events: recorded = delivered + waiting + lost (by reason); waiting is exact.
    status["events_recorded"] = block.counter("events_recorded")
    status["events_sent"] = block.counter("events_sent")
    status["events_queued"] = block.counter("events_queued")  # waiting, across every ring
    dropped, no_space = block.counter("events_dropped"), block.counter("events_no_space")
    status["events_lost"] = {
        "ring_full": dropped - no_space,
        "no_space": no_space,
        "too_large": block.counter("events_too_large"),
        "refused": block.counter("events_refused"),
        "malformed": block.counter("events_malformed"),
        "failed": block.counter("events_failed"),  # delivery stopped (401/403), or left at a shutdown deadline
    }
    status["events_dropped"], status["events_failed"] = dropped, block.counter("events_failed")
    status["events_delivery_stopped"] = bool(block.counter("delivery_stopped"))
    status["refused"] = refused  # objects under this store's names it does not trust
    status["namespace"] = block.namespace or None
    error = block.last_error()
    status["last_error"] = error[1] if error else None
    status["last_error_age_s"] = round(now - error[0], 3) if error else None
    status["clients"], status["workers_behind"] = _clients(names, now)
    if not status["leader_alive"]:
        status["problem"] = "no live sync process serves this store: its data is not kept fresh"
    elif status["workers_behind"]:
        status["problem"] = f"{len(status['workers_behind'])} worker(s) cannot map the newest generation and serve older data"
    if pointer is None:
        status["state"] = "torn"  # the sequence stayed odd: the writer died mid-update
    return status


def _clients(names: StoreNames, now: float) -> tuple[int, list[dict[str, Any]]]:
    """(live registered processes, workers that cannot map the newest
    generation), read-only, from the registry and the words each worker
    keeps in its ring (a worker with events disabled has no ring, and is not
    listed as behind)."""
    pids = set()
    behind = []
    for pid, ring_id, state in peek(names):
        if state == SPARE or not pid_alive(pid):
            continue
        pids.add(pid)
        if state != CLAIMED:
            continue
        try:
            mm = map_readonly(names.ring(ring_id), RING, names.access, 4096)
        except (OSError, SharedMemoryError):
            continue  # drained and removed meanwhile
        try:
            words = memoryview(mm).cast("Q")
            since_ms = int(words[W_STALE_SINCE])
            if since_ms and int(words[W_PID]) == pid:
                behind.append({"pid": pid, "generation": int(words[W_SERVED]), "stale_for_s": round(now - since_ms / 1000, 3)})
            words.release()
        finally:
            mm.close()
    return len(pids), behind


def store_tags(access: StoreAccess | None = None) -> list[str]:
    """Tags of every store of this account with a control block in /dev/shm."""
    access = access or StoreAccess.from_env()
    prefix = f"{PREFIX}{access.owner}."
    tags = set()
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    for entry in entries:
        if entry.startswith(prefix):
            tag, _, kind = entry[len(prefix) :].partition(".")
            if kind == "ctl" or kind.startswith("ctl."):
                tags.add(tag)
    return sorted(tags)


def _usable(status: dict[str, Any]) -> bool:
    # Data is there, but nothing keeps it fresh: workers serve what they have
    # and start a sync process after a moment (worker.host); a probe must fail.
    usable = status["state"] in (SyncState.OK.name, SyncState.INTERRUPTED.name) and bool(status.get("generation"))
    return usable and bool(status.get("leader_alive")) and not status.get("workers_behind")


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# (metric, help, type, status key): one sample per store.
_GAUGES = (
    ("featbit_shm_up", "1 when a live sync process serves published data and no worker is behind (the status exit code)", "gauge", None),
    ("featbit_shm_leader_alive", "1 while a live sync process serves the store", "gauge", "leader_alive"),
    ("featbit_shm_heartbeat_age_seconds", "seconds since the sync process's last heartbeat", "gauge", "heartbeat_age_s"),
    ("featbit_shm_last_publish_age_seconds", "seconds since the last snapshot was published", "gauge", "last_publish_age_s"),
    ("featbit_shm_generation", "the snapshot generation workers serve", "gauge", "generation"),
    ("featbit_shm_data_version", "the data version (max updatedAt, ms) of that snapshot", "gauge", "data_version"),
    ("featbit_shm_flags", "active flags in the snapshot", "gauge", "flags"),
    ("featbit_shm_segments", "active segments in the snapshot", "gauge", "segments"),
    ("featbit_shm_snapshot_bytes", "bytes of the current snapshot in /dev/shm", "gauge", "snapshot_bytes"),
    ("featbit_shm_clients", "live processes registered with the store", "gauge", "clients"),
    ("featbit_shm_workers_behind", "workers that cannot map the newest generation", "gauge", "workers_behind"),
    ("featbit_shm_publishes_total", "snapshots published", "counter", "publishes"),
    ("featbit_shm_publish_errors_total", "publishes that failed (retried)", "counter", "publish_errors"),
    ("featbit_shm_reconnects_total", "websocket reconnects", "counter", "reconnects"),
    ("featbit_shm_events_recorded_total", "events recorded by workers", "counter", "events_recorded"),
    ("featbit_shm_events_sent_total", "events FeatBit accepted", "counter", "events_sent"),
    ("featbit_shm_events_queued", "events waiting to be delivered", "gauge", "events_queued"),
)


def prometheus(stores: list[dict[str, Any]]) -> str:
    """Status in the Prometheus text format (one sample per store, labelled
    by store tag and namespace), for node_exporter's textfile collector or a
    sidecar that serves it."""

    def labels(status: dict[str, Any]) -> str:
        return f'store="{_label(status["store"])}",namespace="{_label(status.get("namespace") or "")}"'

    lines: list[str] = []
    for metric, text, kind, key in _GAUGES:
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        for status in stores:
            if key is None:
                value: Any = _usable(status)
            elif key == "workers_behind":
                value = len(status.get(key) or [])
            else:
                value = status.get(key)
            if value is not None:
                lines.append(f"{metric}{{{labels(status)}}} {float(value):g}")
    lines += ["# HELP featbit_shm_state 1 for the sync state the store is in", "# TYPE featbit_shm_state gauge"]
    for status in stores:
        lines += [f'featbit_shm_state{{{labels(status)},state="{name}"}} {int(status["state"] == name)}' for name in ("INITIALIZING", "OK", "INTERRUPTED", "OFF")]
    lines += ["# HELP featbit_shm_events_lost_total events lost, by reason", "# TYPE featbit_shm_events_lost_total counter"]
    for status in stores:
        lines += [f'featbit_shm_events_lost_total{{{labels(status)},reason="{reason}"}} {count}' for reason, count in (status.get("events_lost") or {}).items()]
    return "\n".join(lines) + "\n"


def _print(status: dict[str, Any]) -> None:
    width = max(len(k) for k in status)
    for key, value in status.items():
        print(f"{key:<{width}}  {value}")


def cmd_status(args: argparse.Namespace) -> int:
    chosen = args.namespace or any(env_given(v) for v in ("FEATBIT_ENV_SECRET", "FEATBIT_OFFLINE", "FEATBIT_NAMESPACE"))
    if args.json:
        args.format = "json"
    if args.all or not chosen:
        access = StoreAccess.from_env()
        stores = [read_status(StoreNames(tag, access)) for tag in store_tags(access)]
        if args.format == "prometheus":
            sys.stdout.write(prometheus(stores))
        elif args.json:
            print(json.dumps({"stores": stores}, indent=2, sort_keys=True))
        elif not stores:
            print(f"featbit-shm: no store of uid {access.owner} in {SHM_DIR} (set FEATBIT_ENV_SECRET/FEATBIT_NAMESPACE to name one)")
        for status in stores if args.format == "text" else ():
            print(f"== store {status['store']} (namespace {status.get('namespace')})")
            _print(status)
        return 0 if stores and all(_usable(s) for s in stores) else 1
    status = read_status(_names(args))
    if args.format == "prometheus":
        sys.stdout.write(prometheus([status] if "generation" in status else []))
    elif args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        _print(status)
    return 0 if _usable(status) else 1


def cmd_dump(args: argparse.Namespace) -> int:
    names = _names(args)
    try:
        block, _refusal = find_control(names)
        if block is None:
            print(f"featbit-shm: no control block of store {names.tag}", file=sys.stderr)
            return 1
        pointer = block.read_pointer()
        if pointer is None or not pointer.name:
            print("featbit-shm: nothing is published in this store", file=sys.stderr)
            return 1
        image = open_image(names, pointer.name, pointer.length, pointer.crc)
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        print(f"featbit-shm: cannot read store {names.tag}: {exc}", file=sys.stderr)
        return 1
    if args.flag:
        entity = image.flag(args.flag)
        if entity is None:
            print(f"featbit-shm: no flag {args.flag!r}", file=sys.stderr)
            return 1
        print(json.dumps(entity, indent=2, sort_keys=True))
        return 0
    ds = image.to_dataset()
    print(
        json.dumps(
            {
                "generation": image.generation,
                "data_version": image.data_version,
                "flags": dict(sorted(ds.flags.items())),
                "segments": dict(sorted(ds.segments.items())),
            },
            indent=2,
            sort_keys=True,
        )
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate one flag for one user from the host's store, as a worker would."""
    from .client import FBClient
    from .config import Config

    try:
        user = json.loads(args.user)
    except ValueError as exc:
        print(f"featbit-shm eval: --user is not JSON: {exc}", file=sys.stderr)
        return 2
    if args.namespace:
        os.environ["FEATBIT_NAMESPACE"] = args.namespace
    os.environ["FEATBIT_SHM_AUTOSTART"] = "0"  # a one-shot look, never a new sync process
    os.environ["FEATBIT_SHM_SHARED"] = "1"
    try:
        config = Config.from_env()
        client = FBClient(Config(config.env_secret, config.event_url, config.streaming_url, offline=config.offline,
                                 namespace=config.namespace, shared=True, disable_events=True, start_sync=False),
                          start_wait=args.wait)
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        print(f"featbit-shm eval: {exc}", file=sys.stderr)
        return 2
    detail = client.variation_detail(args.flag, user, None)
    out = detail.to_json_dict(extended=True) | {"generation": client.generation}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0 if detail.variation_id else 1


def cmd_sync(args: argparse.Namespace) -> int:
    from .sync.process import main as sync_main

    if args.namespace:
        os.environ["FEATBIT_NAMESPACE"] = args.namespace
    return sync_main()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="featbit-shm", description="FeatBit flags in shared memory")
    parser.add_argument("--namespace", help="store namespace (default: $FEATBIT_NAMESPACE or 'default')")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="leader, heartbeat, generation and counters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="every store of this account on the host")
    p.add_argument("--format", choices=("text", "json", "prometheus"), default="text", help="output format (--json: json)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("sync", help="run the sync process in the foreground (configured from FEATBIT_*)")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("eval", help="evaluate a flag for a user from the host's store")
    p.add_argument("flag", help="the flag key")
    p.add_argument("--user", required=True, help='the user as JSON, e.g. \'{"key": "u1", "country": "us"}\'')
    p.add_argument("--wait", type=float, default=2.0, help="seconds to wait for data (default 2)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("dump", help="print the current snapshot as JSON")
    p.add_argument("--flag", help="only this flag")
    p.set_defaults(func=cmd_dump)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:  # a bad FEATBIT_* value: say which, no traceback
        print(f"featbit-shm: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
