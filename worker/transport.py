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

import json
import ssl
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlparse

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from jobs.protocol import InvalidMessage, check_message, queue_of_key, unacked_parts

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


def requeue_unacked(channel: Any, client: Any, tag: bytes | str) -> None:
    """Put a message delivered but never acknowledged back at the consuming end of its queue,
    under a new delivery tag; InvalidMessage (nothing moved) if the entry is not kombu's.

    Kombu's own `restore_by_tag` keeps the old tag, and its agent may still acknowledge it: one
    frozen longer than the lease (on another machine under the same host name) would, on its
    way out, delete the in-flight record of the message's next delivery under that tag, and
    the job would not be given back if its next agent died too.
    """

    def restore(pipe: Any) -> None:
        raw = pipe.hget(channel.unacked_key, tag)
        message = None
        if raw is not None:
            message, routing_key = unacked_parts(raw)
            exchange = json.loads(raw)[1]
            properties = message.get("properties") if isinstance(message, dict) else None
            if not isinstance(properties, dict):
                raise InvalidMessage("unacked message has no properties")
            properties["delivery_tag"] = uuid.uuid4().hex
            for part in (message.get("headers"), properties.get("delivery_info")):
                if isinstance(part, dict):  # as kombu marks a message it gives back
                    part["redelivered"] = True
        pipe.multi()
        pipe.zrem(channel.unacked_index_key, tag)
        pipe.hdel(channel.unacked_key, tag)
        if message is not None:
            priority = channel._get_message_priority(message, reverse=False)
            for queue in channel._lookup(exchange, routing_key):
                pipe.rpush(channel._q_for_pri(queue, priority), json.dumps(message))

    client.transaction(restore, channel.unacked_key)
