"""What the gateway's routes use, built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from faststream.nats import NatsBroker

from infra.objects import ObjectStore
from infra.webhooks.fal import FalKeys
from services.gateway.adapters.api_keys import PostgresApiKeys
from services.gateway.adapters.read_model import ReadModel
from services.gateway.outbound import Callbacks
from services.gateway.reference_urls import ReferenceFetcher
from services.gateway.settings import GatewaySettings
from services.gateway.signed_urls import UrlSigner


@dataclass(frozen=True)
class Gateway:
    settings: GatewaySettings
    broker: NatsBroker
    store: ObjectStore
    read_model: ReadModel
    fal_keys: FalKeys  # fal's webhook keys, fetched when the first fal webhook arrives
    api_keys: PostgresApiKeys  # keys created with `likeness keys` (auth.py checks them through a cache)
    references: ReferenceFetcher  # references given by URL (public addresses only)
    signer: UrlSigner  # short-lived image links that need no API key
    callbacks: Callbacks  # apps' callback endpoints and the loops that deliver to them (outbound.py)
