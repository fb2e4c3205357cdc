"""Servers in child processes for tests (the helper lives in the library, where benchmarks use it too)."""

from chaptering.server_process import free_port, server_process

__all__ = ["free_port", "server_process"]
