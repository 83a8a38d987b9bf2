"""An S3-compatible server for tests: moto's standalone server (the S3 HTTP API) on loopback, an OS-chosen port.

Nothing outside this machine can be reached, so the S3 backend is tested against this server over real HTTP,
with boto3 as in production; only the endpoint differs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
# moto takes any credentials; the server's boto3 reads these from the environment, as it would AWS's.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "ripple-test",
    "AWS_SECRET_ACCESS_KEY": "ripple-test-secret",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata endpoint that is not there
}


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's server on 127.0.0.1; yields its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._server.server_port}"
    finally:
        server.stop()


def client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def new_bucket(endpoint: str) -> str:
    """A fresh, empty bucket, so each test sees only its own objects."""
    name = f"ripple-{uuid.uuid4().hex[:16]}"
    client(endpoint).create_bucket(Bucket=name)
    return name


def keys(endpoint: str, bucket: str) -> list[str]:
    listing = client(endpoint).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))
