"""Fixtures shared by every test directory: a real S3-compatible endpoint on localhost."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


class S3:
    """moto's S3 server on a free localhost port, reached through the standard AWS variables
    (set for this process and every subprocess it starts while the fixture lives)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3").create_bucket(Bucket=name)

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http")

    def upload(self, local: Path, url: str) -> None:
        """Copy a local directory to `url` (s3://bucket/prefix)."""
        import pyarrow.fs as pafs

        pafs.copy_files(
            str(local), url.removeprefix("s3://"), destination_filesystem=self.filesystem()
        )

    def write(self, key: str, data: bytes) -> None:
        with self.filesystem().open_output_stream(key) as f:
            f.write(data)

    def delete(self, key: str) -> None:
        self.filesystem().delete_file(key)


@pytest.fixture(scope="session")
def s3():
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    server = S3()
    env["AWS_ENDPOINT_URL"] = server.endpoint
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield server
    finally:
        server.server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
