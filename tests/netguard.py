"""A network guard that records: every DNS look-up of a name that is not this machine, and every
connection attempt to an address that is not loopback, is written down and refused.

Libraries often catch the error (ultralytics' font and online checks do), so refusing alone proves
nothing: the record is what the tests check. Installed in the test process by conftest.py and in
every Python subprocess a test starts through `guard_site/sitecustomize.py`, which appends to the
JSON-lines file named by XRAY_NETGUARD_LOG.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import traceback

LOG_ENV = "XRAY_NETGUARD_LOG"
records: list[dict] = []
_lock = threading.Lock()
_real: dict = {}


def _local_names() -> set[str]:
    names = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}
    try:
        names.add(_real.get("gethostname", socket.gethostname)().lower())
    except OSError:
        pass
    return names


def is_local(host) -> bool:
    """Loopback or unspecified addresses, this machine's own names, unix sockets."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    h = str(host).strip().strip("[]").lower()
    if h in _local_names():
        return True
    try:
        ip = ipaddress.ip_address(h.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _record(kind: str, target) -> None:
    entry = {
        "kind": kind,
        "target": str(target),
        "pid": os.getpid(),
        "stack": "".join(traceback.format_stack(limit=14)[:-2]),
    }
    with _lock:
        records.append(entry)
        path = os.environ.get(LOG_ENV)
        if path:
            try:
                with open(path, "a") as fh:
                    fh.write(json.dumps(entry) + "\n")
            except OSError:
                pass


def _refuse_lookup(host):
    _record("dns", host)
    raise socket.gaierror(
        socket.EAI_NONAME, f"network disabled by the test guard: look-up of {host!r}"
    )


def install() -> None:
    """Patch the socket module (idempotent)."""
    if _real:
        return
    _real.update(
        getaddrinfo=socket.getaddrinfo,
        gethostbyname=socket.gethostbyname,
        gethostbyname_ex=socket.gethostbyname_ex,
        gethostbyaddr=socket.gethostbyaddr,
        gethostname=socket.gethostname,
        connect=socket.socket.connect,
        connect_ex=socket.socket.connect_ex,
        sendto=socket.socket.sendto,
    )

    def getaddrinfo(host, *args, **kwargs):
        if not is_local(host):
            _refuse_lookup(host)
        return _real["getaddrinfo"](host, *args, **kwargs)

    def gethostbyname(host):
        if not is_local(host):
            _refuse_lookup(host)
        return _real["gethostbyname"](host)

    def gethostbyname_ex(host):
        if not is_local(host):
            _refuse_lookup(host)
        return _real["gethostbyname_ex"](host)

    def gethostbyaddr(host):
        if not is_local(host):
            _refuse_lookup(host)
        return _real["gethostbyaddr"](host)

    def _target(sock, address):
        if sock.family == getattr(socket, "AF_UNIX", None):
            return None
        return address[0] if isinstance(address, tuple) else address

    def connect(self, address):
        host = _target(self, address)
        if host is not None and not is_local(host):
            _record("connect", address)
            raise ConnectionRefusedError(
                f"network disabled by the test guard: connection to {address}"
            )
        return _real["connect"](self, address)

    def connect_ex(self, address):
        host = _target(self, address)
        if host is not None and not is_local(host):
            _record("connect", address)
            return 111  # ECONNREFUSED
        return _real["connect_ex"](self, address)

    def sendto(self, data, *args):
        address = args[-1]
        host = _target(self, address)
        if host is not None and not is_local(host):
            _record("sendto", address)
            raise ConnectionRefusedError(
                f"network disabled by the test guard: datagram to {address}"
            )
        return _real["sendto"](self, data, *args)

    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex
    socket.gethostbyaddr = gethostbyaddr
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto


def mark() -> tuple[int, int]:
    """A position in the records: (in this process, bytes of the subprocesses' log)."""
    path = os.environ.get(LOG_ENV)
    size = os.path.getsize(path) if path and os.path.exists(path) else 0
    return len(records), size


def since(position: tuple[int, int]) -> list[dict]:
    """Attempts recorded after `position`, by this process and by its subprocesses."""
    n, size = position
    found = [r for r in records[n:]]
    path = os.environ.get(LOG_ENV)
    if path and os.path.exists(path):
        with open(path) as fh:
            fh.seek(size)
            found += [
                r
                for r in (json.loads(line) for line in fh if line.strip())
                if r["pid"] != os.getpid()
            ]
    return found


def describe(found: list[dict]) -> str:
    lines = [f"{len(found)} network attempt(s) refused and recorded:"]
    for r in found[:5]:
        lines.append(f"- {r['kind']} {r['target']} (pid {r['pid']}) from:\n{r['stack']}")
    return "\n".join(lines)


class expected:
    """`with expected() as got:` a test provokes attempts on purpose (in this process); they are
    moved from the records into `got`, so the test can assert on them and is not failed for them."""

    def __enter__(self) -> list[dict]:
        self.start = len(records)
        self.got: list[dict] = []
        return self.got

    def __exit__(self, *exc):
        with _lock:
            self.got.extend(records[self.start :])
            del records[self.start :]
        return False
