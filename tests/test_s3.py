"""ObjectStore and read_reference against a real S3 gateway, plus local references."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from minio import Minio
from minio.error import S3Error

from infogrowth.io.store import ObjectStore, parse_s3_uri, read_reference
from infogrowth.records import BadInput, StoreUnavailable
from infogrowth.settings import Settings

if TYPE_CHECKING:
    from conftest import S3Server


def _bucket() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(s3: S3Server) -> ObjectStore:
    return s3.store(_bucket())


@pytest.mark.s3
def test_put_get_list(store: ObjectStore) -> None:
    uri = store.put_bytes("img/a.jpg", b"\xff\xd8jpeg", "image/jpeg")
    assert uri == f"s3://{store.bucket}/img/a.jpg"
    store.put_bytes("img/b.png", b"png")
    store.put_bytes("other/c.txt", b"c")
    assert store.get_bytes(uri) == b"\xff\xd8jpeg"
    assert store.get_bytes("img/a.jpg") == b"\xff\xd8jpeg"
    assert store.list("img/") == ["img/a.jpg", "img/b.png"]
    assert store.list() == ["img/a.jpg", "img/b.png", "other/c.txt"]
    assert store.exists(uri) and not store.exists("img/nope.jpg")


@pytest.mark.s3
def test_range_read(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    uri = store.put_bytes("big.bin", data)
    assert store.get_bytes(uri, offset=1000, length=10) == data[1000:1010]
    assert store.get_bytes(uri, offset=len(data) - 5) == data[-5:]


@pytest.mark.s3
def test_put_file_and_minio_view(store: ObjectStore, s3: S3Server, tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(b"\x89PNG fake")
    uri = store.put_file(path, "pets/cat.png")
    client = Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
    stat = client.stat_object(store.bucket, "pets/cat.png")
    assert stat.size == len(b"\x89PNG fake") and stat.content_type == "image/png"
    assert uri == f"s3://{store.bucket}/pets/cat.png"
    assert store.bucket in [b.name for b in client.list_buckets()]


@pytest.mark.s3
def test_ensure_bucket_is_idempotent(s3: S3Server) -> None:
    store = s3.store(_bucket())
    store.ensure_bucket()
    store.ensure_bucket()


@pytest.mark.s3
def test_wrong_secret_is_rejected(s3: S3Server) -> None:
    bad = ObjectStore(s3.endpoint, s3.access_key, "not-the-secret", "whatever")
    with pytest.raises(S3Error):
        bad.client.list_buckets()


@pytest.mark.s3
def test_read_reference_s3(store: ObjectStore) -> None:
    uri = store.put_bytes("x.jpg", b"bytes")
    assert read_reference(uri, store) == b"bytes"
    with pytest.raises(BadInput, match="no such object"):
        read_reference(f"s3://{store.bucket}/missing.jpg", store)
    with pytest.raises(BadInput, match="no such object"):
        read_reference(f"s3://{_bucket()}/x.jpg", store)


def test_read_reference_s3_without_store() -> None:
    with pytest.raises(BadInput, match="no object store"):
        read_reference("s3://bucket/key.jpg", None)


def test_read_reference_local(tmp_path: Path) -> None:
    path = tmp_path / "a b.jpg"
    path.write_bytes(b"local")
    assert read_reference(str(path)) == b"local"
    assert read_reference(path.as_uri()) == b"local"  # file:///...a%20b.jpg
    assert read_reference(f"file://{path}") == b"local"


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("", "no image reference"),
        (None, "no image reference"),
        ("/definitely/not/here.jpg", "no such file"),
        ("file:///definitely/not/here.jpg", "no such file"),
        ("file://otherhost/x.jpg", "another host"),
        ("http://example.org/x.jpg", "unsupported"),
        ("s3://bucket-only", "bucket and a key"),
    ],
)
def test_read_reference_bad(ref: str | None, words: str) -> None:
    with pytest.raises(BadInput, match=words) as info:
        read_reference(ref, None if not (ref or "").startswith("s3://") else _Unused())
    assert "\n" not in str(info.value)


def test_read_reference_directory_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="directory"):
        read_reference(str(tmp_path))
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(b"x")
    locked.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(BadInput, match="cannot read"):
            read_reference(str(locked))


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://b/k/x.jpg") == ("b", "k/x.jpg")
    with pytest.raises(ValueError):
        parse_s3_uri("s3://b/")


def test_from_settings() -> None:
    store = ObjectStore.from_settings(Settings(s3_endpoint="127.0.0.1:1", s3_bucket="bk"))
    assert store.bucket == "bk" and store.uri("k") == "s3://bk/k"


class _Unused(ObjectStore):
    """A store that must not be contacted (the URI is rejected before any request)."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1:1", "unused", "unused-secret", "unused")


def test_a_gateway_that_never_answers_is_unavailable_not_a_hang() -> None:
    """A server that accepts the connection and sends nothing: minio's own client would wait
    5 minutes a try, 5 tries; ours gives up after its read timeout (and 2 retries)."""
    silent = socket.create_server(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever reads or answers
    host, port = silent.getsockname()
    store = ObjectStore(f"{host}:{port}", "key", "secret-key", "bucket", read_timeout_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.get_bytes("some/key")
    finally:
        silent.close()
    assert time.monotonic() - started < 10
