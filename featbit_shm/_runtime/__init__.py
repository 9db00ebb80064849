"""Process-level facilities every runtime package shares, below the shared
memory, worker and sync packages: whether a pid is alive, rate-limited
warnings, reading a user's file. No shared memory, no sockets here.
"""
