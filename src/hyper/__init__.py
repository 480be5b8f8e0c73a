"""Hyper: run OCI/Docker images inside their own lightweight virtual machines.

The public surface is the `hyper` CLI; the packages below are its layers:
front ends (`hyper.cli`) → runtime (`hyper.runtime`) → `hyper.image`,
`hyper.vm`, `hyper.agent` → `hyper.errors`.
"""

__version__ = "0.1.0"
