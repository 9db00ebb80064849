"""Public test helpers: wire-JSON builders (and, later, a FeatBit stand-in server).

Users test their own apps with these, and featbit_shm's own tests use them too.
"""

from . import builders

__all__ = ["builders"]
