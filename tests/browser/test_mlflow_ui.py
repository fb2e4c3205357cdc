"""The MLflow UI in Chromium, against a real `mlflow server` holding two versions registered by the
project's own registry code: the registered model page shows the aliases and the few readable tags, and
the comparison views line the two candidates' metrics up per domain, with the gate's decision and the
plots side by side. Every check reads the page's text; the screenshots are for docs/ui.md."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from factories import scored_report
from servers import free_port, server_process

from chaptering import registry
from chaptering.config import ModelSettings, Settings
from chaptering.evaluate import Report, plot_compare
from chaptering.gate import gate

from .chromium import Page, missing

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing() is not None, reason=f"{missing()}")]

DOMAINS = ("short", "talks", "meetings")


def _report(name: str, f1: float, pk: float, b: float) -> Report:
    """Three domains of 12 transcripts, primary F1 spread around `f1` (talks a bit lower, meetings higher)."""
    spread = [f1 + 0.1 * ((i % 5) - 2) / 2 for i in range(12)]
    return scored_report(name, {"short": spread, "talks": [x - 0.05 for x in spread],
                                "meetings": [x + 0.04 for x in spread]}, pk=pk, b=b, unusable=0.0)


@pytest.fixture
def mlflow_url(tmp_path: Path) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts"]
    with server_process(cmd, f"{url}/health", tmp_path / "mlflow.log", cwd=tmp_path, name="mlflow server"):
        yield url


@pytest.fixture
def two_versions(mlflow_url: str, tmp_path: Path, tiny_dir: Path, adapter_dir: Path, monkeypatch):
    """v1 beats the baselines and is promoted; v2 trails v1 on the headline and is refused: `champion`
    stays on v1, `challenger` is on v2. Returns (settings, [v1, v2] candidates)."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    s = Settings(state_dir=tmp_path / "client", mlflow_tracking_uri=mlflow_url,
                 model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=16)).prepare()
    registry.configure(s)
    baseline = _report("baseline:equal", 0.10, pk=0.45, b=0.15)
    first, second = _report("v1", 0.32, pk=0.33, b=0.30), _report("v2", 0.28, pk=0.36, b=0.27)
    candidates = []
    for i, (rep, ref) in enumerate([(first, baseline), (second, first)], start=1):
        plot = plot_compare([ref, rep], tmp_path / f"plots-{i}" / "compare.png")
        with mlflow.start_run(run_name=f"train-night-{i}"):  # as the pipeline's train stage names its runs
            cand = registry.log_candidate(adapter_dir, s.model.base, rep, params={"lora_r": 4 * i},
                                          tags={"dataset_fingerprint": f"ds-{i}{i}{i}{i}", "train_config": f"cfg-{i}"},
                                          plots=[plot], settings=s)
        verdict = gate(rep, registry.champion_report(s), [baseline], s.gate)
        registry.decide_and_promote(cand.version, verdict, s)
        candidates.append(cand)
    assert registry.champion_version(s) == "1"
    return s, candidates


def _open(page: Page, base: str, route: str) -> None:
    """Open a route with the assistant panel closed and the sidebar in 'Model training' mode (both are
    remembered in local storage, so set them on the origin first, then load the page afresh)."""
    page.open(f"{base}/")
    page.driver.execute_script(
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        "localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));")
    page.open(f"{base}/#{route}")
    page.driver.refresh()


def _row(page: Page, version: str) -> str:
    """Text of the versions-table row of `Version N`."""
    el = page.element(f"//a[normalize-space(.)='Version {version}']/ancestor::*[@role='row'][1]")
    return re.sub(r"\s+", " ", el.text)


def _metrics_grid(page: Page) -> dict[str, list[str]]:
    """The compare view's metrics table, {metric: [value per run]}. It is a virtualised grid of names beside
    a grid of values (only the rows in view exist), so scroll both through and line cells up by offset."""
    read = """
        const grids = [...document.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')];
        const metric = t => ['headline', 'f1/', 'pk/', 'boundary_similarity/'].some(m => t.startsWith(m));
        const i = grids.findIndex(g => [...g.children].some(c => metric(c.innerText.trim())));
        if (i < 0 || i + 1 >= grids.length) return null;
        const [names, values] = [grids[i], grids[i + 1]].map(g => g.parentElement);
        if (arguments[0] !== null) { names.scrollTop = arguments[0]; values.scrollTop = arguments[0]; }
        return {height: names.scrollHeight, step: names.clientHeight,
                names: [...names.firstChild.children].map(c => [c.style.top, c.innerText.trim()]),
                values: [...values.firstChild.children].map(c => [c.style.top, c.innerText.trim()])};"""
    out: dict[str, list[str]] = {}
    grid, offset = page.driver.execute_script(read, None), 0
    while grid is not None:
        by_top: dict[str, list[str]] = {}
        for top, text in grid["values"]:
            by_top.setdefault(top, []).append(text)
        out.update({text: by_top[top] for top, text in grid["names"] if by_top.get(top)})
        offset += max(grid["step"] // 2, 20)
        if offset >= grid["height"]:
            break
        grid = page.driver.execute_script(read, offset)
        time.sleep(0.3)
        grid = page.driver.execute_script(read, None)
    return out


def _run_metric(settings: Settings, run_id: str, key: str) -> float:
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri).get_run(run_id).data.metrics[key]


def test_registered_model_and_comparison_views(page: Page, mlflow_url: str, two_versions) -> None:
    settings, (v1, v2) = two_versions
    _open(page, mlflow_url, f"/models/{settings.registered_model}")
    page.wait_text("Version 1", "Version 2", "champion", "challenger")
    row1, row2 = _row(page, "1"), _row(page, "2")
    assert "@ champion" in row1 and "challenger" not in row1, row1
    assert "@ challenger" in row2 and "champion" not in row2.replace("vs champion", ""), row2
    for key in ("base_model", "dataset_fingerprint", "eval_fingerprint"):
        assert key in row1 and key in row2
    assert "decision : promoted" in row1 and "decision : rejected" in row2
    assert "ds-1111" in row1 and "ds-2222" in row2
    assert "metric." not in page.text(), "evaluation figures must be run metrics, not version tags"
    page.shot("mlflow-registered-model")

    # Compare from the registered model page: both versions' run metrics, per domain, side by side
    for version in ("1", "2"):
        page.click_hidden(f"//a[normalize-space(.)='Version {version}']/ancestor::*[@role='row'][1]//input[@type='checkbox']")
    page.click("//button[normalize-space(.)='Compare']")
    text = page.wait_text("Comparing 2 Versions", r"Metrics", r"headline 0\.3\d* 0\.2\d*")
    for d in DOMAINS:
        assert f"f1/{d}" in text and f"pk/{d}" in text and f"boundary_similarity/{d}" in text, d
    page.scroll_to("//*[normalize-space(text())='Metrics']")
    page.shot("mlflow-compare-versions")

    # The run comparison view, from the experiment's runs table: metrics, the decision tag, the plots
    _open(page, mlflow_url, "/experiments")
    page.click("//a[normalize-space(.)='chaptering']")
    page.wait_text("2 matching runs", "train-night-1", "train-night-2")
    boxes = page.until(lambda: [b for b in page.driver.find_elements(
        "css selector", ".ag-row .ag-selection-checkbox .ag-checkbox-input-wrapper") if b.is_displayed()][:2]
        if len(page.driver.find_elements("css selector", ".ag-row .ag-selection-checkbox")) >= 2 else None,
        "the runs table's row checkboxes")
    for box in boxes:
        box.click()
    page.click("//button[normalize-space(.)='Compare']")
    text = page.wait_text("Comparing 2 Runs", "Tags", r"decision (promoted rejected|rejected promoted)")
    runs = page.driver.current_url
    assert v1.run_id in runs and v2.run_id in runs
    metrics = page.until(lambda: _metrics_grid(page), "the metrics table of the compare view")
    left, right = ((v1, v2) if runs.index(v1.run_id) < runs.index(v2.run_id) else (v2, v1))
    for key in ("headline", *(f"{m}/{d}" for d in DOMAINS for m in ("f1", "pk", "boundary_similarity"))):
        expected = [_run_metric(settings, c.run_id, key) for c in (left, right)]
        assert [float(v) for v in metrics[key]] == pytest.approx(expected, abs=1e-3), key
    page.driver.refresh()  # the grids were scrolled apart while reading them: start the screenshot afresh
    page.wait_text("Comparing 2 Runs", "Metrics", "f1/short")
    page.scroll_to("//*[normalize-space(text())='Metrics']")
    page.shot("mlflow-compare-runs-metrics")

    page.scroll_to("//*[normalize-space(text())='Artifacts']")
    page.click_hidden("//*[normalize-space(text())='decision.md']")  # the file list is squeezed to a sliver
    page.wait_text("Version 1: promoted to champion", "Version 2: rejected: champion unchanged",
                   r"FAIL: headline 0\.26\d vs champion 0\.30\d")
    page.scroll_to("//*[normalize-space(text())='Artifacts']")
    page.shot("mlflow-compare-runs-decision")

    page.click_hidden("//*[normalize-space(text())='compare.png']")  # the file list is squeezed to a sliver
    def both_rendered() -> list | None:
        """The rendered plots once there are two: the second run's can load a moment after the first."""
        got = [i for i in page.driver.find_elements("css selector", "img[src*='compare.png'], img[src^='blob:']")
               if i.is_displayed() and page.driver.execute_script("return arguments[0].naturalWidth", i) > 0]
        return got if len(got) >= 2 else None

    images = page.until(both_rendered, "both runs' compare.png rendered")
    assert len(images) >= 2, "one plot per run, side by side"
    page.scroll_to("//*[normalize-space(text())='Artifacts']")
    page.shot("mlflow-compare-runs-plots")
