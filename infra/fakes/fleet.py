"""Every provider's loopback fake at once, and the settings that point the services at them.

The demo (`likeness demo --provider NAME`) and the end-to-end tests run real providers' adapters
against these fakes: each speaks its provider's documented HTTP contract on 127.0.0.1 and returns
the reference transformed as the offline simulator does, saying so. Nothing leaves the machine.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Final

from infra.fakes import FAKED_PROVIDERS
from infra.fakes.astria import AstriaFake
from infra.fakes.comfyui import ComfyUIFake
from infra.fakes.fal import JWKS_PATH as FAL_JWKS_PATH
from infra.fakes.fal import FalFake
from infra.fakes.leonardo import API_PREFIX as LEONARDO_PREFIX
from infra.fakes.leonardo import LeonardoFake
from infra.fakes.replicate import ReplicateFake
from infra.fakes.server import LoopbackServer

_PREFIX: Final = "LIKENESS_PROVIDER_ADAPTER_"


@dataclass(frozen=True)
class FakeFleet:
    fal: FalFake
    leonardo: LeonardoFake
    astria: AstriaFake
    comfyui: ComfyUIFake
    replicate: ReplicateFake
    urls: dict[str, str]  # fake name: its loopback URL

    def env(self) -> dict[str, str]:
        """Keys, URLs and quick polling for every faked provider, and the gateway offering them beside `sim`."""
        return {
            f"{_PREFIX}FAL_KEY": self.fal.api_key,
            f"{_PREFIX}FAL_QUEUE_URL": self.urls["fal"],
            f"{_PREFIX}FAL_POLL_S": "0.1",
            f"{_PREFIX}FAL_POLL_MAX_S": "0.5",
            "LIKENESS_GATEWAY_FAL_JWKS_URL": self.urls["fal"] + FAL_JWKS_PATH,  # the fake signs its webhooks
            f"{_PREFIX}LEONARDO_API_KEY": self.leonardo.api_key,
            f"{_PREFIX}LEONARDO_BASE_URL": self.urls["leonardo"] + LEONARDO_PREFIX,
            f"{_PREFIX}LEONARDO_POLL_S": "0.1",
            f"{_PREFIX}LEONARDO_POLL_MAX_S": "0.5",
            f"{_PREFIX}ASTRIA_API_KEY": self.astria.api_key,
            f"{_PREFIX}ASTRIA_BASE_URL": self.urls["astria"],
            f"{_PREFIX}ASTRIA_POLL_S": "0.1",
            f"{_PREFIX}ASTRIA_POLL_MAX_S": "0.5",
            f"{_PREFIX}REPLICATE_API_TOKEN": self.replicate.api_token,
            f"{_PREFIX}REPLICATE_BASE_URL": self.urls["replicate"],
            f"{_PREFIX}REPLICATE_DESTINATION_OWNER": "likeness",
            f"{_PREFIX}REPLICATE_DESTINATION_MODEL": "characters",  # a destination the fake knows
            f"{_PREFIX}REPLICATE_POLL_S": "0.1",
            f"{_PREFIX}REPLICATE_POLL_MAX_S": "0.5",
            f"{_PREFIX}COMFYUI_URL": self.urls["comfyui"],
            f"{_PREFIX}COMFYUI_POLL_S": "0.1",
            f"{_PREFIX}COMFYUI_POLL_MAX_S": "0.5",
            "LIKENESS_GATEWAY_PROVIDERS": ",".join(["sim", *FAKED_PROVIDERS]),
        }

    def shot_submissions(self) -> dict[str, int]:
        """Shot jobs each fake accepted (trainings and uploads not counted), by fake name.

        What the provider was paid for: with the provider adapter resuming saved jobs, each fake's
        count is the shots sent to it plus the jobs that failed at the provider and were submitted
        again, whatever was killed or restarted in between.
        """
        return {
            "fal": self.fal.accepted - self.fal.training_accepted,
            "leonardo": self.leonardo.accepted,
            "astria": self.astria.prompts_created,
            "replicate": self.replicate.predictions_accepted,
            "comfyui": self.comfyui.accepted,
        }

    def notice(self, provider: str) -> str:
        fake = FAKED_PROVIDERS[provider]
        return (
            f"{provider} uses a FAKE {fake} server on loopback ({self.urls[fake]}, simulated): it speaks the "
            f"provider's documented API, but its images are the reference transformed, not {fake}'s output, "
            "and no request left this machine"
        )


def _key(name: str) -> str:
    return f"fake-{name}-{secrets.token_hex(4)}:{secrets.token_hex(16)}"


@contextmanager
def fake_fleet() -> Iterator[FakeFleet]:
    """Start every fake on a free loopback port (threads in this process); stop them on exit."""
    fal, leonardo = FalFake(api_key=_key("fal")), LeonardoFake(api_key=_key("leonardo"))
    astria, comfyui = AstriaFake(api_key=_key("astria")), ComfyUIFake()
    replicate = ReplicateFake(api_token=_key("replicate"))
    with ExitStack() as servers:
        urls = {
            "fal": servers.enter_context(LoopbackServer(fal.app, name="fal")),
            "leonardo": servers.enter_context(LoopbackServer(leonardo.app, name="leonardo")),
            "astria": servers.enter_context(LoopbackServer(astria.app, name="astria")),
            "comfyui": servers.enter_context(LoopbackServer(comfyui.app, name="comfyui", ws="websockets-sansio")),
            "replicate": servers.enter_context(LoopbackServer(replicate.app, name="replicate")),
        }
        yield FakeFleet(fal, leonardo, astria, comfyui, replicate, urls)
