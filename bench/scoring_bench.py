"""Benchmark (issue 3): shots scored per second, the same images three ways, in one run.

(a) naive per pair: what a research script does. One open_clip ViT-B-32 (whole model, float32) loaded
    once; then for every shot the reference and the shot are embedded together (a batch of 2) and
    compared, the prompt is embedded and compared with the shot (CLIP-T), and dlib describes the
    reference's face and the shot's face again (face_recognition's defaults: HOG upsampled once,
    5-point landmarks, 1 jitter). Nothing is cached.
(b) the models alone, no service: our Scorer loaded exactly as the service loads it (`build_scorer`:
    dlib in a child process; CLIP on the remaining core, on onnxruntime in float32 unless LIKENESS_SCORING_*
    settings say otherwise, for CLIP-I and CLIP-T) with the reference embedded once, then `score_batch`
    over the shots in batches: this machine's limit.
(c) the scoring service as its own process on the embedded stack, fed through NATS: ShotStored events in,
    ShotScored events out, images from the object store, reference embeddings cached in PostgreSQL.

Run with `./taskw bench:scoring [-- --shots N]`. The shots come from the offline simulator (the astronaut
reference reframed), and CLIP runs on random weights: the speed is that of real weights, the scores mean
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dlib
import nats
import numpy as np
import open_clip
import psutil
import torch
from minio import Minio
from nats.aio.msg import Msg
from PIL import Image
from rich.console import Console
from rich.table import Table

from contracts import ImageRef, ShotScored, ShotStored, Verdict
from infra.bus import create_broker, declare_stream, publish_event
from infra.objects import ObjectStore
from infra.processes import ServiceSet
from infra.sample import sample_reference_png
from infra.stack import EmbeddedStack, StackEndpoints
from services.provider_adapter.providers import sim_images
from services.scoring.adapters.clip_common import cpu_has_bf16
from services.scoring.adapters.face import (
    DESCRIPTOR_MODEL_FILE,
    SHAPE_PREDICTOR_FILE,
    default_models_dir,
)
from services.scoring.adapters.face_process import ProcessFaceEmbedder
from services.scoring.adapters.models import build_scorer
from services.scoring.scorer import ShotToScore
from services.scoring.settings import ScoringSettings

TENANT = "bench"
CLIP_ARCHITECTURE = "ViT-B-32"
# Goals from issue 3
GOAL_SERVICE_VS_NAIVE = 4.0  # (c) at least 4x (a)
GOAL_SERVICE_VS_MODELS = 0.8  # (c) within 80% of (b)
GOAL_SHOTS_PER_S = 8.0  # face + CLIP-I + CLIP-T
GOAL_RSS_MB = 1500.0


@dataclass(frozen=True)
class BenchImage:
    png: bytes
    image: Image.Image


@dataclass(frozen=True)
class Measured:
    label: str
    shots: int
    seconds: float
    clip_seconds: float | None = None  # CLIP-I alone, where it can be told apart
    model_seconds: float | None = None  # the sum of ShotScore.scoring_ms (face + CLIP share), where scored by Scorer

    @property
    def per_s(self) -> float:
        return self.shots / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ServiceRun:
    measured: Measured
    stack_start_s: float
    service_ready_s: float
    first_shot_s: float
    publish_s: float
    rss_mb: float | None
    peak_rss_mb: float | None
    verdicts: list[Verdict | None]
    timed_out: bool


def prompt_for(index: int) -> str:
    scenario = sim_images.SCENARIOS[index % len(sim_images.SCENARIOS)]
    return f"the astronaut, {scenario}, photograph"


def make_images(count: int) -> tuple[BenchImage, list[BenchImage]]:
    """The astronaut as the reference, and `count` simulated shots cycling through the scenarios."""
    reference_png = sample_reference_png()
    reference = BenchImage(reference_png, sim_images.decode_image(reference_png))
    size = sim_images.output_size("1:1")
    shots = []
    for index in range(count):
        scenario = sim_images.SCENARIOS[index % len(sim_images.SCENARIOS)]
        shot = sim_images.render(reference.image, scenario, size, np.random.default_rng(index + 1))
        png = sim_images.encode_png(shot)
        shots.append(BenchImage(png, sim_images.decode_image(png)))
    return reference, shots


# --- (a) naive per pair ------------------------------------------------------------------------


def naive_per_pair(reference: Image.Image, shots: list[Image.Image]) -> Measured:
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_ARCHITECTURE, pretrained=None)
    tokenizer = open_clip.get_tokenizer(CLIP_ARCHITECTURE)
    model.eval()
    models_dir = default_models_dir()
    detector: Any = dlib.get_frontal_face_detector()
    predictor: Any = dlib.shape_predictor(str(models_dir / SHAPE_PREDICTOR_FILE))
    encoder: Any = dlib.face_recognition_model_v1(str(models_dir / DESCRIPTOR_MODEL_FILE))

    def face_descriptor(image: Image.Image) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        pixels = np.asarray(image.convert("RGB"))
        faces = detector(pixels, 1)
        if len(faces) == 0:
            return None
        shape = predictor(pixels, faces[0])
        return np.asarray(encoder.compute_face_descriptor(pixels, shape, 1), dtype=np.float64)

    def clip_pair(shot: Image.Image, prompt: str) -> tuple[float, float]:
        with torch.no_grad():
            batch = torch.stack([preprocess(reference), preprocess(shot)])
            features = model.encode_image(batch)
            features = features / features.norm(dim=-1, keepdim=True)
            text = model.encode_text(tokenizer([prompt]))
            text = text / text.norm(dim=-1, keepdim=True)
            return float(features[0] @ features[1]), float(text[0] @ features[1])

    def face_pair(shot: Image.Image) -> float | None:
        ours, theirs = face_descriptor(reference), face_descriptor(shot)
        return None if ours is None or theirs is None else float(np.linalg.norm(ours - theirs))

    clip_pair(shots[0], prompt_for(0))  # warm-up, untimed (first-call allocations)
    face_pair(shots[0])
    clip_s = 0.0
    started = time.perf_counter()
    for index, shot in enumerate(shots):
        clip_started = time.perf_counter()
        clip_pair(shot, prompt_for(index))
        clip_s += time.perf_counter() - clip_started
        face_pair(shot)
    seconds = time.perf_counter() - started
    return Measured("(a) naive per pair", len(shots), seconds, clip_s)


# --- (b) the models alone, batched -------------------------------------------------------------


def models_batched(
    reference: Image.Image, shots: list[Image.Image], batch_size: int
) -> tuple[Measured, str, list[Verdict | None]]:
    # exactly as the service loads them: dlib in a child process, torch on the remaining core(s)
    scorer = build_scorer(ScoringSettings(clip_model=CLIP_ARCHITECTURE))
    embedder, faces = scorer.image_embedder, scorer.face_embedder
    references = scorer.embed_references([reference])
    work = [ShotToScore(shot, references, prompt_for(index)) for index, shot in enumerate(shots)]
    scorer.score_batch(work[:batch_size])  # warm-up, untimed
    verdicts: list[Verdict | None] = []
    model_ms = 0.0
    started = time.perf_counter()
    for start in range(0, len(shots), batch_size):
        for score in scorer.score_batch(work[start : start + batch_size]):
            verdicts.append(score.verdict)
            model_ms += score.scoring_ms
    seconds = time.perf_counter() - started
    # CLIP-I alone, the same batches, to compare with (a)'s CLIP time
    started = time.perf_counter()
    for start in range(0, len(shots), batch_size):
        embedder.embed(shots[start : start + batch_size])
    clip_s = time.perf_counter() - started
    threads = ScoringSettings().torch_threads or max(1, len(os.sched_getaffinity(0)) - 1)
    model_name = f"{embedder.model_name}, {threads} thread(s)"
    if isinstance(faces, ProcessFaceEmbedder):
        faces.close()
    del scorer, embedder, faces
    gc.collect()
    measured = Measured(f"(b) models alone, batches of {batch_size}", len(shots), seconds, clip_s, model_ms / 1000.0)
    return measured, model_name, verdicts


# --- (c) the scoring service through NATS ------------------------------------------------------


class ScoredWatch:
    """Collects ShotScored events of one character; `done` is set once every expected shot is in."""

    def __init__(self, character_id: uuid.UUID) -> None:
        self.character_id = character_id
        self.expected: set[uuid.UUID] = set()
        self.seen: dict[uuid.UUID, tuple[float, Verdict, float]] = {}
        self.done = asyncio.Event()

    def expect(self, shot_ids: set[uuid.UUID]) -> None:
        self.expected = shot_ids
        self.done.clear()

    async def on_message(self, msg: Msg) -> None:
        event = ShotScored.model_validate_json(msg.data)
        if event.character_id != self.character_id:
            return
        self.seen.setdefault(event.shot_id, (time.perf_counter(), event.score.verdict, event.score.scoring_ms))
        if self.expected and self.expected <= self.seen.keys():
            self.done.set()


async def upload(store: ObjectStore, image: BenchImage) -> ImageRef:
    stored = await store.put_image(TENANT, image.png, "image/png")
    width, height = image.image.size
    return ImageRef(
        key=stored.key,
        sha256=stored.sha256,
        content_type="image/png",
        width=width,
        height=height,
        size_bytes=stored.size_bytes,
    )


async def feed_service(
    endpoints: StackEndpoints, reference: BenchImage, shots: list[BenchImage], timeout_s: float
) -> tuple[Measured, float, float, list[Verdict | None], bool]:
    store = ObjectStore(
        Minio(
            endpoints.s3_endpoint,
            access_key=endpoints.s3_access_key,
            secret_key=endpoints.s3_secret_key,
            secure=endpoints.s3_secure,
        ),
        endpoints.s3_bucket,
    )
    reference_ref = await upload(store, reference)
    shot_refs = [await upload(store, shot) for shot in shots]
    character_id = uuid.uuid4()

    def stored(image: ImageRef, index: int) -> ShotStored:
        return ShotStored(
            correlation_id=character_id,
            tenant_id=TENANT,
            shot_id=uuid.uuid4(),
            character_id=character_id,
            prompt=prompt_for(max(index, 0)),
            image=image,
            references=[reference_ref],
        )

    watch = ScoredWatch(character_id)
    broker = create_broker(endpoints.nats_url, name="scoring-bench")
    client = await nats.connect(endpoints.nats_url, name="likeness-scoring-bench")
    try:
        await broker.connect()
        await declare_stream(broker)
        await client.subscribe(ShotScored.subject, cb=watch.on_message)
        await client.flush()

        # warm-up: the first shot also embeds the reference and caches it in PostgreSQL
        warm = stored(shot_refs[0], -1)
        watch.expect({warm.shot_id})
        started = time.perf_counter()
        await publish_event(broker, warm)
        await asyncio.wait_for(watch.done.wait(), timeout_s)
        first_shot_s = time.perf_counter() - started

        events = [stored(ref, index) for index, ref in enumerate(shot_refs)]
        watch.expect({event.shot_id for event in events})
        started = time.perf_counter()
        for event in events:
            await publish_event(broker, event)
        publish_s = time.perf_counter() - started
        timed_out = False
        try:
            await asyncio.wait_for(watch.done.wait(), timeout_s)
        except TimeoutError:
            timed_out = True
        finished = [watch.seen[e.shot_id] for e in events if e.shot_id in watch.seen]
        seconds = (max(t for t, _, _ in finished) - started) if finished else timeout_s
        model_s = sum(ms for _, _, ms in finished) / 1000.0
        verdicts = [watch.seen[e.shot_id][1] if e.shot_id in watch.seen else None for e in events]
    finally:
        await client.close()
        await broker.stop()
    measured = Measured("(c) scoring service via NATS", len(finished), seconds, model_seconds=model_s)
    return measured, first_shot_s, publish_s, verdicts, timed_out


def service_memory(pid: int) -> tuple[float | None, float | None]:
    """Resident memory now and at its peak (VmHWM), in MB: the service and its children (the face process)."""
    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
        rss = sum(member.memory_info().rss for member in family) / 1e6
    except psutil.Error:
        return None, None
    peak = 0.0
    for member in family:
        try:
            for line in Path(f"/proc/{member.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) * 1024 / 1e6
        except (OSError, ValueError):
            return rss, None
    return rss, peak


def through_service(
    reference: BenchImage, shots: list[BenchImage], console: Console, timeout_s: float, batch_size: int
) -> ServiceRun:
    data_dir = Path(tempfile.mkdtemp(prefix="likeness-scoring-bench-"))
    stack = EmbeddedStack(data_dir)
    services: ServiceSet | None = None
    try:
        started = time.perf_counter()
        endpoints = stack.start()
        stack_start_s = time.perf_counter() - started
        services = ServiceSet(data_dir, {**endpoints.env(), "LIKENESS_SCORING_BATCH_SIZE": str(batch_size)})
        started = time.perf_counter()
        process = services.start("scoring")
        services.wait_ready(["scoring"], timeout_s=180.0)
        service_ready_s = time.perf_counter() - started
        console.print(
            f"  stack up in {stack_start_s:.1f} s; scoring (pid {process.process.pid}) ready in {service_ready_s:.1f} s"
        )
        measured, first_shot_s, publish_s, verdicts, timed_out = asyncio.run(
            feed_service(endpoints, reference, shots, timeout_s)
        )
        rss, peak = service_memory(process.process.pid)
        if timed_out:
            console.print(f"[red]  timed out after {timeout_s:.0f} s[/red]; scoring log ends with:")
            console.print(process.log_tail(20), markup=False)
        return ServiceRun(
            measured, stack_start_s, service_ready_s, first_shot_s, publish_s, rss, peak, verdicts, timed_out
        )
    finally:
        if services is not None:
            services.stop("scoring")
        stack.stop()
        stack.postgres.remove_external_cluster()
        shutil.rmtree(data_dir, ignore_errors=True)


# --- report --------------------------------------------------------------------------------------


def goal(met: bool) -> str:
    return "[green]met[/green]" if met else "[red]NOT met[/red]"


def report(console: Console, naive: Measured, models: Measured, service: ServiceRun, clip_model: str) -> None:
    table = Table(title="shots scored per second (face identity + CLIP-I + CLIP-T)")
    for column in ("approach", "shots", "seconds", "shots/s", "vs (a)"):
        table.add_column(column, justify="left" if column == "approach" else "right")
    for row in (naive, models, service.measured):
        table.add_row(
            row.label, str(row.shots), f"{row.seconds:.2f}", f"{row.per_s:.2f}", f"{row.per_s / naive.per_s:.2f}x"
        )
    console.print(table)

    c, b, a = service.measured.per_s, models.per_s, naive.per_s
    console.print("goals (issue 3):")
    console.print(
        f"  (c) / (b): {100 * c / b:.0f}%   goal >= {100 * GOAL_SERVICE_VS_MODELS:.0f}%   "
        f"{goal(c >= GOAL_SERVICE_VS_MODELS * b)}"
    )
    console.print(
        f"  (c) / (a), face + CLIP: {c / a:.2f}x   goal >= {GOAL_SERVICE_VS_NAIVE:.0f}x (stated for CLIP-I)   "
        f"{goal(c >= GOAL_SERVICE_VS_NAIVE * a)}"
    )
    if naive.clip_seconds and models.clip_seconds:
        console.print(
            f"  CLIP-I alone: (a) {naive.shots / naive.clip_seconds:.1f} shots/s, (b)'s embedder in batches "
            f"{models.shots / models.clip_seconds:.1f} shots/s = {naive.clip_seconds / models.clip_seconds:.2f}x"
            "   ((c) cannot be split from outside)"
        )
    console.print(
        f"  shots/s, face + CLIP: (c) {c:.2f}, (b) {b:.2f}   goal >= {GOAL_SHOTS_PER_S:.0f}   "
        f"{goal(c >= GOAL_SHOTS_PER_S)}"
    )
    if service.rss_mb is None:
        console.print("  scoring resident memory: not measured (the process was gone)")
    else:
        peak = f" (peak {service.peak_rss_mb:.0f} MB)" if service.peak_rss_mb is not None else ""
        console.print(
            f"  scoring resident memory at the end (with its face process): {service.rss_mb:.0f} MB{peak}   "
            f"goal < {GOAL_RSS_MB:.0f} MB   "
            f"{goal(service.rss_mb < GOAL_RSS_MB)}"
        )
    console.print("where the time goes:")
    for row in (models, service.measured):
        if row.model_seconds is not None:
            console.print(
                f"  {row.label}: model time (sum of ShotScore.scoring_ms) {row.model_seconds:.2f} s "
                f"of {row.seconds:.2f} s wall"
            )
    console.print(
        f"  (c) start-up, not timed above: stack {service.stack_start_s:.1f} s, scoring ready (models loaded) "
        f"{service.service_ready_s:.1f} s, warm-up shot {service.first_shot_s:.2f} s"
    )
    console.print(f"  (c) publishing the {len(service.verdicts)} ShotStored events: {service.publish_s:.2f} s")
    console.print("notes:")
    console.print(
        "  CLIP runs on [bold]random weights[/bold]: the speed is that of real weights, the scores mean nothing."
    )
    console.print(f"  (b) and (c): {clip_model}; CPU has native bfloat16: {'yes' if cpu_has_bf16() else 'no'}")
    console.print("  (a) float32, the whole model (text tower too), the reference re-embedded with every shot")
    console.print(
        "  face: (a) dlib called as face_recognition does (HOG upsampled once), reference described every pair;"
    )
    console.print("        (b) and (c) dlib in a child process (it holds the GIL), the reference described once")
    console.print(
        f"  machine: {os.cpu_count()} cores; (a) ran with torch's default threads (one per core); (a) and (b) score "
        "decoded images in this process, (c) fetches and decodes every PNG"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shots", type=int, default=30, help="shots to score each way (default 30)")
    parser.add_argument("--batch", type=int, default=8, help="batch size for (b) and (c) (default 8)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the service's scores")
    args = parser.parse_args()
    if args.shots < 1 or args.batch < 1:
        parser.error("--shots and --batch must be at least 1")

    console = Console(width=140)
    console.print(f"[bold]scoring benchmark[/bold]: {args.shots} simulated shots of the astronaut, three ways")
    reference, shots = make_images(args.shots)
    images = [shot.image for shot in shots]

    console.print("(a) naive per pair ...")
    naive = naive_per_pair(reference.image, images)
    gc.collect()  # (a)'s model is gone with its function
    console.print(f"  {naive.seconds:.2f} s")
    console.print("(b) models alone, batched ...")
    models, clip_model, model_verdicts = models_batched(reference.image, images, args.batch)
    console.print(f"  {models.seconds:.2f} s")
    console.print("(c) scoring service via NATS ...")
    service = through_service(reference, shots, console, args.timeout, args.batch)
    console.print(f"  {service.measured.seconds:.2f} s")

    report(console, naive, models, service, clip_model)
    agree = sum(1 for ours, theirs in zip(model_verdicts, service.verdicts, strict=True) if ours == theirs)
    console.print(f"  verdicts of (b) and (c) agree on {agree} of {len(shots)} shots")
    if service.timed_out:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
