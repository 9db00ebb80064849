"""Only the optional C extension lives here; everything else is in pyproject.toml.

``featbit_shm.shm._fastring`` is the event ring's fast path for evaluation
events. It is optional: without a C compiler the build goes on and
``featbit_shm.shm.ring`` uses its pure-Python path (same bytes, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "featbit_shm.shm._fastring",
            sources=["featbit_shm/shm/_fastring.c"],
            optional=True,
        )
    ]
)
