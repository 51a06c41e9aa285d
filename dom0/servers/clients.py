"""The client checks, from the host, with the real clients: smbclient (Samba's), lp/lpstat
(Debian's cups-client) and curl, plus a small load loop of HTTP clients in Python threads.

Each returns numbers for `pvhyp bench servers` and raises ClientError (one line: what failed
and the client's last words) when the service does not do what the check asks.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import threading
import time

from dom0.images import servers as template

CLIENT_TIMEOUT = 600.0


class ClientError(Exception):
    """One line: which check failed and why."""


def _run(cmd: list[str], timeout: float = CLIENT_TIMEOUT) -> str:
    if shutil.which(cmd[0]) is None:
        raise ClientError(f"{cmd[0]} not found (Debian's {PACKAGES.get(cmd[0], cmd[0])})")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClientError(f"{cmd[0]}: no answer in {timeout:.0f}s") from None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise ClientError(f"{' '.join(cmd[:2])}: {lines[-1] if lines else f'status {proc.returncode}'}")
    return proc.stdout


PACKAGES = {"smbclient": "smbclient", "lp": "cups-client", "lpstat": "cups-client", "curl": "curl"}


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# smbclient gives up on a reply after 20 s by default; a session setup on a guest just up (smbd
# forking its child and doing NTLM's crypto on the software CPU) was seen to take longer
SMB_OPERATION_TIMEOUT = 120


def smbclient(port: int, command: str) -> str:
    return _run(["smbclient", f"//127.0.0.1/{template.SHARE}", "-p", str(port),
                 "--timeout", str(SMB_OPERATION_TIMEOUT),
                 "-U", f"{template.SMB_USER}%{template.SMB_PASSWORD}", "-c", command])


def smb_roundtrip(port: int, work_dir: str, mib: int = 10, name: str = "pvhyp-10MiB.bin") -> dict:
    """Put `mib` MiB of random bytes on batagor's share, get them back: equal sha256 or ClientError."""
    sent, got = os.path.join(work_dir, "smb-sent.bin"), os.path.join(work_dir, "smb-got.bin")
    with open(sent, "wb") as f:
        f.write(os.urandom(mib << 20))
    start = time.monotonic()
    smbclient(port, f"put {sent} {name}")
    put_s = time.monotonic() - start
    start = time.monotonic()
    smbclient(port, f"get {name} {got}")
    get_s = time.monotonic() - start
    want, have = sha256_file(sent), sha256_file(got)
    if want != have:
        raise ClientError(f"smbclient: {name} came back different (sha256 {have[:16]} != {want[:16]})")
    return {"mib": mib, "put_s": put_s, "get_s": get_s, "sha256": want, "name": name}


def smb_read(port: int, name: str, work_dir: str) -> bytes:
    """A file from batagor's share."""
    local = os.path.join(work_dir, "smb-read.bin")
    smbclient(port, f"get {name} {local}")
    with open(local, "rb") as f:
        return f.read()


def smb_write(port: int, name: str, data: bytes, work_dir: str) -> None:
    local = os.path.join(work_dir, "smb-write.bin")
    with open(local, "wb") as f:
        f.write(data)
    smbclient(port, f"put {local} {name}")


def print_job(port: int, path: str, timeout: float = CLIENT_TIMEOUT) -> dict:
    """`lp` the file to mieayam's queue; wait until `lpstat` lists the job as completed."""
    server = f"127.0.0.1:{port}"
    start = time.monotonic()
    out = _run(["lp", "-h", server, "-d", template.PRINTER, path])
    found = re.search(rf"request id is {re.escape(template.PRINTER)}-(\d+)", out)
    if not found:
        raise ClientError(f"lp: no request id in {out.strip()!r}")
    job = int(found.group(1))
    deadline = time.monotonic() + timeout
    while True:
        done = _run(["lpstat", "-h", server, "-W", "completed", "-o", template.PRINTER])
        if re.search(rf"^{re.escape(template.PRINTER)}-{job}\s", done, re.M):
            return {"job": job, "completed_s": time.monotonic() - start, "lpstat": done.strip()}
        if time.monotonic() > deadline:
            raise ClientError(f"lpstat: job {job} not completed in {timeout:.0f}s")
        time.sleep(1.0)


def spool_path(job: int) -> str:
    """Where mieayam's backend keeps job `job`'s bytes, inside its disk."""
    return f"{template.SPOOL_DIR}/job-{job}"


def read_from_disk(image: str, path: str, work_dir: str) -> bytes:
    """A file out of a stopped guest's ext4 disk (raw or qcow2): qemu-img to raw, then debugfs."""
    raw = os.path.join(work_dir, "disk.raw")
    try:
        _run(["qemu-img", "convert", "-O", "raw", image, raw])
        out = os.path.join(work_dir, "from-disk.bin")
        _run(["debugfs", "-R", f"dump {path} {out}", raw])
        if not os.path.exists(out):
            raise ClientError(f"debugfs: {path} is not on {image}")
        with open(out, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(raw):
            os.unlink(raw)


def curl_page(port: int) -> str:
    return _run(["curl", "-sS", "-f", "-m", "120", f"http://127.0.0.1:{port}/"])


def http_load(port: int, requests: int = 1000, clients: int = 10, timeout: float = 120.0) -> dict:
    """`requests` GETs of / from `clients` threads (a connection each, kept alive): every one a 200?"""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    share = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]

    def client(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        for _ in range(count):
            start = time.monotonic()
            try:
                conn.request("GET", "/")
                reply = conn.getresponse()
                reply.read()
                ok = reply.status == 200
                why = f"status {reply.status}"
            except (OSError, http.client.HTTPException) as e:
                ok, why = False, f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            with lock:
                if ok:
                    latencies.append(time.monotonic() - start)
                else:
                    failures.append(why)
        conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

    return {"requests": requests, "clients": clients, "ok": len(latencies), "failed": len(failures),
            "first_failure": failures[0] if failures else "", "seconds": elapsed,
            "per_second": len(latencies) / elapsed if elapsed else 0.0,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": pct(100)}
