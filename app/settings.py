"""All runtime configuration, read once from `SHARP_*` environment variables.

Every knob of the service lives here so that the CLI, the HTTP app, Docker and Modal
read the same names. See the README's "Configuration" table for each variable.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.model.presets import PresetName, get_preset
from app.vocabulary import DeviceName, DTypeName


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/sharp-serve`, else `~/.cache/sharp-serve`."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sharp-serve"


class Settings(BaseSettings):
    """Typed settings; each field `name` is read from the variable `SHARP_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SHARP_", case_sensitive=False, extra="ignore")

    # Model
    preset: PresetName = "sharp"
    checkpoint: Path | None = None
    checkpoint_url: str | None = None
    """None: the preset's official checkpoint (`app.model.presets`)."""
    checkpoint_sha256: str | None = None
    cache_dir: Path = Field(default_factory=default_cache_dir)
    offline: bool = False
    device: DeviceName = "auto"
    dtype: DTypeName = "float32"

    # HTTP service
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_mb: float = Field(default=25.0, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)
    max_queue: int = Field(default=8, ge=0)
    upload_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait, in seconds, for the next piece of an upload's body before answering 408."""
    upload_deadline_s: float = Field(default=300.0, gt=0)
    """Longest time, in seconds, a whole upload's body may take (a body dripped a byte at a time never stalls
    for `upload_timeout_s`); past it, 408."""
    api_key: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "info"

    # Jobs (`POST /jobs`)
    jobs_dir: Path | None = None
    """None: `<cache_dir>/jobs` (see `jobs_path`)."""
    job_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    jobs_max_bytes: int = Field(default=2 * 1024**3, gt=0)
    jobs_max_queued: int = Field(default=100, ge=1)
    job_max_run_s: float = Field(default=3600.0, gt=0)
    """Longest time, in seconds, one job may run (from its start; the worker's CPU or GPU is its own meanwhile):
    past it the job fails `job_too_long` at its next step (a network block, a frame, a render's frame)."""
    jobs_encode_ahead: bool = True
    """A photo's job with several outputs makes its first one, succeeds, then encodes the others one by one
    from its kept prediction (`app.jobs.lazy`); False: each of the others only when first downloaded."""
    job_file_wait_s: float = Field(default=30.0, gt=0)
    """Longest a download of a job's output still being encoded waits for it, in seconds; then 503
    `result_encoding` with Retry-After (the encode goes on)."""

    # Video (`app.video`, `app.sequence`): a clip's limits; the defaults finish in minutes on 2 CPU cores
    # with the tiny preset (about 3 s a frame).
    video_max_duration_s: float = Field(default=120.0, gt=0)
    """Longest selected part of a clip (end - start), in seconds."""
    video_max_frames: int = Field(default=120, ge=1)
    """Most frames one clip may turn into scenes."""
    video_max_pixels: int = Field(default=3840 * 2160, gt=0)
    """Largest frame (width x height) of a clip."""
    video_chunk_frames: int = Field(default=8, ge=1)
    """On Modal: a clip job's frames go to GPU containers in runs of this many (`app.sequence.fanout`); the
    job's own container predicts the first run. A clip of at most this many frames stays in one container."""
    video_parallel_chunks: int = Field(default=4, ge=0)
    """On Modal: the most runs of a clip job's frames predicted in other GPU containers at once (0: none)."""
    video_chunk_wait_s: float = Field(default=120.0, gt=0)
    """On Modal: the longest a run of frames sent to another GPU container may take, in seconds from when it
    was queued (Modal's queue included); past it the job's container takes it back (cancels the call),
    predicts its frames itself and sends no more runs out."""

    # Webhooks (`app.jobs.webhooks`): a job's events POSTed, signed, to its `webhook_url`
    webhook_secret: SecretStr | None = None
    """`whsec_` + base64 of 24 to 64 random bytes: the Standard Webhooks signing key. None: `webhook_url` is
    refused (422 `webhooks_disabled`)."""
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Host names or addresses a webhook may target although they resolve to a private, loopback or link-local
    address (comma-separated: `127.0.0.1,hooks.internal`); every other such target is refused."""

    @field_validator("cors_origins", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("checkpoint_sha256", "checkpoint", "checkpoint_url", "api_key", "jobs_dir",
                     "webhook_secret", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret = value.get_secret_value()
            try:
                key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except ValueError:
                key = b""
            if not secret.startswith("whsec_") or not 24 <= len(key) <= 64:
                raise ValueError("must be whsec_ followed by the base64 of 24 to 64 random bytes, e.g. "
                                 "whsec_$(openssl rand -base64 32)")
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [host.strip().strip("[]").lower() for host in value]

    @property
    def weights_url(self) -> str | None:
        """The checkpoint URL to use: `SHARP_CHECKPOINT_URL`, else the preset's official one (None for `tiny`)."""
        return self.checkpoint_url or get_preset(self.preset).checkpoint_url

    @property
    def weights_sha256(self) -> str | None:
        """`SHARP_CHECKPOINT_SHA256`, else the preset's published digest when its official URL is used."""
        if self.checkpoint_sha256 or self.checkpoint_url:
            return self.checkpoint_sha256
        return get_preset(self.preset).checkpoint_sha256

    @property
    def jobs_path(self) -> Path:
        """Where jobs keep their state and results: `SHARP_JOBS_DIR`, else `<SHARP_CACHE_DIR>/jobs`."""
        return self.jobs_dir or self.cache_dir / "jobs"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read from the environment on first use)."""
    return Settings()
