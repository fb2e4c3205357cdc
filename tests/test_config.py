"""Settings precedence (defaults < YAML file < CHAPTERING_* env < --set) and the named scenarios in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chaptering import config
from chaptering.config import PROJECT_ROOT, Settings, apply_overrides, get_settings, use_config_file

CONFIGS = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("CHAPTERING_CONFIG_FILE", raising=False)
    monkeypatch.delenv("CHAPTERING_TRAIN__MAX_STEPS", raising=False)
    yield
    use_config_file(None)


def test_file_then_env_then_overrides(tmp_path: Path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_steps: 7\n  learning_rate: 0.001\nmodel:\n  kind: llm\n")
    use_config_file(f)
    s = get_settings()
    assert (s.train.max_steps, s.train.learning_rate, s.model.kind) == (7, 0.001, "llm")
    monkeypatch.setenv("CHAPTERING_TRAIN__MAX_STEPS", "9")
    get_settings.cache_clear()
    s = get_settings()
    assert s.train.max_steps == 9 and s.train.learning_rate == 0.001  # env beats the file, key by key
    s = apply_overrides(s, ["train.max_steps=11"])
    assert s.train.max_steps == 11 and s.model.kind == "llm"


def test_the_cli_option_wins_over_the_env_var(tmp_path: Path, monkeypatch):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("train:\n  max_steps: 1\n")
    b.write_text("train:\n  max_steps: 2\n")
    monkeypatch.setenv("CHAPTERING_CONFIG_FILE", str(a))
    get_settings.cache_clear()
    assert get_settings().train.max_steps == 1
    use_config_file(b)
    assert get_settings().train.max_steps == 2


def test_missing_config_file_is_a_clear_cli_error(tmp_path: Path):
    from typer.testing import CliRunner

    from chaptering.cli import app

    result = CliRunner().invoke(app, ["--config", str(tmp_path / "nope.yaml"), "models"])
    assert result.exit_code == 2 and "nope.yaml" in result.output and "does not exist" in result.output


def _unknown_keys(data: dict, model: type, prefix: str = "") -> list[str]:
    bad = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            bad.append(prefix + key)
        elif isinstance(value, dict) and hasattr(field.annotation, "model_fields"):
            bad += _unknown_keys(value, field.annotation, f"{prefix}{key}.")
    return bad


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_named_scenarios_are_valid_settings(path: Path):
    data = yaml.safe_load(path.read_text())
    assert _unknown_keys(data, Settings) == [], "a misspelt key would be silently ignored"
    Settings.model_validate(data)
    use_config_file(path)
    assert config.get_settings().model_dump()  # loads through the same path as the CLI


def test_scenarios_exist():
    assert {"embedded.yaml", "llm-chapterer.yaml", "gpu-qwen.yaml", "production.yaml"} <= {p.name for p in CONFIGS}
