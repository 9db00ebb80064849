"""What a process learns from the server it runs in, when the server's
integration cannot tell it through the environment."""

from __future__ import annotations

import os
import sys

#: How a uWSGI config names featbit_shm's mule: by its file (the current
#: path, or the former one) or by its module.
_MULE_FILES = ("featbit_shm/integrations/uwsgi_mule.py", "featbit_shm/uwsgi_mule.py")
_MULE_MODULE = "featbit_shm.integrations.uwsgi_mule:"


def runs_featbit_mule() -> bool:
    """True in a process of a uWSGI server that runs featbit_shm's mule
    (``mule = .../featbit_shm/integrations/uwsgi_mule.py``).

    The mule starts the host's sync process, but it is a sibling of the
    workers, forked after them: unlike the gunicorn master it cannot put
    ``FEATBIT_SHM_SHARED=1`` into their environment. uWSGI's options,
    which every process of the server sees as ``uwsgi.opt``, tell them.
    """
    options = getattr(sys.modules.get("uwsgi"), "opt", None)
    if not isinstance(options, dict):
        return False
    mules = options.get("mule")
    for value in mules if isinstance(mules, list) else [mules]:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
        text = text.strip().replace(os.sep, "/")
        if text.endswith(_MULE_FILES) or text.startswith(_MULE_MODULE):
            return True
    return False
