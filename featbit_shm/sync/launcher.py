"""Start a sync process from an app process (gunicorn master, a client).

The sync process is always a fresh interpreter (``subprocess``), never a
``fork()`` of the app: a forked copy would inherit the app's threads, locks
and sockets in whatever state they were. Its configuration, the secret
included, goes through the environment, never argv (R-77).
"""

from __future__ import annotations

import os
import subprocess
import sys

from .settings import SyncSettings


def python_executable() -> str:
    """The Python interpreter to start: ``sys.executable`` -- except inside
    uWSGI, where that is the uwsgi binary."""
    exe = sys.executable or ""
    if exe and not os.path.basename(exe).startswith("uwsgi"):
        return exe
    for name in ("python3", "python"):
        candidate = os.path.join(sys.prefix, "bin", name)
        if os.access(candidate, os.X_OK):
            return candidate
    return "python3"


def spawn_sync_process(settings: SyncSettings, *, owner_pid: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m featbit_shm.sync`` for these settings.

    With ``owner_pid`` the sync process (and its standby) exit within a
    second once that process is gone. The child runs in its own session so a
    terminal's Ctrl-C reaches it only through its owner's shutdown.
    """
    env = dict(os.environ)
    env.update(settings.to_env())
    if owner_pid:
        env["FEATBIT_SHM_OWNER_PID"] = str(owner_pid)
    return subprocess.Popen(
        [python_executable(), "-m", "featbit_shm.sync"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # never hold the parent's stdout open (pipes, CGI, tests)
        start_new_session=True,
        close_fds=True,
    )


def stop_sync_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM (a clean stop: final event drain, objects removed), then SIGKILL
    if it has not exited within ``timeout``. Returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)
