"""Servers in child processes for tests (the process helper lives in the library, where benchmarks use it
too), and a Prefect server for a small project: the deployment test and the Prefect UI test share it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from factories import small_project

from chaptering.config import PROJECT_ROOT, Settings
from chaptering.server_process import free_port, server_process

__all__ = ["free_port", "prefect_cli", "prefect_project_server", "server_process"]

BIN = Path(sys.executable).parent


@contextmanager
def prefect_project_server(tmp_path: Path, tiny_dir: Path) -> Iterator[tuple[dict[str, str], str, Settings]]:
    """A real `prefect server` on a free loopback port, for a small project on the tiny model: yields (env
    for the CLI and workers, the server's base URL, the project's settings). The UI is pointed at the same
    port (PREFECT_UI_API_URL), which it would otherwise look for on 4200."""
    settings = small_project(tmp_path, tiny_dir)
    config = tmp_path / "chaptering.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"config_file"})))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"{base}/api",
           "PREFECT_UI_API_URL": f"{base}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "CHAPTERING_CONFIG_FILE": str(config), "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("CHAPTERING_STATE_DIR", None)
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(cmd, f"{base}/api/health", tmp_path / "prefect-server.log", env=env, name="prefect server"):
        yield env, base, settings


def prefect_cli(env: dict[str, str], *args: str, timeout: float) -> str:
    """`prefect ARGS` from the project root; fails the test with its output when it fails."""
    out = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout
