"""The pure core: no I/O, no threads, no clock. Everything here is a function of its inputs."""
