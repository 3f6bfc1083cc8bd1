"""What the gateway's routes use, built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from faststream.nats import NatsBroker

from infra.objects import ObjectStore
from infra.webhooks.fal import FalKeys
from services.gateway.adapters.read_model import ReadModel
from services.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Gateway:
    settings: GatewaySettings
    broker: NatsBroker
    store: ObjectStore
    read_model: ReadModel
    fal_keys: FalKeys  # fal's webhook keys, fetched when the first fal webhook arrives
