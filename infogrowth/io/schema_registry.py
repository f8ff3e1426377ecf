"""Schema Registry mode (``--schema-registry-url``): records carry the registry's schema ids.

Without a URL the fixed ids of schemas/registry.json are used (no server needed). With one,
each schema is registered (once per process) under the subject ``infogrowth.<Name>``
(RecordNameStrategy: our serdes do not know the topic) and its id goes into the Confluent
wire header, so Kafka Connect, Flink or Spark with that registry read the topics; ids this
process did not register (older versions, other writers) are fetched from the registry.

We speak the two REST endpoints used (``POST /subjects/{subject}/versions``,
``GET /schemas/ids/{id}``) with the standard library: confluent-kafka's
``SchemaRegistryClient`` needs its ``schemaregistry`` extra (authlib, httpx, cachetools,
certifi>=2026.10.19), which the package index of this project cannot resolve. Tested against
a stub of that REST API (tests/test_schema_registry.py), not a real registry.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import fastavro

from infogrowth.io import avro

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(RuntimeError):
    """The registry is unreachable or refused a request (one line)."""


class SchemaRegistry:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, tuple[str | None, dict[str, Any] | None]] = {}
        self._parsed: dict[int, dict[str, Any]] = {}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            raise RegistryError(
                f"schema registry at {self.url}: {method} {path}: HTTP {exc.code} {detail}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise RegistryError(
                f"schema registry at {self.url} is unreachable ({reason})"
            ) from None

    def register(self, name: str) -> int:
        """The registry's id of the current schema ``name`` (registered if new)."""
        if name not in self._ids:
            schema = plain_schema(avro.expanded(name))
            subject = quote(f"{avro.NAMESPACE}.{name}", safe="")
            answer = self._request(
                "POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)}
            )
            self._ids[name] = int(answer["id"])
            self._schemas[self._ids[name]] = (name, schema)
        return self._ids[name]

    def _lookup(self, schema_id: int) -> tuple[str | None, dict[str, Any] | None]:
        if schema_id not in self._schemas:
            try:
                answer = self._request("GET", f"/schemas/ids/{schema_id}")
            except RegistryError as exc:
                if "HTTP 404" not in str(exc):
                    raise
                answer = None
            schema = json.loads(answer["schema"]) if answer else None
            name = _our_name(schema)
            self._schemas[schema_id] = (name, schema) if name else (None, None)
        return self._schemas[schema_id]

    def name_of(self, schema_id: int) -> str | None:
        """Our schema name of a registry id; None for an unknown id or another's schema."""
        return self._lookup(schema_id)[0]

    def writer(self, schema_id: int) -> dict[str, Any]:
        """The parsed schema a record with this id was written with."""
        if schema_id not in self._parsed:
            schema = self._lookup(schema_id)[1]
            if schema is None:
                raise avro.MalformedMessage(f"schema id {schema_id} is not an infogrowth schema")
            self._parsed[schema_id] = fastavro.parse_schema(schema)
        return self._parsed[schema_id]


def plain_schema(node: Any) -> Any:
    """A schema without fastavro's bookkeeping keys (``__fastavro_parsed``, ...)."""
    if isinstance(node, dict):
        return {k: plain_schema(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [plain_schema(x) for x in node]
    return node


def _our_name(schema: Any) -> str | None:
    """``Name`` of a record schema in our namespace ("infogrowth.Name" or a namespace key)."""
    if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
        return None
    namespace, _, name = schema["name"].rpartition(".")
    namespace = namespace or schema.get("namespace", "")
    return name if namespace == avro.NAMESPACE else None


def use_registry(url: str) -> None:
    """Registry ids from now on in this process (a URL), or the fixed ids again ("")."""
    avro.set_schema_registry(SchemaRegistry(url) if url else None)
