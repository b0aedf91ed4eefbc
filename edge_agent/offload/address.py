"""The offload server's address as config writes it (no gRPC import, so config can use it).

Two forms: gRPC, ``grpc://host:port`` or plain ``host:port`` (the default transport), and
HTTP, ``http://host:port`` with an optional base path (``http://gw:8000/triton``) for
the Open Inference Protocol v2 REST binary API. IPv6 addresses go in brackets.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Address", "parse_address", "parse_target"]

_GRPC = "grpc://"
_HTTP = "http://"


class Address(NamedTuple):
    scheme: str  # "grpc" or "http"
    target: str  # host:port
    path: str = ""  # HTTP only: a base path without a trailing slash, or ""


def parse_target(url: str) -> str:
    """``grpc://host:port`` or ``host:port`` (IPv6 in brackets) -> ``host:port``.

    Raises ValueError saying what is wrong otherwise.
    """
    target = url[len(_GRPC) :] if url.startswith(_GRPC) else url
    _check_target(url, target, "grpc://host:port or host:port")
    return target


def parse_address(url: str) -> Address:
    """A gRPC (see :func:`parse_target`) or ``http://host:port[/path]`` address."""
    if not url.startswith(_HTTP):
        return Address("grpc", parse_target(url))
    target, slash, path = url[len(_HTTP) :].partition("/")
    _check_target(url, target, "http://host:port[/path]")
    if any(c in path for c in " ?#"):
        raise ValueError(f"{url!r}: the path may not hold spaces, '?' or '#'")
    return Address("http", target, (slash + path).rstrip("/"))


def _check_target(url: str, target: str, expected: str) -> None:
    host, sep, port = target.rpartition(":")
    if "://" in target or "/" in target or " " in target or not sep or not host:
        raise ValueError(f"{url!r} is not {expected}")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"{url!r}: write an IPv6 address in brackets, [::1]:8001")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
