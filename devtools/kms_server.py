"""A throwaway AWS KMS endpoint on loopback: ``moto_server`` (``moto[server]``, dev extra).

Used by the key store's tests and benchmark::

    with KmsServer() as kms:
        os.environ["AWS_ENDPOINT_URL_KMS"] = kms.url   # boto3 talks to it
        key_arn = kms.create_key()
        ...
        kms.requests()   # ["GenerateDataKey", "Encrypt", "Decrypt", ...], from moto's recorder

Run by hand, ``python devtools/kms_server.py`` is ``python devtools/local.py kms``: a server and a
key, and the environment to export, until Ctrl-C.

moto checks encryption contexts and the key id given to ``Decrypt``; it does not enforce key
states, policies or throttling, and its state is lost when it stops.
"""

from __future__ import annotations

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
    # Run as a script (python devtools/kms_server.py): the repository root makes ``devtools``
    # importable, as it is for the tests.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.redis_stack import _free_port, _set_pdeathsig, _tail, stop_process

if TYPE_CHECKING:
    from typing import Self

__all__ = ["AWS_TEST_ENV", "KmsServer", "KmsServerError"]

# What boto3 needs to talk to moto: a region and (any) credentials.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class KmsServerError(RuntimeError):
    """moto_server could not be started."""


class KmsServer:
    """``python -m moto.server`` on a free loopback port, recording every request it serves."""

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise KmsServerError("KmsServer is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point boto3's KMS client here."""
        return {
            **AWS_TEST_ENV,
            "AWS_ENDPOINT_URL_KMS": self.url,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.url,
        }

    def start(self) -> Self:
        if self._proc is not None:
            raise KmsServerError("KmsServer already started")
        self.workdir = Path(tempfile.mkdtemp(prefix="moto-kms-"))
        port = _free_port()
        log = self.workdir / "moto.log"
        env = {
            **os.environ,
            "MOTO_ENABLE_RECORDING": "True",
            "MOTO_RECORDER_FILEPATH": str(self.workdir / "requests.jsonl"),
        }
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
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
        raise KmsServerError(f"moto_server on port {port} did not start:\n{_tail(log)}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=2):  # noqa: S310
                return True
        except (OSError, urllib.error.URLError):
            return False

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, service: str = "kms") -> Any:
        """A boto3 client of ``service`` for this server (for setting up keys and secrets)."""
        import boto3

        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name=AWS_TEST_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106
        )

    def create_key(self, alias: str | None = None) -> str:
        """A new symmetric KMS key; returns its ARN (and names it ``alias/...`` if given)."""
        kms = self.client()
        arn = str(kms.create_key(Description="redis-encrypted-fields tests")["KeyMetadata"]["Arn"])
        if alias is not None:
            kms.create_alias(AliasName=alias, TargetKeyId=arn)
        return arn

    def requests(self, service: str = "TrentService") -> list[str]:
        """The operations of ``service`` (its X-Amz-Target prefix: ``TrentService`` is KMS,
        ``secretsmanager`` Secrets Manager) served since the start (or the last
        ``reset_requests``), in order."""
        assert self.workdir is not None
        path = self.workdir / "requests.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            headers = {k.lower(): v for k, v in json.loads(line)["headers"].items()}
            target = headers.get("x-amz-target", "")
            if target.startswith(f"{service}."):
                out.append(target.removeprefix(f"{service}."))
        return out

    def reset_requests(self) -> None:
        request = urllib.request.Request(  # noqa: S310
            f"{self.url}/moto-api/recorder/reset-recording", method="POST"
        )
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310
            pass

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
    # The command line is local.py's (it imports this module as devtools.kms_server).
    from devtools.local import main

    sys.exit(main(["kms", *sys.argv[1:]]))
