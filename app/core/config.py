"""One settings object for the whole service, read from the environment (docs/api.md names)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository root; relative defaults (``var/...``) are resolved from here.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
VAR = PROJECT_ROOT / "var"


class Settings(BaseSettings):
    """Service configuration. Environment variable names are the contract in docs/api.md."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    port: int = Field(8000, description="Port `make run` serves on (127.0.0.1).")
    database_url: str = Field(f"sqlite:///{VAR / 'p2law.sqlite3'}", description="SQLAlchemy URL.")
    redis_url: str | None = Field(None, description="Broker URL; unset = embedded broker.")
    broker_dir: Path = Field(VAR / "broker", description="Folder of the embedded broker.")
    model_root: Path = Field(VAR / "models", description="Job model paths resolve inside it.")
    data_root: Path = Field(VAR / "data", description="Job dataset paths resolve inside it.")
    artifact_root: Path = Field(VAR / "artifacts", description="Pruned models are saved here.")
    api_key: str | None = Field(None, description="When set, write routes need X-API-Key.")
    allow_hub_models: bool = Field(
        False, description="Accept hub ids (org/name) as job models; off: no hub is reachable."
    )

    max_body_bytes: int = Field(32 * 1024 * 1024, description="Largest accepted request body.")
    max_points: int = Field(100_000, description="Most points in one /predict request.")
    max_observations_per_upload: int = Field(200_000)

    job_lease_s: float = Field(120.0, description="A running job's lease; renewed at heartbeats.")
    job_max_attempts: int = Field(3, description="Attempts before a job is failed for good.")
    worker_devices: int | None = Field(
        None,
        ge=1,
        description=(
            "Devices this worker may give one job (devices > 1 runs sharded training): GPUs "
            "(capped by those visible), or CPU processes. Unset: every visible GPU, or every core."
        ),
    )
    job_time_limit_s: int = Field(
        24 * 3600,
        ge=1,
        description=(
            "Time limit of one job attempt: near it the attempt saves its state, releases the job "
            "and sends it again, and the next attempt goes on from there (jobs of any length)."
        ),
    )
    dist_timeout_s: float = Field(
        1800.0,
        gt=0,
        description=(
            "Collective timeout of a multi-device job's process group: how long a rank may wait "
            "for the others inside one collective before the group is relaunched."
        ),
    )
    device_memory_gib: float = Field(
        80.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Memory of one training device in GiB: a job whose estimated peak per device (plus "
            "a margin) exceeds it is refused at submission, unless it names its own "
            "device_memory_gib."
        ),
    )
    reaper_interval_s: float = Field(30.0, description="How often expired leases are reaped.")
    load_reference: bool = Field(
        True,
        description="`p2law migrate` (and `make run`) load the reference laws into an empty "
        "database (app/reference/); false leaves a new database empty.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache after changing the env)."""
    return Settings()
