"""A child process cut off from the network: a fresh network namespace holding only loopback
(`unshare --net --map-root-user`, where the system allows unprivileged user namespaces), else the
child's `socket` module refusing every non-loopback connect, send and name lookup (best effort:
native code can bypass it). Used by `selftest`; any check that must prove it needs no network can
use `run_isolated`."""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NAMESPACE = "network namespace"
"""Isolation by a fresh network namespace that holds only loopback."""
SOCKETS_REFUSED = "sockets refused"
"""Isolation by the child's `socket` module refusing every non-loopback address."""
NO_NETWORK = "network disabled by mlcache selftest"


@functools.lru_cache(maxsize=1)
def isolation_method() -> str:
    """`NAMESPACE` when a trial `unshare --net --map-root-user` runs Python here, else
    `SOCKETS_REFUSED` (no unshare, not Linux, or user namespaces refused, as in many containers)."""
    unshare = shutil.which("unshare")
    if not sys.platform.startswith("linux") or unshare is None:
        return SOCKETS_REFUSED
    try:
        trial = subprocess.run(
            [unshare, "--net", "--map-root-user", sys.executable, "-c", ""],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return SOCKETS_REFUSED
    return NAMESPACE if trial.returncode == 0 else SOCKETS_REFUSED


def checked_method(method: str) -> str:
    if method not in (NAMESPACE, SOCKETS_REFUSED):
        raise ValueError(f"unknown isolation method {method!r}; use {NAMESPACE!r} or {SOCKETS_REFUSED!r}")
    return method


def isolated_command(code: str, args: Sequence[str], method: str) -> list[str]:
    """The argv that runs `code` (with `args` as `sys.argv[1:]`) in a child cut off the network."""
    boot = "loopback_up" if method == NAMESPACE else "refuse_sockets"
    bootstrap = (
        "import sys\n"
        f"from mlcache.isolation import {boot} as _isolate\n"
        "_isolate()\n"
        "del _isolate\n"
        "exec(compile(sys.argv.pop(1), '<isolated>', 'exec'))\n"
    )
    python = [sys.executable, "-c", bootstrap, code, *args]
    if method == NAMESPACE:
        return [shutil.which("unshare") or "unshare", "--net", "--map-root-user", *python]
    return python


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: this one without any `MLCACHE_*` or `MLFLOW_*` setting (no
    tracking server, no upstream tier, nothing but the bundle), mlcache importable from where this
    process has it, MLflow's telemetry off, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCACHE_", "MLFLOW_"))}
    package_root = str(Path(__file__).resolve().parent.parent)
    if package_root not in _site_dirs():  # a source checkout: the child finds this mlcache too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "true"
    env.update(extra or {})
    return env


def _site_dirs() -> set[str]:
    """Where installed packages live (already on the child's path; never put ahead of the stdlib)."""
    import site

    found = [*site.getsitepackages(), site.getusersitepackages()]
    return {str(Path(p).resolve()) for p in found if p}


def run_isolated(
    code: str,
    args: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float | None = None,
    method: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run Python `code` in a child process with no network (the way `selftest` runs its loads),
    its output captured as text. `method` forces `NAMESPACE` or `SOCKETS_REFUSED` (default:
    `isolation_method()`); `env` defaults to `child_env()`."""
    argv = isolated_command(code, args, checked_method(method or isolation_method()))
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env() if env is None else env,
        cwd=cwd,
        timeout=timeout,
    )


def loopback_up() -> None:
    """Bring `lo` up in the child's fresh network namespace (it starts down), so loopback works
    while nothing else exists. Best effort: without it there is no network at all."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _ip(host: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `host` spells out (no lookup needed to use it), if it is one."""
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return None


def _loopback_host(host: Any) -> bool:
    if isinstance(host, (str, bytes)) and os.fsdecode(host).lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def refuse_sockets() -> None:
    """Make this process's `socket` module refuse every connection, datagram and name lookup
    that is not for loopback, with an `OSError` saying the network is disabled. Local sockets
    (`AF_UNIX`, socket pairs) and loopback keep working."""
    import socket

    inet = (socket.AF_INET, socket.AF_INET6)

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in inet and not (isinstance(address, tuple) and address and _loopback_host(address[0])):
            raise OSError(errno.ENETUNREACH, f"{NO_NETWORK}: {address!r}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_sendmsg = socket.socket.sendto, socket.socket.sendmsg
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *rest: Any) -> int:
        check(self, rest[-1] if rest else None)
        return real_sendto(self, data, *rest)

    def sendmsg(self: socket.socket, buffers: Any, *rest: Any) -> int:
        if len(rest) >= 3 and rest[2] is not None:
            check(self, rest[2])
        return real_sendmsg(self, buffers, *rest)

    def getaddrinfo(host: Any, *rest: Any, **kwargs: Any) -> Any:
        if host is not None and _ip(host) is None and not _loopback_host(host):
            raise socket.gaierror(socket.EAI_NONAME, f"{NO_NETWORK}: no name lookup of {host!r}")
        return real_getaddrinfo(host, *rest, **kwargs)

    def no_lookup(host: Any, *rest: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, f"{NO_NETWORK}: no name lookup of {host!r}")

    real_by_name, real_by_name_ex = socket.gethostbyname, socket.gethostbyname_ex

    def gethostbyname(host: str) -> Any:
        return real_by_name(host) if _loopback_host(host) else no_lookup(host)

    def gethostbyname_ex(host: str) -> Any:
        return real_by_name_ex(host) if _loopback_host(host) else no_lookup(host)

    methods = {"connect": connect, "connect_ex": connect_ex, "sendto": sendto, "sendmsg": sendmsg}
    for name, method in methods.items():
        setattr(socket.socket, name, method)
    lookups = {"getaddrinfo": getaddrinfo, "gethostbyname": gethostbyname, "gethostbyname_ex": gethostbyname_ex}
    for name, lookup in {**lookups, "gethostbyaddr": no_lookup}.items():
        setattr(socket, name, lookup)
