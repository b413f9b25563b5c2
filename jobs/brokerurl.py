"""The broker URL's secrets and its connection failures: rules both sides apply.

A broker URL may carry a password in two places: its userinfo (`redis://:PW@host`) and its
query string (`redis://host/0?password=PW`, which redis-py reads but kombu cannot parse).
`canonical_url` moves the query-string one into the userinfo, so Celery, kombu and redis-py
all see one shape; `redact_url` hides both; `redact_text` hides every secret of every broker
URL this process has used (`remember_secrets`) in any message, whatever printed the URL.

`connection_problem` tells a broker that will never answer this URL (a wrong password, TLS
to a plain port, a certificate refused) from one that is restarting: the first kind is an
error at once, the second is waited for (orchestrator/broker.py, worker/cli.py).

Example::

    url = canonical_url("redis://h:6379/0?password=s%40x")  # 'redis://:s%40x@h:6379/0'
    redact_url(url)                                         # 'redis://:***@h:6379/0'
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

# Seconds to open a TCP connection and finish the TLS handshake with the broker: a broker
# that has not answered by then is down or is not speaking this protocol.
CONNECT_TIMEOUT_S = 5.0

_MASK = "***"
# Query parameters that hold a secret (redis-py passes `password`, `ssl_password`... on).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|credential", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
_secrets: set[str] = set()


def _is_secret(name: str) -> bool:
    return bool(_SECRET_PARAM.search(name))


def canonical_url(url: str) -> str:
    """`url` with a `?password=`/`?username=` query parameter moved into its userinfo (kombu
    reads only the userinfo); a URL with both a userinfo password and a query one keeps the
    userinfo's, as redis-py does. Anything else is returned as given."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return url
    found = {name: value for name, value in query if name in ("password", "username")}
    if not found:
        return url
    user = parts.username if parts.username is not None else found.get("username", "")
    password = parts.password if parts.password is not None else found.get("password")
    host = parts.netloc.rpartition("@")[2]
    auth = quote(unquote(user), safe="")
    if password is not None:
        auth += ":" + quote(unquote(password), safe="")
    rest = urlencode([(n, v) for n, v in query if n not in ("password", "username")])
    return urlunsplit((parts.scheme, f"{auth}@{host}", parts.path, rest, parts.fragment))


def redact_url(url: str) -> str:
    """`redis://:secret@host/0?ssl_password=x` -> `redis://:***@host/0?ssl_password=***`:
    URLs are printed, passwords never (the userinfo's nor a query string's)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return redact_text(url)
    netloc_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
                     default=len(rest))  # fmt: skip
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    creds, at, host = netloc.rpartition("@")
    if at:
        user, colon, _password = creds.partition(":")
        netloc = f"{user}:{_MASK}@{host}" if colon else f"{user}@{host}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = (
            "&".join(
                f"{name}{eq}{_MASK if eq and _is_secret(unquote(name)) else value}"
                for name, eq, value in pairs
            )
            + f"{hash_}{fragment}"
        )
    return f"{scheme}{sep}{netloc}{path}{qmark}{query}"


def url_secrets(url: str) -> set[str]:
    """Every secret `url` holds, as written and percent-decoded."""
    try:
        parts = urlsplit(url)
        values = [parts.password or ""]
        values += [v for n, v in parse_qsl(parts.query, keep_blank_values=True) if _is_secret(n)]
    except ValueError:  # an unparsable URL: hide its whole userinfo and query
        creds = url.partition("://")[2].rpartition("@")[0]
        values = [creds.partition(":")[2], url.partition("?")[2]]
    found = {v for v in values if v} | {unquote(v) for v in values if v}
    return {v for v in found | {quote(v, safe="") for v in found} if len(v) >= 3}


def has_password(url: str) -> bool:
    """Whether `url` carries a password (in its userinfo or its query string)."""
    return bool(url_secrets(url))


def remember_secrets(url: str) -> None:
    """Have `redact_text` hide `url`'s secrets from every message this process prints."""
    _secrets.update(url_secrets(url))


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted and every remembered secret replaced by ***."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    for secret in sorted(_secrets, key=len, reverse=True):  # a longer one may hold a shorter
        text = text.replace(secret, _MASK)
    return text


def connection_problem(url: str, exc: BaseException) -> str | None:
    """Why `url` will never work, when `exc` (from connecting) shows it; None when the broker
    may only be down or restarting (connection refused or reset, loading its data)."""
    # Here, not above: every `orch` command redacts URLs, few meet a connection failure.
    import ssl

    import redis

    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return f"the broker refused the credentials ({exc}): check the password"
    if isinstance(exc, redis.ResponseError) and "NOAUTH" in str(exc):
        return "the broker needs a password: put it in the URL (redis://:PASSWORD@host:port/0)"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, ssl.SSLError) or isinstance(cause, ssl.SSLError) or "SSL" in str(exc):
        return f"the TLS connection failed ({exc}): check the CA (ssl_ca_certs) and the port"
    if isinstance(exc, redis.TimeoutError) and urlsplit(url).scheme == "rediss":
        return _tls_timeout_problem(url)
    return None


def _tls_timeout_problem(url: str) -> str | None:
    """A rediss:// connect that timed out: if the port answers a plain PING, it is a plain
    Redis port (Redis waits for the rest of a line that the TLS hello never ends)."""
    import socket

    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "localhost", parts.port or 6379), timeout=CONNECT_TIMEOUT_S
        ) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return None  # the host does not answer at all: maybe down, maybe rebooting
    if reply[:1] in (b"+", b"-"):
        return (
            f"{parts.hostname}:{parts.port or 6379} speaks plain Redis, not TLS: use redis:// "
            "for this port, or the server's TLS port with rediss://"
        )
    return (
        f"{parts.hostname}:{parts.port or 6379} accepted the connection but never finished "
        "the TLS handshake: is it a TLS port?"
    )
