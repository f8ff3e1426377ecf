"""Object storage for sample images (S3 via the minio SDK) and image-reference reading.

Samples carry references, never bytes: ``s3://bucket/key``, ``file:///abs/path`` or a path.
"""

from __future__ import annotations

import io
import mimetypes
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import certifi
import urllib3
from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError

from infogrowth.records import BadInput, StoreUnavailable

if TYPE_CHECKING:
    from infogrowth.settings import Settings

# S3 error codes that mean "this reference points at nothing": a per-sample problem.
# Anything else (auth, outage) is an infrastructure failure and must propagate.
MISSING_CODES = frozenset(
    {"NoSuchKey", "NoSuchBucket", "InvalidBucketName", "XMinioInvalidObjectName"}
)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b.jpg' -> ('bucket', 'a/b.jpg'); ValueError if not a full object URI."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"s3 URI needs a bucket and a key: {uri!r}")
    return bucket, key


# minio's own client waits 5 minutes to connect and 5 to read, 5 times over: a gateway that
# accepts connections and never answers held a worker's model executor (and so every agent)
# for half an hour. Ours gives up in about a minute per call with StoreUnavailable, which the
# agents retry with backoff and offline commands report.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


def http_client(read_timeout_s: float = READ_TIMEOUT_S) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=read_timeout_s),
        maxsize=10,
        cert_reqs=ssl.CERT_REQUIRED,
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class ObjectStore:
    """One bucket on an S3-compatible endpoint ('host:port', no scheme)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            http_client=http_client(read_timeout_s),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        return cls(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
        )

    def __repr__(self) -> str:
        return f"ObjectStore({self.endpoint!r}, bucket={self.bucket!r})"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _locate(self, uri_or_key: str) -> tuple[str, str]:
        """A full s3:// URI may name another bucket; a bare key is in ours."""
        if uri_or_key.startswith("s3://"):
            return parse_s3_uri(uri_or_key)
        return self.bucket, uri_or_key.lstrip("/")

    def ensure_bucket(self) -> None:
        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket)
        except S3Error as exc:  # another worker created it between the two calls
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )
        return self.uri(key)

    def put_file(
        self, path: str | os.PathLike[str], key: str | None = None, content_type: str | None = None
    ) -> str:
        """Upload a local file (key defaults to its name); returns its s3:// URI."""
        path = Path(path)
        key = key or path.name
        kind = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.client.fput_object(self.bucket, key, str(path), content_type=kind)
        return self.uri(key)

    def get_bytes(self, uri_or_key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Whole object, or ``length`` bytes from ``offset``. FileNotFoundError if missing."""
        bucket, key = self._locate(uri_or_key)
        try:
            response = self.client.get_object(bucket, key, offset=offset, length=length or 0)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        except S3Error as exc:
            if exc.code in MISSING_CODES:
                raise FileNotFoundError(f"s3://{bucket}/{key}: {exc.code}") from None
            raise self.unavailable(exc) from None
        except HTTPError as exc:
            raise self.unavailable(exc) from None

    def unavailable(self, exc: S3Error | HTTPError) -> StoreUnavailable:
        """An infrastructure failure of the store as one line (never a sample's fault)."""
        if isinstance(exc, S3Error):
            return StoreUnavailable(f"S3 at {self.endpoint} ({self.bucket}): {exc.code}")
        # MaxRetryError wraps the cause: keep its last clause ("[Errno 111] Connection refused").
        cause = getattr(exc, "reason", None) or exc
        reason = " ".join(str(cause).split()).rsplit(": ", 1)[-1][:160]
        return StoreUnavailable(f"S3 endpoint at {self.endpoint} is unreachable ({reason})")

    def exists(self, uri_or_key: str) -> bool:
        bucket, key = self._locate(uri_or_key)
        try:
            self.client.stat_object(bucket, key)
        except S3Error as exc:
            if exc.code in MISSING_CODES or exc.code == "NoSuchObject":
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Keys (not URIs) under ``prefix``, recursively, in key order."""
        objects = self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
        return sorted(o.object_name for o in objects if o.object_name is not None)

    def delete(self, uri_or_key: str) -> None:
        bucket, key = self._locate(uri_or_key)
        self.client.remove_object(bucket, key)


def read_reference(ref: str | None, store: ObjectStore | None = None) -> bytes:
    """Bytes behind an image reference; BadInput (one line) when it cannot be read."""
    if not ref or not isinstance(ref, str) or not ref.strip():
        raise BadInput("no image reference")
    if ref.startswith("s3://"):
        return _read_s3(ref, store)
    if ref.startswith("file:"):
        return _read_path(_file_uri_path(ref), ref)
    scheme = urlparse(ref).scheme
    if len(scheme) > 1:  # one letter would be a Windows drive, not a scheme
        raise BadInput(f"unsupported image reference scheme {scheme!r}: {_clip(ref)}")
    return _read_path(Path(ref).expanduser(), ref)


def _read_s3(ref: str, store: ObjectStore | None) -> bytes:
    if store is None:
        raise BadInput(f"{_clip(ref)}: s3 reference but no object store is configured")
    try:
        return store.get_bytes(ref)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    except FileNotFoundError:
        raise BadInput(f"{_clip(ref)}: no such object") from None


def _file_uri_path(ref: str) -> Path:
    parsed = urlparse(ref)
    if parsed.netloc not in ("", "localhost"):
        raise BadInput(f"{_clip(ref)}: file URI on another host {parsed.netloc!r}")
    if not parsed.path:
        raise BadInput(f"{_clip(ref)}: file URI without a path")
    return Path(unquote(parsed.path))


def _read_path(path: Path, ref: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{_clip(ref)}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{_clip(ref)}: is a directory") from None
    except OSError as exc:
        raise BadInput(f"{_clip(ref)}: cannot read ({exc.strerror or exc})") from None


def _clip(ref: str, limit: int = 120) -> str:
    """References end up in one-line messages: keep them short."""
    return ref if len(ref) <= limit else ref[: limit - 3] + "..."
