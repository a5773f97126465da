"""Loaded by every Python process whose PYTHONPATH starts with this folder (the pipeline and its notebook kernels,
in tests/test_pipeline.py): refuses and records, in $ES2_NET_LOG, every name lookup or connection that would leave
the machine. Loopback stays open (the kernels talk to papermill over it)."""

import os
import socket

_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}
_getaddrinfo, _connect = socket.getaddrinfo, socket.socket.connect


def _refuse(what: str) -> OSError:
    with open(os.environ["ES2_NET_LOG"], "a") as log:
        log.write(f"pid {os.getpid()}: {what}\n")
    return OSError(f"network blocked by the test: {what}")


def getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL:
        raise _refuse(f"getaddrinfo {host}")
    return _getaddrinfo(host, *args, **kwargs)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
        raise _refuse(f"connect {address}")
    return _connect(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
