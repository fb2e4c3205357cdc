"""The Prefect UI in Chromium, against a real `prefect server` on a free loopback port with the project's
deployments (`prefect deploy --all` from prefect.yaml): the Deployments page lists `nightly-retrain` with
its schedule and `retrain`; a custom run of `retrain` with a changed `max_steps`, started from the UI,
reaches a process worker, completes on the tiny model, and its `nightly-summary` artifact shows in the UI.

The UI asks the API at `PREFECT_UI_API_URL` (port 4200 when unset), so the server gets it for its own port.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from servers import prefect_cli, prefect_project_server

from .chromium import Page, missing

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing() is not None, reason=f"{missing()}")]

@pytest.fixture
def prefect_server(tmp_path: Path, tiny_dir: Path):
    """(env for the CLI and the worker, UI base URL, settings the worker's flow runs with)."""
    with prefect_project_server(tmp_path, tiny_dir) as (env, base, settings):
        _prefect(env, "work-pool", "create", "chaptering-pool", "--type", "process")
        _prefect(env, "--no-prompt", "deploy", "--all")
        yield env, base, settings


def _prefect(env: dict, *args: str, timeout: float = 180) -> str:
    return prefect_cli(env, *args, timeout=timeout)


def _row(page: Page, name: str) -> str:
    el = page.element(f"//tr[.//a[normalize-space(.)='{name}']]")
    return re.sub(r"\s+", " ", el.text)


def test_deployments_and_a_custom_run_from_the_ui(page: Page, prefect_server) -> None:
    env, base, settings = prefect_server
    page.open(f"{base}/deployments")
    page.wait_text("2 Deployments", "nightly-retrain", "retrain", "At 02:00 AM every day")
    nightly, manual = _row(page, "nightly-retrain"), _row(page, "retrain")
    assert "At 02:00 AM every day" in nightly and "nightly" in nightly, nightly
    assert "manual" in manual and "At 02:00" not in manual, manual
    page.shot("prefect-deployments")

    # a custom run of `retrain`: the form lists the flow's parameters; max_steps goes from None to 1
    page.click("//a[normalize-space(.)='retrain']")
    page.wait_text("Entrypoint", "flows/nightly.py:nightly_retrain")
    page.click("//button[normalize-space(.)='Run']")
    page.click("(//*[normalize-space(.)='Custom run'])[last()]")
    page.wait_text("Parameters", r"max_steps \(Optional\)", "Submit")
    block = "//*[normalize-space(text())='max_steps (Optional)']/ancestor::*[.//button[normalize-space(.)='int']][1]"
    page.click(f"{block}//button[normalize-space(.)='int']")
    field = page.element("//*[normalize-space(text())='max_steps (Optional)']/ancestor::*[.//input][1]//input")
    field.send_keys("1")
    page.scroll_to("//*[normalize-space(text())='Parameters']")
    page.shot("prefect-custom-run")
    page.click("//button[normalize-space(.)='Submit']")
    page.wait_text("scheduled to start now")
    page.click("(//*[normalize-space(.)='View run'])[last()]")
    page.until(lambda: "/runs/flow-run/" in page.driver.current_url, "the flow run's page")
    flow_run_id = page.driver.current_url.rstrip("/").split("/runs/flow-run/")[1].split("?")[0]

    # a process worker picks the run up and runs it on the tiny model (the config file names its state)
    _prefect(env, "worker", "start", "--pool", "chaptering-pool", "--run-once", timeout=900)
    run = _flow_run(base, flow_run_id)
    assert run.state.is_completed(), f"flow run ended {run.state.name}: {run.state.message}"
    assert run.parameters.get("max_steps") == 1, run.parameters
    from mlflow import MlflowClient

    trained = MlflowClient(settings.tracking_uri).search_runs(
        [MlflowClient(settings.tracking_uri).get_experiment_by_name("chaptering").experiment_id])
    assert any(r.data.params.get("train.max_steps") == "1" for r in trained), "the UI's max_steps reached training"

    page.driver.refresh()
    page.wait_text("Completed", "nightly-retrain")
    page.shot("prefect-flow-run")
    page.click_hidden("//li[contains(@class, 'p-tab')][normalize-space(.)='Parameters']")
    page.wait_text(r"max_steps\W+1\b")
    page.shot("prefect-flow-run-parameters")
    page.click_hidden("//li[contains(@class, 'p-tab')][normalize-space(.)='Artifacts']")
    page.wait_text("nightly-summary")
    page.click("(//*[normalize-space(text())='nightly-summary'])[last()]")
    page.wait_text("Decision", "nightly-summary")
    page.shot("prefect-summary-artifact")


def _flow_run(base: str, flow_run_id: str):
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def read():
        async with PrefectClient(f"{base}/api") as client:
            return await client.read_flow_run(flow_run_id)

    return asyncio.run(read())
