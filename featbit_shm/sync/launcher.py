"""Start a sync process from an app process (gunicorn master, a mule, a client).

The sync process is always a fresh interpreter, never a ``fork()`` of the
app: a forked copy would inherit the app's threads, locks and sockets in
whatever state they were. Its configuration, the secret included, goes
through the environment, never argv (R-77). It is started as a proper
daemon, holding nothing of its caller:

* stdin and stdout on /dev/null, stderr on ``FEATBIT_SHM_LOG_FILE`` (appended)
  or /dev/null: a script whose output is captured (``subprocess.run(...,
  capture_output=True)``, ``| cat``) returns when it ends, and a reader that
  stops reading never freezes the sync process in ``write()``;
* cwd ``/``, a session of its own, only the environment it needs (FEATBIT_*,
  PYTHON*, locale, PATH, HOME, proxies and CA bundles), no inherited
  descriptor; the signal mask and handlers are reset when it starts
  (:func:`featbit_shm.sync.process.main`).

Two ways to start one:

* :func:`spawn_sync_process` -- a child its starter owns and stops (the
  gunicorn master, a uWSGI mule, a leader's standby): the starter reaps it;
* :func:`start_detached` -- a process nobody waits for (a client's autostart,
  a worker healing a host with no sync process): started through ``/bin/sh``
  in the background, so it is never a child -- nor a zombie -- of the app.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from .._runtime.environment import env_str
from .settings import SyncSettings

_KEEP = frozenset(
    {
        "PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    }
)  # fmt: skip
_KEEP_PREFIXES = ("FEATBIT_", "PYTHON", "LC_")


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


def sync_environment(settings: SyncSettings, owner_pid: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a sync process: what it needs of ``base``
    (the caller's environment) and its settings' variables."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in _KEEP or k.startswith(_KEEP_PREFIXES)}
    env.update(settings.to_env())
    if owner_pid:
        env["FEATBIT_SHM_OWNER_PID"] = str(owner_pid)
    return env


def _stderr_target() -> int:
    """Where a sync process's log goes: ``FEATBIT_SHM_LOG_FILE``, else nowhere."""
    path = env_str("FEATBIT_SHM_LOG_FILE")
    if path:
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            pass  # an unusable log file must not keep flags from syncing
    return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def spawn_sync_process(settings: SyncSettings, *, owner_pid: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m featbit_shm.sync`` as a child the caller owns.

    With ``owner_pid`` the sync process (and its standby) exit within a
    second once that process is gone. The child runs in its own session so a
    terminal's Ctrl-C reaches it only through its owner's shutdown.
    """
    stderr = _stderr_target()
    try:
        return subprocess.Popen(
            [python_executable(), "-m", "featbit_shm.sync"],
            env=sync_environment(settings, owner_pid),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(stderr)


def start_detached(settings: SyncSettings, *, owner_pid: int | None = None, timeout: float = 5.0) -> int:
    """Start a sync process nobody waits for; its pid.

    ``/bin/sh`` starts it in the background and exits at once (the caller
    reaps the shell within milliseconds), so the sync process is re-parented
    to init: never a zombie of the app, whatever the app does with SIGCHLD.
    """
    stderr = _stderr_target()
    try:
        # The shell's stderr is the log target, and its background job
        # inherits it; stdout carries the job's pid back, then closes.
        shell = subprocess.Popen(
            ["/bin/sh", "-c", '"$0" -m featbit_shm.sync </dev/null >/dev/null & echo $!', python_executable()],
            env=sync_environment(settings, owner_pid),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd="/",
            start_new_session=True,
        )
    finally:
        os.close(stderr)
    out, _ = shell.communicate(timeout=timeout)
    return int(out.strip() or 0)


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
