from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class StorageSettings(BaseSettings):
    """Storage has no knobs of its own yet; connections come from InfraSettings."""

    model_config = SettingsConfigDict(env_prefix="LIKENESS_STORAGE_", extra="ignore")
