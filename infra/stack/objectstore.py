"""An S3-compatible object store on loopback that keeps its data on disk: nanio (PyPI), run as a child.

The services talk to it with the `minio` client, the same code that talks to real MinIO in compose.yaml.

Do not use object tagging (PUT ?tagging) against it: nanio 0.1.7 silently replaces the object's content
with the tagging document. Likeness never tags objects; metadata it needs lives in PostgreSQL.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from minio import Minio

from infra.stack.ports import LOOPBACK, free_port, port_accepts
from infra.stack.process import (
    ChildServer,
    StackError,
    clean_env,
    processes_working_in,
    spawn,
    terminate_pids,
    wait_until,
    write_private,
)

BUCKET = "likeness"
REGION = "us-east-1"
SHUTDOWN_TIMEOUT = 15.0


def ensure_bucket(client: Minio, bucket: str = BUCKET) -> None:
    """Create `bucket` unless it exists (works on nanio and on MinIO alike)."""
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)


class ObjectStoreServer(ChildServer):
    """One `nanio serve` child; objects under `<data_dir>/objectstore/data`, credentials beside them."""

    name = "objectstore"

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "objectstore"
        self.log_path = data_dir / "logs" / "objectstore.log"
        self.objects_dir = self.root / "data"
        # nanio's options file carries the [[users]] credentials it checks SigV4 signatures against; it
        # is also where we keep the generated keys (0600). Host, port and data dir go on the command line.
        self.options_path = self.root / "nanio.toml"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def credentials(self) -> tuple[str, str]:
        """(access key, secret key), generated and stored the first time."""
        if not self.options_path.exists():
            access_key = "LK" + secrets.token_hex(9).upper()  # 20 characters, like AWS and MinIO keys
            secret_key = secrets.token_urlsafe(30)  # 40 characters
            write_private(
                self.options_path,
                "# Written by likeness (infra/stack/objectstore.py): the object store's only credentials.\n"
                "[[users]]\n"
                f'access_key = "{access_key}"\n'
                f'secret_key = "{secret_key}"\n',
            )
        with self.options_path.open("rb") as options:
            user = tomllib.load(options)["users"][0]
        return str(user["access_key"]), str(user["secret_key"])

    def client(self) -> Minio:
        access_key, secret_key = self.credentials()
        return Minio(self.endpoint, access_key=access_key, secret_key=secret_key, secure=False, region=REGION)

    def launch(self, port: int | None = None) -> None:
        """Start nanio without waiting; `port` keeps the previous endpoint on a restart."""
        self.credentials()
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self._process = spawn(
            [
                sys.executable,
                "-m",
                "nanio",
                "serve",
                "--options",
                self.options_path,
                "--data-dir",
                self.objects_dir,
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--region",
                REGION,
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            log_path=self.log_path,
            # NANIO_* variables override its options; keep the parent's out of it.
            env={**clean_env(drop_prefixes=("NANIO_",)), "PYTHONUNBUFFERED": "1"},
            cwd=self.root,
        )

    def wait_ready(self, timeout: float = 60.0, bucket: str = BUCKET) -> None:
        """Until it accepts connections, then make sure the bucket exists."""
        assert self._process is not None, "launch() first"
        wait_until(
            lambda: port_accepts(self.port),
            process=self._process,
            what="nanio (object store)",
            log_path=self.log_path,
            timeout=timeout,
        )
        try:
            ensure_bucket(self.client(), bucket)
        except Exception as exc:
            raise StackError(f"object store on {self.endpoint} is up but bucket {bucket!r} failed: {exc}") from exc

    def stop_leftovers(self, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Stop a nanio on this folder that an earlier process started and left running."""
        leftovers = processes_working_in(self.root, name="python", cmdline_contains="nanio")
        terminate_pids(leftovers, sig=signal.SIGTERM, timeout=timeout)
        return bool(leftovers)
