"""Checks shared by the settings models: patterns, URLs, hosts and ports, and
the error every configuration problem becomes."""

from __future__ import annotations

import ipaddress
import re

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
)
from pydantic_core import PydanticCustomError

# Patterns are applied with fullmatch: with match, "$" also matches before a
# final newline, so "a.b\n" would pass. Digits are [0-9]: \d takes any
# Unicode digit.
XDM_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*")
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
IAM_ROLE_ARN = re.compile(r"arn:aws[a-z\-]*:iam::[0-9]{12}:role/.+")
# Kafka's own rule for topic names ("." and ".." are refused apart).
KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._\-]{1,249}")
# A DNS host name as botocore takes it for an endpoint (labels of letters,
# digits and inner hyphens, an optional final dot); Kafka hosts may also hold
# "_" (Docker Compose service names).
HOST_NAME = re.compile(
    r"([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.?"
)
KAFKA_HOST_NAME = re.compile(
    r"([A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?\.?"
)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


def invalid(message: str) -> PydanticCustomError:
    # The message is shown after the key's path, as "kafka.sasl_password: <message>".
    return PydanticCustomError("invalid_setting", message)


def has_space_or_control(text: str) -> bool:
    return any(char.isspace() or not char.isprintable() for char in text)


def host_port_problem(text: str, *, port_required: bool, host_name: re.Pattern[str]) -> str | None:
    """What is wrong with ``host[:port]`` or ``[ipv6][:port]``; None if nothing."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return "the IPv6 host has no closing bracket"
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"host [{host}] in brackets is not an IPv6 address"
        if rest and not rest.startswith(":"):
            return f"unexpected {rest!r} after the host [{host}]"
        port = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            return "write an IPv6 host in brackets, as [::1]:9092"
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
        if not host:
            return "no host"
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                return f"host {host!r} is not an IPv4 address"
        elif len(host.rstrip(".")) > 253 or not host_name.fullmatch(host):
            return f"host {host!r} is not a host name"
    if port is None:
        return "no port: write host:port" if port_required else None
    if not port:
        return "empty port"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def url_problem(url: str) -> str | None:
    """What is wrong with an http(s) endpoint URL; None if nothing. Never quotes the URL."""
    if has_space_or_control(url):
        return "whitespace or control characters in the URL"
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in ("http", "https"):
        return "not an http:// or https:// URL"
    if "?" in rest:
        return "a query (?...) is not allowed in an endpoint URL"
    if "#" in rest:
        return "a fragment (#...) is not allowed in an endpoint URL"
    authority = rest.partition("/")[0]
    if "@" in authority:
        return "credentials in the URL are not allowed; use auth"
    if not authority:
        return "no host: write http://host[:port]"
    return host_port_problem(authority, port_required=False, host_name=HOST_NAME)


class Strict(BaseModel):
    # Unknown keys are configuration mistakes: refuse them, naming the key.
    model_config = ConfigDict(extra="forbid", frozen=True)


def no_repeats(values: list[str], message: str) -> None:
    if len(set(values)) != len(values):
        raise ValueError(message)


def secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()
