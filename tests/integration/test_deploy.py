"""The README's deployment sequence against a real Prefect server on a free loopback port:
create the process pool, `prefect deploy --all` from prefect.yaml, trigger `retrain`, let a worker
run it, then read the flow run's state and its summary artifact back through the Prefect API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from servers import prefect_cli, prefect_project_server


@pytest.fixture
def server_env(tmp_path: Path, tiny_dir: Path):
    with prefect_project_server(tmp_path, tiny_dir) as (env, base, settings):
        yield env, f"{base}/api", settings


def _prefect(env: dict, *args: str, timeout: float = 120) -> str:
    return prefect_cli(env, *args, timeout=timeout)


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
