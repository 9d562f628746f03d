"""SHARP_* environment variables become one typed Settings object."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.model.presets import OFFICIAL_CHECKPOINT_URL
from app.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = Settings()
    assert settings.preset == "sharp" and settings.device == "auto" and settings.dtype == "float32"
    assert settings.checkpoint is None and settings.checkpoint_url is None
    assert settings.weights_url == OFFICIAL_CHECKPOINT_URL  # the preset's official checkpoint
    assert settings.cache_dir == tmp_path / "sharp-serve"
    assert settings.max_upload_bytes == 25 * 1024 * 1024
    assert settings.api_key is None and settings.cors_origins == []


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARP_PRESET", "tiny")
    monkeypatch.setenv("SHARP_CORS_ORIGINS", "https://a.example, https://b.example,")
    monkeypatch.setenv("SHARP_API_KEY", "s3cret")
    monkeypatch.setenv("SHARP_CHECKPOINT_SHA256", "")
    monkeypatch.setenv("SHARP_MAX_UPLOAD_MB", "0.5")
    monkeypatch.setenv("SHARP_OFFLINE", "1")
    settings = Settings()
    assert settings.preset == "tiny" and settings.offline is True
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.checkpoint_sha256 is None
    assert settings.max_upload_bytes == 512 * 1024


@pytest.mark.parametrize(("name", "value"), [("SHARP_PRESET", "huge"), ("SHARP_PORT", "70000"),
                                             ("SHARP_DEVICE", "tpu"), ("SHARP_MAX_UPLOAD_MB", "0")])
def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("SHARP_").lower()):
        Settings()


def test_weights_come_from_the_preset_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARP_CHECKPOINT_URL", raising=False)
    assert Settings(preset="tiny").weights_url is None  # synthetic weights, nothing to download
    custom = Settings(preset="sharp", checkpoint_url="http://127.0.0.1:9/my.pt", checkpoint_sha256="ab" * 32)
    assert (custom.weights_url, custom.weights_sha256) == ("http://127.0.0.1:9/my.pt", "ab" * 32)


def test_webhook_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """SHARP_WEBHOOK_SECRET must be a Standard Webhooks key (whsec_ + base64 of 24 to 64 bytes); the allowed
    hosts are a comma-separated list, lower-cased."""
    monkeypatch.setenv("SHARP_WEBHOOK_SECRET", "whsec_" + "QUJD" * 11)  # 33 bytes
    monkeypatch.setenv("SHARP_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1, Hooks.Internal,[::1]")
    settings = Settings()
    assert settings.webhook_allowed_hosts == ["127.0.0.1", "hooks.internal", "::1"]
    assert "QUJD" not in repr(settings)
    for bad in ("QUJD" * 11, "whsec_short", "whsec_not base64!!"):
        monkeypatch.setenv("SHARP_WEBHOOK_SECRET", bad)
        with pytest.raises(ValidationError, match="whsec_"):
            Settings()
