"""PostgreSQL tests: each gets a database of its own on a real server (see tests/pg.py)."""

from pg import pg_server, pg_url  # noqa: F401 - fixtures, registered by being imported here
