"""The ComfyUI providers against the loopback fake of a ComfyUI server, over real HTTP and websockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from contracts import ShotParams
from infra.fakes.comfyui import FILE_PREFIX, ComfyUIFake
from infra.fakes.faults import Fault
from infra.fakes.server import LoopbackServer
from infra.sample import sample_reference_png
from services.provider_adapter.ports import (
    IdentityRequest,
    PermanentProviderError,
    ReferenceImage,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers.comfyui import ComfyUIProvider, comfyui_providers, upload_name
from services.provider_adapter.providers.comfyui_workflows import (
    INSTANTID,
    IPADAPTER,
    REFERENCE_ONLY,
    WORKFLOWS,
    ComfyUISettings,
)
from services.provider_adapter.providers.http import RetryPolicy, http_timeout, new_client
from services.provider_adapter.providers.sim_images import SIMULATED_NOTICE
from tests.fakes import RecordingSleep, reference_image
from tests.provider_shots import generate

pytestmark = pytest.mark.integration

IDENTITY_NODES = {
    IPADAPTER: {"IPAdapterUnifiedLoader", "IPAdapterAdvanced"},
    INSTANTID: {"InstantIDModelLoader", "InstantIDFaceAnalysis", "ControlNetLoader", "ApplyInstantID"},
    REFERENCE_ONLY: {"ImageScale", "VAEEncode", "ReferenceOnlySimple", "LatentFromBatch"},
}


@dataclass
class ComfyServer:
    fake: ComfyUIFake
    url: str
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def providers(
        self, *, sleep: RecordingSleep | None = None, read_s: float = 10.0, **settings: Any
    ) -> dict[str, ComfyUIProvider]:
        """A fresh set of the three providers (a restarted adapter), on a new client."""
        values: dict[str, Any] = {"base_url": self.url, "poll_s": 0.02, "poll_max_s": 0.1, **settings}
        client = new_client(http_timeout(connect_s=2.0, read_s=read_s))
        self.clients.append(client)
        return comfyui_providers(
            ComfyUISettings(**values),
            client,
            concurrency=2,
            retry=RetryPolicy(retries=3, base_s=0.05, cap_s=0.2),
            sleep=sleep or RecordingSleep(pace_s=0.01),
        )

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


def _serve(ws: str) -> Iterator[ComfyServer]:
    fake = ComfyUIFake()
    with LoopbackServer(fake.app, name="comfyui", ws=ws) as url:
        yield ComfyServer(fake, url)


@pytest.fixture
async def comfy() -> AsyncIterator[ComfyServer]:
    """A fresh fake ComfyUI with its websocket, on loopback, for one test."""
    for server in _serve("websockets-sansio"):
        yield server
        await server.close()


@pytest.fixture
async def comfy_no_ws() -> AsyncIterator[ComfyServer]:
    """A fake ComfyUI whose websocket cannot be reached (a proxy that does not upgrade): clients poll."""
    for server in _serve("none"):
        yield server
        await server.close()


class RecordingProgress:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    async def __call__(self, percent: float, message: str) -> None:
        self.calls.append((percent, message))


def reference() -> ReferenceImage:
    return reference_image(sample_reference_png(), key="studio/images/ref")


async def shot(provider: ComfyUIProvider, ref: ReferenceImage | None = None, **params: object) -> ShotRequest:
    ref = ref or reference()
    job = await provider.create_identity(IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [ref]))
    status = await provider.identity_status(job)
    assert (status.state, status.cost_usd) == ("ready", 0.0)
    assert status.identity_ref is not None
    values = {"prompt": "close-up portrait of the astronaut, soft light", "seed": 7, "steps": 4, **params}
    return ShotRequest(uuid.uuid4(), uuid.uuid4(), status.identity_ref, ShotParams.model_validate(values), [ref])


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
async def test_identity_then_a_shot_end_to_end_with_websocket_progress(comfy: ComfyServer, workflow: str) -> None:
    provider = comfy.providers()[workflow]
    progress = RecordingProgress()
    started = time.monotonic()
    request = await shot(provider, negative_prompt="blurry", guidance=5.0, aspect_ratio="3:4", seed=11)
    image = await generate(provider, request, progress)
    elapsed_ms = (time.monotonic() - started) * 1000
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (896, 1152)  # SDXL's 3:4 size
        assert decoded.info["Description"] == SIMULATED_NOTICE
    assert (image.content_type, image.cost_usd) == ("image/png", 0.0)
    assert 0 < image.latency_ms <= elapsed_ms
    assert image.simulation is not None
    assert image.simulation.transform.startswith("fake ComfyUI server on loopback, not ComfyUI: close-up portrait")
    graph = comfy.fake.received[-1]
    classes = {node["class_type"] for node in graph.values()}
    assert IDENTITY_NODES[workflow] <= classes
    sampler = next(node["inputs"] for node in graph.values() if node["class_type"] == "KSampler")
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (11, 4, 5.0)
    texts = {node["inputs"]["text"] for node in graph.values() if node["class_type"] == "CLIPTextEncode"}
    assert texts == {"close-up portrait of the astronaut, soft light", "blurry"}
    loaded = next(node["inputs"]["image"] for node in graph.values() if node["class_type"] == "LoadImage")
    assert loaded == upload_name(request.references[0])
    assert comfy.fake.uploads == 1
    assert comfy.fake.ws_connections == 1
    assert [message for _, message in progress.calls] == [
        "queued on ComfyUI",
        "running on ComfyUI",
        *(f"step {step}/4 on ComfyUI" for step in range(1, 5)),
        "completed on ComfyUI; fetching the image",
        "done",
    ]
    percents = [percent for percent, _ in progress.calls]
    assert percents == sorted(percents)
    assert comfy.fake.history_gets == 1  # only to read the outputs: completion came over the websocket
    assert next(iter(comfy.fake.outputs)).startswith(FILE_PREFIX)


async def test_without_a_websocket_it_polls_history_and_still_delivers(comfy_no_ws: ComfyServer) -> None:
    comfy_no_ws.fake.step_s = 0.05  # slow enough for several polls
    provider = comfy_no_ws.providers()[IPADAPTER]
    progress = RecordingProgress()
    image = await generate(provider, await shot(provider, aspect_ratio="16:9"), progress)
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (1344, 768)
    assert comfy_no_ws.fake.ws_connections == 0
    assert comfy_no_ws.fake.history_gets >= 3
    assert comfy_no_ws.fake.queue_gets >= 2  # the prompt was seen waiting in the queue, not lost
    assert [message for _, message in progress.calls] == [
        "queued on ComfyUI",
        "waiting for ComfyUI (polling /history)",
        "completed on ComfyUI; fetching the image",
        "done",
    ]


async def test_a_websocket_that_drops_mid_run_falls_back_to_polling(comfy: ComfyServer) -> None:
    comfy.fake.ws_drop_at_step = 2
    comfy.fake.step_s = 0.05
    provider = comfy.providers()[INSTANTID]
    progress = RecordingProgress()
    assert (await generate(provider, await shot(provider), progress)).data
    messages = [message for _, message in progress.calls]
    assert messages[:5] == [
        "queued on ComfyUI",
        "running on ComfyUI",
        "step 1/4 on ComfyUI",
        "step 2/4 on ComfyUI",
        "waiting for ComfyUI (polling /history)",
    ]
    assert messages[-1] == "done"
    assert comfy.fake.history_gets >= 2


async def test_a_bearer_token_goes_on_http_and_websocket_and_a_wrong_one_is_permanent(
    comfy: ComfyServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = f"proxy-{uuid.uuid4().hex}"
    comfy.fake.token = token
    providers = comfy.providers(token=SecretStr(token))
    progress = RecordingProgress()
    assert (await generate(providers[IPADAPTER], await shot(providers[IPADAPTER]), progress)).data
    assert "step 4/4 on ComfyUI" in [message for _, message in progress.calls]  # the websocket got in
    assert comfy.fake.unauthorized == 0
    wrong = comfy.providers(token=SecretStr("wrong-token"))[IPADAPTER]
    with pytest.raises(PermanentProviderError, match="check COMFYUI_TOKEN") as raised:
        await wrong.create_identity(IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [reference()]))
    for text in (str(raised.value), repr(wrong), repr(providers), caplog.text):
        assert token not in text


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
async def test_a_missing_model_file_fails_for_good_naming_the_node_and_the_fix(
    comfy: ComfyServer, workflow: str
) -> None:
    sleep = RecordingSleep(pace_s=0.01)
    checkpoint = {IPADAPTER: "ipadapter_checkpoint", INSTANTID: "instantid_checkpoint"}.get(
        workflow, "reference_only_checkpoint"
    )
    overrides: dict[str, Any] = {checkpoint: "not_here.safetensors"}
    provider = comfy.providers(sleep=sleep, **overrides)[workflow]
    with pytest.raises(PermanentProviderError) as raised:
        await generate(provider, await shot(provider))
    message = str(raised.value)
    assert "prompt_outputs_failed_validation" in message
    assert "node checkpoint (CheckpointLoaderSimple): Value not in list: ckpt_name: 'not_here.safetensors'" in message
    assert "put that file in ComfyUI's models/checkpoints" in message
    assert comfy.fake.prompt_posts == 1
    assert sleep.calls == []


@pytest.mark.parametrize(
    ("workflow", "missing", "pack"),
    [
        (IPADAPTER, "IPAdapterAdvanced", "cubiq/ComfyUI_IPAdapter_plus"),
        (INSTANTID, "ApplyInstantID", "cubiq/ComfyUI_InstantID"),
        (REFERENCE_ONLY, "ReferenceOnlySimple", "comfyanonymous/ComfyUI_experiments"),
    ],
)
async def test_a_custom_node_not_installed_fails_for_good_saying_what_to_install(
    comfy: ComfyServer, workflow: str, missing: str, pack: str
) -> None:
    del comfy.fake.node_classes[missing]
    sleep = RecordingSleep(pace_s=0.01)
    provider = comfy.providers(sleep=sleep)[workflow]
    with pytest.raises(PermanentProviderError) as raised:
        await generate(provider, await shot(provider))
    assert f"Cannot execute because node {missing} does not exist. (Node ID '#apply')" in str(raised.value)
    assert f"install the custom node pack {pack}" in str(raised.value)
    assert (comfy.fake.prompt_posts, sleep.calls) == (1, [])


async def test_a_graph_with_a_broken_link_and_a_missing_input_names_both_nodes(comfy: ComfyServer) -> None:
    provider = comfy.providers()[IPADAPTER]
    request = await shot(provider)
    graph = provider.workflow(request, upload_name(request.references[0]))
    graph["apply"]["inputs"]["ipadapter"] = ["nowhere", 1]
    del graph["sampler"]["inputs"]["cfg"]
    client = provider.client()
    with pytest.raises(PermanentProviderError) as raised:
        await client.start(IPADAPTER, request.references[0], lambda _: graph)
    message = str(raised.value)
    assert "node apply (IPAdapterAdvanced): Linked node does not exist: ipadapter, node 'nowhere'" in message
    assert "node sampler (KSampler): Required input is missing: cfg" in message


async def test_a_failure_while_running_is_permanent_and_names_the_node(comfy: ComfyServer) -> None:
    comfy.fake.fail_at = "ApplyInstantID"
    provider = comfy.providers()[INSTANTID]
    with pytest.raises(PermanentProviderError, match=r"failed at node apply \(ApplyInstantID\): .*No face detected"):
        await generate(provider, await shot(provider))


async def test_5xx_and_429_are_retried_then_the_shot_succeeds(comfy: ComfyServer) -> None:
    comfy.fake.inject("upload", Fault.unavailable(502))
    comfy.fake.inject("prompt", Fault.unavailable(), Fault.rate_limited("1"))
    comfy.fake.inject("history", Fault.unavailable(500))
    comfy.fake.inject("view", Fault.unavailable())  # the reference check
    sleep = RecordingSleep(pace_s=0.01)
    provider = comfy.providers(sleep=sleep)[REFERENCE_ONLY]
    image = await generate(provider, await shot(provider))
    assert image.data
    assert comfy.fake.prompt_posts == 3
    assert comfy.fake.accepted == 1
    assert comfy.fake.uploads == 1
    assert max(sleep.calls) >= 1.0  # the Retry-After was waited out


async def test_5xx_until_the_retries_run_out_is_transient(comfy: ComfyServer) -> None:
    provider = comfy.providers()[IPADAPTER]
    request = await shot(provider)
    comfy.fake.inject("prompt", *[Fault.unavailable()] * 4)
    with pytest.raises(TransientProviderError, match="gave up after 4 tries"):
        await generate(provider, request)
    assert comfy.fake.accepted == 0


async def test_a_restart_after_upload_uploads_nothing_new(comfy: ComfyServer) -> None:
    ref = reference()
    first = comfy.providers()[INSTANTID]
    identity = await first.create_identity(IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [ref]))
    assert comfy.fake.uploads == 1
    restarted = comfy.providers()  # a new process: new client, nothing remembered
    again = await restarted[INSTANTID].create_identity(
        IdentityRequest(uuid.uuid4(), "studio", "instant_reference", [ref])
    )
    assert again == identity
    assert (await generate(restarted[IPADAPTER], await shot(restarted[IPADAPTER], ref))).data
    assert comfy.fake.uploads == 1
    assert list(comfy.fake.inputs) == [upload_name(ref)]


async def test_a_wiped_input_folder_is_uploaded_again_before_the_shot(comfy: ComfyServer) -> None:
    provider = comfy.providers()[IPADAPTER]
    request = await shot(provider)
    comfy.fake.inputs.clear()  # ComfyUI reinstalled, or its input folder is not persistent
    assert (await generate(provider, request)).data
    assert comfy.fake.uploads == 2


async def test_a_configured_price_per_gpu_second_is_charged(comfy: ComfyServer) -> None:
    comfy.fake.step_s = 0.05
    provider = comfy.providers(usd_per_gpu_second=0.001)[IPADAPTER]
    image = await generate(provider, await shot(provider))
    assert 0.0002 <= image.cost_usd <= 0.01


async def test_without_a_url_comfyui_is_not_available() -> None:
    providers = comfyui_providers(
        ComfyUISettings(base_url=None), new_client(http_timeout(connect_s=1, read_s=1)), concurrency=1
    )
    assert set(providers) == {IPADAPTER, INSTANTID, REFERENCE_ONLY}
    assert not any(provider.available() for provider in providers.values())
    request = ShotRequest(uuid.uuid4(), uuid.uuid4(), "x", ShotParams(prompt="hi"), [reference()])
    with pytest.raises(PermanentProviderError, match="set COMFYUI_URL"):
        await generate(providers[IPADAPTER], request)


async def test_an_identity_of_another_provider_is_refused(comfy: ComfyServer) -> None:
    providers = comfy.providers()
    request = await shot(providers[IPADAPTER])
    with pytest.raises(PermanentProviderError, match="is not the comfyui-instantid identity"):
        await generate(providers[INSTANTID], replace(request))
    with pytest.raises(PermanentProviderError):
        await providers[INSTANTID].identity_status(request.identity_ref)


async def test_a_restarted_adapter_follows_the_prompt_it_submitted_instead_of_posting_it_again(
    comfy: ComfyServer,
) -> None:
    comfy.fake.step_s = 0.1  # four steps: 0.4 s
    first = comfy.providers()[IPADAPTER]
    request = await shot(first)
    job_id = await first.start_shot(request)
    waiting = asyncio.create_task(first.finish_shot(job_id, request))
    await asyncio.sleep(0.15)
    waiting.cancel()  # the adapter stops mid-wait
    with pytest.raises(asyncio.CancelledError):
        await waiting
    restarted = comfy.providers()  # a new process: new client, nothing remembered but the job id
    image = await restarted[IPADAPTER].finish_shot(job_id, request)
    assert image.data
    assert (comfy.fake.prompt_posts, comfy.fake.accepted) == (1, 1)
