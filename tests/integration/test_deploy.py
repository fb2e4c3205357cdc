"""The README's deployment sequence against a real Prefect server on a free loopback port:
create the process pool, `prefect deploy --all` from prefect.yaml, trigger `retrain`, let a worker
run it, then read the flow run's state and its summary artifact back through the Prefect API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from factories import small_project
from servers import free_port, server_process

from chaptering.config import PROJECT_ROOT

BIN = Path(sys.executable).parent


@pytest.fixture
def server_env(tmp_path: Path, tiny_dir: Path):
    settings = small_project(tmp_path, tiny_dir)
    config = tmp_path / "chaptering.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"config_file"})))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "CHAPTERING_CONFIG_FILE": str(config),
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("CHAPTERING_STATE_DIR", None)
    with server_process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                        f"{api}/health", tmp_path / "server.log", env=env, name="prefect server"):
        yield env, api, settings


def _prefect(env: dict, *args: str, timeout: float = 120) -> str:
    out = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


async def _flow_run_and_artifacts(api: str, deployment: str):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterName,
    )

    async with PrefectClient(api) as client:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))
        assert len(runs) == 1
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
        return runs[0], arts


def test_deploy_and_run_through_a_worker(server_env) -> None:
    env, api, settings = server_env
    _prefect(env, "work-pool", "create", "chaptering-pool", "--type", "process")
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    assert "nightly-retrain/nightly-retrain" in deployed and "nightly-retrain/retrain" in deployed
    _prefect(env, "deployment", "run", "nightly-retrain/retrain", "--param", "max_steps=1")
    _prefect(env, "worker", "start", "--pool", "chaptering-pool", "--run-once", timeout=600)

    run, artifacts = asyncio.run(_flow_run_and_artifacts(api, "retrain"))
    assert run.state.is_completed(), f"flow run ended {run.state.name}: {run.state.message}"
    summary = [a for a in artifacts if a.key == "nightly-summary"]
    assert summary and "Decision" in summary[0].data
    assert (settings.state_dir / "corpus" / "curated.jsonl").is_file()  # the worker wrote where the config said
