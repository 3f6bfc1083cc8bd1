from __future__ import annotations

from typing import get_args

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts import Verdict
from services.storage.gate import Gate


class StorageSettings(BaseSettings):
    """Env prefix LIKENESS_STORAGE_: the consistency gate (connections come from InfraSettings).

    A take whose first score has a verdict in `gate_verdicts` is made again with the shot's own provider and a
    new seed, up to `gate_max_regenerations` times (0: the gate is off); then once with the provider `fallback`
    names for the shot's provider, if it names one. `fallback` is JSON, e.g.
    `{"fal-flux-lora": "fal-instant-character", "fal-instant-character": "sim"}`; it is read from
    `LIKENESS_FALLBACK` too, the variable the provider adapter's circuit breakers read, so one setting serves both.
    """

    model_config = SettingsConfigDict(env_prefix="LIKENESS_STORAGE_", extra="ignore", validate_by_name=True)

    gate_max_regenerations: int = Field(
        default=2, ge=0, le=10, description="Takes with the shot's own provider after the first; 0 turns the gate off."
    )
    gate_verdicts: str = Field(
        default="different,no_face", description="Verdicts that make the gate take a shot again, comma-separated."
    )
    fallback: dict[str, str] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("LIKENESS_STORAGE_FALLBACK", "LIKENESS_FALLBACK", "fallback"),
        description="Provider -> fallback provider (an instant-reference one): the gate's last take.",
    )

    @field_validator("gate_verdicts")
    @classmethod
    def _verdicts(cls, value: str) -> str:
        unknown = {part.strip() for part in value.split(",") if part.strip()} - set(get_args(Verdict))
        if unknown:
            raise ValueError(f"unknown verdicts {sorted(unknown)}; use some of {', '.join(get_args(Verdict))}")
        return value

    def gate(self) -> Gate:
        return Gate(
            max_regenerations=self.gate_max_regenerations,
            verdicts=frozenset(part.strip() for part in self.gate_verdicts.split(",") if part.strip()),
            fallback=dict(self.fallback),
        )

    @field_validator("fallback")
    @classmethod
    def _no_loops(cls, value: dict[str, str]) -> dict[str, str]:
        for provider, fallback in value.items():
            if provider == fallback:
                raise ValueError(f"{provider!r} cannot be its own fallback")
        return value
