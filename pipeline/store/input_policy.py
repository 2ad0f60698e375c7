"""Which inputs a run may read: a manifest written by someone else must not make cluster
workers call internal services, a cloud metadata address, or read a device.

- Allowed by default: local regular files and the object stores (s3, gs, az, ...).
- http(s) only when the operator opts in (`--allow-http` or NST_ALLOW_HTTP=1), and even then
  never a host that resolves to a loopback, link-local, private or otherwise reserved address
  unless also allowed (`--allow-private-hosts` or NST_ALLOW_PRIVATE_HOSTS=1); redirects are not
  followed (a public URL could redirect to a private one).
- Other protocols (ftp, sftp, ssh, git, zip, ...) are refused.
- Every input read is limited in bytes (NST_MAX_INPUT_BYTES, default 256 MiB for images; weights
  and model files 4 GiB), checked on the size the store reports and again while streaming,
  before anything is decoded. Devices, FIFOs and other non-regular local files are refused.

The policy lives in the environment so that Ray workers inherit it (embedded Ray) or receive
it (``runtime_env`` on a cluster, see pipeline.run.scheduler.init_ray).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.errors import InputError

ALLOW_HTTP, ALLOW_PRIVATE, MAX_BYTES = (
    "NST_ALLOW_HTTP",
    "NST_ALLOW_PRIVATE_HOSTS",
    "NST_MAX_INPUT_BYTES",
)
ENV_VARS = (ALLOW_HTTP, ALLOW_PRIVATE, MAX_BYTES)
DEFAULT_MAX_BYTES = 256 * 2**20
WEIGHTS_MAX_BYTES = 4 * 2**30
OBJECT_STORES = ("s3", "gs", "az", "abfs", "abfss", "adl", "oss", "r2", "memory")


@dataclass(frozen=True)
class InputPolicy:
    allow_http: bool = False
    allow_private_hosts: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def current(cls) -> InputPolicy:
        on = ("1", "true", "yes")
        return cls(
            os.environ.get(ALLOW_HTTP, "").lower() in on,
            os.environ.get(ALLOW_PRIVATE, "").lower() in on,
            int(os.environ.get(MAX_BYTES) or DEFAULT_MAX_BYTES),
        )

    def export(self) -> None:
        """Make this the policy of this process and of the Ray workers it starts."""
        os.environ[ALLOW_HTTP] = "1" if self.allow_http else ""
        os.environ[ALLOW_PRIVATE] = "1" if self.allow_private_hosts else ""
        os.environ[MAX_BYTES] = str(self.max_bytes)


def check_uri(uri: str, policy: InputPolicy | None = None) -> None:
    """Refuse an input the policy does not allow (InputError naming it and why)."""
    p = policy or InputPolicy.current()
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else "file"
    if scheme in ("file", "local"):
        _check_local(uri)
    elif scheme in ("http", "https"):
        _check_http(uri, p)
    elif scheme not in OBJECT_STORES and scheme not in ("gcs", "s3a"):
        raise InputError(
            f"{uri}: protocol {scheme!r} is not allowed for inputs (local files, "
            f"{', '.join(OBJECT_STORES[:4])}, ...; http(s) with --allow-http)"
        )


def check_source(uri: str, policy: InputPolicy | None = None) -> None:
    """Refuse a place to list (a folder, a glob, a list file's location) that the policy does
    not allow, before the listing's first request: the same rule as for one input, except
    that a local folder is what is expected there."""
    p = policy or InputPolicy.current()
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else "file"
    if scheme not in ("file", "local"):
        check_uri(uri, p)


def _check_local(uri: str) -> None:
    path = uri.split("://", 1)[1] if "://" in uri else uri
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # reading it says "not found"
    except OSError as e:
        raise InputError(f"{uri}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{uri}: not a regular file (a device, pipe or folder is never read)")


def _check_http(uri: str, p: InputPolicy) -> None:
    if not p.allow_http:
        raise InputError(
            f"{uri}: http(s) inputs are off; an operator can allow them with --allow-http "
            f"or {ALLOW_HTTP}=1"
        )
    host = urlsplit(uri).hostname or ""
    if p.allow_private_hosts:
        return
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as e:
        raise InputError(f"{uri}: host {host!r} does not resolve ({e})") from None
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not addr.is_global:
            raise InputError(
                f"{uri}: host {host!r} is a loopback, link-local or private address ({addr}); "
                f"allowed only with --allow-private-hosts or {ALLOW_PRIVATE}=1"
            )


def check_size(uri: str, size: int | None, limit: int) -> None:
    if size is not None and size > limit:
        raise InputError(
            f"{uri}: {size:,} bytes, above the input limit of {limit:,} "
            f"(raise {MAX_BYTES} or --max-input-bytes to allow)"
        )
