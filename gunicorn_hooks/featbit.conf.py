"""A complete gunicorn config for featbit_shm, as a file (from a checkout).

    gunicorn -c gunicorn_hooks/featbit.conf.py app:app

The same settings as the importable module ``gunicorn_hooks.conf``
(``gunicorn -c python:gunicorn_hooks.conf app:app``, which works from an
install); see it for the variables.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gunicorn_hooks.conf import *  # noqa: F403
