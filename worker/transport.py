"""Kombu's Redis transport with one change: a popped message is checked before kombu reads it.

Why here and not in Celery's handlers (`on_decode_error`, `on_unknown_message`,
`on_invalid_task` in celery/worker/consumer/consumer.py): kombu turns the popped bytes into a
message before any of them is called. `Channel._brpop_read` (kombu/transport/redis.py, kombu
5.7.0) runs `loads(bytes_to_str(item))` on the raw list item, and `basic_consume`'s callback
builds `Message(payload)` (kombu/transport/virtual/base.py), which indexes `properties` and
decodes the base64 body. Junk fails there, the error leaves the event loop, and Celery stops
with "Unrecoverable error". Celery's own handlers, for what reaches them, log and then ack or
reject the message: it is gone without a trace.

So the channel's Redis client checks the reply of every BRPOP with `jobs.protocol.
check_message`, the rule the coordinator applies too; a refused message is handed to
`on_poison` (the agent dead-letters it) and the reply becomes "nothing popped", which kombu
handles as an empty poll. The message never reaches kombu, Celery or the job runner.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlparse

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from jobs.protocol import InvalidMessage, check_message, queue_of_key

OnPoison = Callable[[bytes, str, str], None]  # (raw message, queue, reason)


def poison_proof_transport(on_poison: OnPoison) -> type[kombu_redis.Transport]:
    """A kombu Redis Transport class whose consumers hand refused messages to `on_poison`."""

    class CheckedRedis(redis.Redis):
        def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
            response = super().parse_response(connection, command_name, **options)  # type: ignore[no-untyped-call]
            if command_name != "BRPOP" or not response:
                return response
            key, item = response
            queue = queue_of_key(key)
            try:
                check_message(item, queue)
            except InvalidMessage as exc:
                on_poison(item, queue, str(exc))
                return None  # kombu's _brpop_read raises Empty: the poll goes on
            return response

    class Channel(kombu_redis.Channel):
        def _get_client(self) -> Any:
            if self.global_keyprefix:  # orch never sets one; a prefixed client is not checked
                raise ValueError("orch's broker transport does not support global_keyprefix")
            super()._get_client()  # type: ignore[no-untyped-call]  # its redis-py version check
            return CheckedRedis

    class Transport(kombu_redis.Transport):
        pass

    Transport.Channel = Channel
    return Transport


def use_checked_transport(app: Celery, broker_url: str, on_poison: OnPoison) -> None:
    """Make `app` consume through `poison_proof_transport`, with TLS where the URL asks."""
    app.conf.broker_transport = poison_proof_transport(on_poison)
    url = urlparse(broker_url)
    if url.scheme == "rediss" and not any(k.startswith("ssl_") for k in parse_qs(url.query)):
        # kombu turns TLS on for a bare rediss:// by its transport's name (`_init_params` in
        # kombu/connection.py), which a transport class replaces: say it here, verifying the
        # certificate as the agent's own redis client does.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
