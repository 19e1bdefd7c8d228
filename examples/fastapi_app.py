"""The design note's "API Behavior" as a FastAPI service: plaintext in, masks out, masks kept.

- ``POST /instances`` takes plaintext secrets; Redis stores envelopes.
- ``GET /instances`` and ``GET /instances/{pk}`` show masks: ``admin_password`` as ``***``,
  ``connection_url`` as ``redis://***:***@host:6379/0`` (``UrlMask``). A record whose secrets
  cannot be decrypted is listed as ``{"pk", "name", "error"}``; the others are listed as usual.
- ``PUT`` / ``PATCH /instances/{pk}``: new plaintext replaces a secret; a mask sent back as a GET
  returned it keeps the stored one. A mask with nothing to keep is a 422, never a stored mask.
  A ``PATCH`` decrypts only the secrets it keeps: a new value replaces an unreadable one.
- ``POST /instances/{pk}/ping`` connects with the stored URL; the URL never leaves the service.

Run it (needs the ``examples`` extra, a Redis server and a master key; from this folder)::

    export REDIS_SRE_MASTER_KEY=$(python -c \
        'import os, base64; print(base64.b64encode(os.urandom(32)).decode())')
    REDIS_OM_URL=redis://localhost:6379 uvicorn fastapi_app:app

or ``docker compose up --build`` (see ``docker-compose.yml``). OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Optional

import redis
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis_om import Field as OmField
from redis_om import HashModel, Migrator, NotFoundError

from redis_encrypted_fields import (
    DecryptionError,
    EncryptedModel,
    EncryptedStr,
    EncryptionError,
    MaskedSecretError,
    UrlMask,
    get_keyring,
)

log = logging.getLogger("redis_instances_api")

URL_MASK = UrlMask()
SECRETS = ("connection_url", "admin_password")
PING_TIMEOUT = float(os.environ.get("PING_TIMEOUT_SECONDS", "2"))


# --- the stored record ----------------------------------------------------------------------------


class RedisInstance(EncryptedModel, HashModel, index=True):
    """A Redis deployment; also the response model, so its JSON output is masked."""

    name: str = OmField(index=True)
    description: str = ""
    connection_url: Annotated[EncryptedStr, URL_MASK]
    # Optional[...], not "X | None": redis-om reads the "" a HashModel stores for None back as
    # None only for typing.Optional.
    admin_password: Optional[EncryptedStr] = None  # noqa: UP045

    class Meta:
        # Envelopes are bound to the record's key: a fixed prefix keeps it independent of the
        # module's import path (redis-om's default prefix is the module name).
        global_key_prefix = "sre-example"
        model_key_prefix = "instance"


# --- request bodies -------------------------------------------------------------------------------
# Plain strings, not EncryptedStr: a mask sent back must reach RedisInstance, which resolves it
# on save. Outside such a model EncryptedStr refuses masks outright.

_PASSWORD = {"format": "password", "writeOnly": True}


def _redis_url(value: str) -> str:
    if URL_MASK.could_be_mask(value):
        return value  # a mask sent back: RedisInstance decides on save what it stands for
    try:
        redis.connection.parse_url(value)
    except ValueError:
        raise ValueError("must be a redis://, rediss:// or unix:// URL") from None
    return value


Secret = Annotated[str, Field(min_length=1, json_schema_extra=_PASSWORD)]
RedisUrl = Annotated[Secret, AfterValidator(_redis_url)]


class InstanceCreate(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)

    name: str = Field(min_length=1)
    description: str = ""
    connection_url: RedisUrl
    admin_password: Secret | None = None


class InstanceReplace(InstanceCreate):
    # A GET's output, sent back as is, carries the pk.
    pk: str | None = None


class InstancePatch(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)

    pk: str | None = None
    name: str | None = Field(default=None, min_length=1)
    description: str | None = None
    connection_url: RedisUrl | None = None
    admin_password: Secret | None = None  # null clears it

    @model_validator(mode="after")
    def _required_fields_are_not_null(self) -> InstancePatch:
        for name in ("name", "description", "connection_url"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class UnreadableInstance(BaseModel):
    """A listed record whose secrets cannot be decrypted (its non-secret name is shown)."""

    pk: str
    name: str | None
    error: str


UNREADABLE = "the stored secrets cannot be decrypted; replace them with PUT or PATCH"


class PingResult(BaseModel):
    pk: str
    reachable: bool
    # The exception's class name only: a client library's message could quote the URL.
    error: str | None = None


def ping_url(url: str, timeout: float = PING_TIMEOUT) -> tuple[bool, str | None]:
    """Whether a Redis server answers PING at ``url``, and the error's class name if not."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError:
        return False, "InvalidURL"
    try:
        return bool(client.ping()), None
    except (redis.RedisError, OSError) as exc:
        return False, type(exc).__name__
    finally:
        client.close()


# --- the service ----------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    get_keyring()  # no or a malformed master key: fail at startup, not at the first request
    Migrator().run()  # redis-om's index for RedisInstance (it writes only with index=True)
    yield


app = FastAPI(
    title="Redis instances",
    summary="redis-encrypted-fields example: secrets encrypted at rest, masked in responses",
    lifespan=lifespan,
)


def _exists(pk: str) -> bool:
    return bool(RedisInstance.db().exists(RedisInstance.make_primary_key(pk)))


def _stored_fields(pk: str) -> dict[str, str]:
    """The record's fields as Redis holds them (secrets as envelopes), nothing decrypted."""
    stored: dict[str, str] = RedisInstance.db().hgetall(RedisInstance.make_primary_key(pk))
    return stored


def _record(**data: Any) -> RedisInstance:
    """A RedisInstance from request data: masks in it become "keep the stored secret" on save."""
    try:
        return RedisInstance(**data)
    except DecryptionError:
        # Only the request's values are opened here: one of them looks like an envelope.
        raise HTTPException(422, "an encrypted value is not accepted; send the plaintext") from None


def _same_pk(pk: str, body_pk: str | None) -> None:
    if body_pk is not None and body_pk != pk:
        raise HTTPException(422, "pk in the body differs from the URL")


@app.post("/instances", response_model=RedisInstance, status_code=201)
def create_instance(body: InstanceCreate) -> RedisInstance:
    instance = _record(**body.model_dump())
    instance.save()
    log.info("created instance %s", instance.pk)
    return instance


@app.get("/instances", response_model=list[RedisInstance | UnreadableInstance])
def list_instances() -> list[RedisInstance | UnreadableInstance]:
    # Each record read on its own: one that cannot be decrypted is named in the list, instead of
    # failing the whole answer.
    instances: list[RedisInstance | UnreadableInstance] = []
    for pk in RedisInstance.all_pks():
        try:
            instances.append(RedisInstance.get(pk))
        except NotFoundError:  # deleted since the scan
            continue
        except DecryptionError as exc:
            # The details (key ids, field) are for the operator's log; the message holds no secret.
            log.error("%s listing instance %s: %s", type(exc).__name__, pk, exc)
            name = _stored_fields(pk).get("name")
            instances.append(UnreadableInstance(pk=pk, name=name, error=UNREADABLE))
    return sorted(instances, key=lambda i: (i.name or "", i.pk))


@app.get("/instances/{pk}", response_model=RedisInstance)
def get_instance(pk: str) -> RedisInstance:
    return RedisInstance.get(pk)


@app.put("/instances/{pk}", response_model=RedisInstance)
def replace_instance(pk: str, body: InstanceReplace) -> RedisInstance:
    _same_pk(pk, body.pk)
    if not _exists(pk):
        raise NotFoundError
    instance = _record(pk=pk, **body.model_dump(exclude={"pk"}))
    instance.save()  # masks are replaced by the stored secrets first, or refused
    log.info("replaced instance %s", pk)
    return instance


@app.patch("/instances/{pk}", response_model=RedisInstance)
def update_instance(pk: str, body: InstancePatch) -> RedisInstance:
    _same_pk(pk, body.pk)
    stored = _stored_fields(pk)
    if not stored:
        raise NotFoundError
    changes = body.model_dump(exclude_unset=True, exclude={"pk"})
    # The record is not read with get(), which decrypts every secret: a secret the PATCH leaves
    # alone is sent as a mask ("keep the stored one"), which save() alone opens, so a new value
    # replaces a stored secret that cannot be decrypted. The other fields are taken as stored.
    current: dict[str, Any] = {
        name: stored[name] for name in RedisInstance.model_fields if name in stored
    }
    for name in SECRETS:
        current[name] = "***" if stored.get(name) else None  # "" is how a hash stores None
    # Validated again (not model_copy): a mask among the changes becomes "keep existing".
    instance = _record(**{**current, **changes})
    instance.save()
    log.info("updated instance %s (%s)", pk, ", ".join(sorted(changes)) or "no change")
    return instance


@app.delete("/instances/{pk}", status_code=204)
def delete_instance(pk: str) -> Response:
    if not RedisInstance.delete(pk):
        raise NotFoundError
    log.info("deleted instance %s", pk)
    return Response(status_code=204)


@app.post("/instances/{pk}/ping", response_model=PingResult)
def ping_instance(pk: str) -> PingResult:
    instance = RedisInstance.get(pk)
    reachable, error = ping_url(instance.connection_url)  # the plaintext, used in-process only
    return PingResult(pk=pk, reachable=reachable, error=error)


# --- errors: clear for the client, never carrying a secret ---------------------------------------


def _safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # FastAPI's default 422 body repeats each error's "input": for a missing field that is the
    # whole request body, secrets included.
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]


@app.exception_handler(RequestValidationError)
async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _safe_errors(exc.errors())}, 422)


@app.exception_handler(ValidationError)
async def _invalid_record(_request: Request, exc: ValidationError) -> JSONResponse:
    return JSONResponse({"detail": _safe_errors(exc.errors())}, 422)


@app.exception_handler(MaskedSecretError)
async def _mask_not_a_secret(_request: Request, exc: MaskedSecretError) -> JSONResponse:
    # The library's messages name the field and show masks only.
    return JSONResponse({"detail": str(exc)}, 422)


@app.exception_handler(NotFoundError)
async def _not_found(_request: Request, _exc: NotFoundError) -> JSONResponse:
    return JSONResponse({"detail": "instance not found"}, 404)


@app.exception_handler(EncryptionError)
async def _encryption_failed(request: Request, exc: EncryptionError) -> JSONResponse:
    # DecryptionError, MasterKeyError: the details (key ids, record) are for the operator's log.
    log.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
    return JSONResponse({"detail": "internal error"}, 500)
