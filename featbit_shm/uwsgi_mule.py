"""The uWSGI mule's former path, kept so existing ``mule = .../featbit_shm/uwsgi_mule.py``
lines keep working: it runs :mod:`featbit_shm.integrations.uwsgi_mule`."""

import sys

if __name__ == "__main__" or "uwsgi" in sys.modules:
    from featbit_shm.integrations.uwsgi_mule import run

    sys.exit(run())
