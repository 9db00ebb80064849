"""Only the optional C extensions live here; everything else is in pyproject.toml.

``featbit_shm.shm._fastring`` is the event ring's fast path for evaluation
events, ``featbit_shm._core._fastuser`` the fast path of the user check of
every evaluation, ``featbit_shm._core._untrack`` takes compiled flags out of
the cycle collector's view (``model.settle``). All are optional: without a C compiler the build goes on
and ``featbit_shm.shm.ring`` and ``featbit_shm._core.user`` use their
pure-Python paths (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "featbit_shm.shm._fastring",
            sources=["featbit_shm/shm/_fastring.c"],
            optional=True,
        ),
        Extension(
            "featbit_shm._core._fastuser",
            sources=["featbit_shm/_core/_fastuser.c"],
            optional=True,
        ),
        Extension(
            "featbit_shm._core._untrack",
            sources=["featbit_shm/_core/_untrack.c"],
            optional=True,
        ),
    ]
)
