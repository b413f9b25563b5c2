"""The broker URL's secrets: redacted wherever they are written, one shape for every client."""

from __future__ import annotations

import pytest

from jobs import brokerurl
from jobs.brokerurl import canonical_url, has_password, redact_text, redact_url, url_secrets


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:s3cret@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=***"),
        (
            "rediss://h/0?ssl_cert_reqs=required&ssl_password=s3cret#f",
            "rediss://h/0?ssl_cert_reqs=required&ssl_password=***#f",
        ),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_url_hides_userinfo_and_query_string_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_canonical_url_moves_a_query_password_into_the_userinfo() -> None:
    # kombu cannot parse ?password= (TypeError in kombu/utils/url.py): it reads the userinfo
    assert canonical_url("redis://h:1/0?password=p%40ss&db=0") == "redis://:p%40ss@h:1/0?db=0"
    assert canonical_url("redis://h:1/0?username=u&password=p") == "redis://u:p@h:1/0"
    assert canonical_url("redis://:keep@h:1/0?password=other") == "redis://:keep@h:1/0"
    assert canonical_url("redis://h:1/0") == "redis://h:1/0"


def test_secrets_are_found_encoded_and_decoded() -> None:
    assert url_secrets("redis://:p%40ss@h/0") >= {"p%40ss", "p@ss"}
    assert has_password("redis://h/0?password=abc") and not has_password("redis://h/0")


def test_redact_text_hides_remembered_secrets_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brokerurl, "_secrets", set())
    brokerurl.remember_secrets("redis://h:1/0?password=hunter22")
    text = "AUTH hunter22 failed for redis://x:hunter22@h:1/0 and redis://h/0?token=zzz9"
    clean = redact_text(text)
    assert "hunter22" not in clean and "zzz9" not in clean
    assert clean == "AUTH *** failed for redis://x:***@h:1/0 and redis://h/0?token=***"
