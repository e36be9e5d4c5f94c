"""A local S3-protocol server (moto's, in its own process) with one bucket, for tests.

The platform reaches it as it would reach AWS S3 or MinIO: ``MODELPLANE_ARTIFACT_URI=
s3://bucket/prefix`` and the standard ``AWS_*`` variables (``env``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class S3Server:
    bucket: str = "modelplane-artifacts"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 30.0) -> S3Server:
        from tests.conftest import free_port

        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
                    "AWS_ACCESS_KEY_ID": "modelplane-test", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
                    "AWS_DEFAULT_REGION": "us-east-1"}
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(self.env["AWS_ENDPOINT_URL"], timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                            region_name=self.env["AWS_DEFAULT_REGION"])

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
