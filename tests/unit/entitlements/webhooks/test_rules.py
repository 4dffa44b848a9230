"""The pure rules of outgoing webhooks: which addresses are refused, the URL rules, the retry schedule,
the secret's form, and the signature header against the specification's own computation."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from entitlements.errors import ValidationFailed
from entitlements.settings import SettingsError, WebhookSettings
from entitlements.webhooks import address_refusal, check_url, new_secret, signature_header
from entitlements.webhooks.deliverer import retry_after_s
from tests.support.webhooks import spec_verify


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "::ffff:169.254.169.254"],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_cloud_metadata_addresses_are_refused_even_when_private_ones_are_allowed(
    address: str, allow_private: bool
) -> None:
    refusal = address_refusal(ipaddress.ip_address(address), allow_private=allow_private)
    assert refusal is not None
    assert "metadata" in refusal


@pytest.mark.parametrize("address", ["169.254.1.1", "fe80::1"])
@pytest.mark.parametrize("allow_private", [False, True])
def test_link_local_addresses_are_always_refused(address: str, allow_private: bool) -> None:
    refusal = address_refusal(ipaddress.ip_address(address), allow_private=allow_private)
    assert refusal is not None
    assert "link-local" in refusal


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "172.16.0.1", "192.168.1.1", "127.0.0.1", "::1", "fc00::1", "100.64.0.1"]
)
def test_private_and_loopback_addresses_only_when_the_setting_allows_them(address: str) -> None:
    assert "private" in (address_refusal(ipaddress.ip_address(address), allow_private=False) or "")
    assert address_refusal(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "224.0.0.1", "240.0.0.1", "::", "ff02::1"],  # noqa: S104 (addresses refused, none bound)
)
def test_addresses_that_are_not_unicast_are_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), allow_private=True) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111"])
def test_public_addresses_are_accepted(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), allow_private=False) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///nohost", "must name a host"),
        ("https://user:pass@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com:99999/", "not a valid URL"),
        ("javascript:alert(1)", "http or https"),
    ],
)
def test_urls_that_are_not_plain_http_are_refused_naming_the_field(url: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        check_url(url)
    assert refused.value.field == "url"
    assert message in refused.value.detail


def test_a_url_gives_its_host_and_port() -> None:
    assert check_url("https://hooks.example.com/in") == ("hooks.example.com", 443)
    assert check_url("http://[::1]:8080/in") == ("::1", 8080)


def test_a_secret_is_whsec_and_32_random_bytes_in_base64() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert new_secret() != secret


@given(st.binary(max_size=500).map(lambda b: b.decode("latin-1")), st.integers(min_value=1, max_value=10**12))
def test_the_signature_header_is_what_the_specification_computes(body: str, event_number: int) -> None:
    secrets = [new_secret(), new_secret()]
    now = datetime.now(UTC)
    header = signature_header(secrets, f"evt_{event_number}", now, body)
    headers = {
        "webhook-id": f"evt_{event_number}",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": header,
    }
    for secret in secrets:
        spec_verify(secret, headers, body.encode(), parse=False)
        Webhook(secret).verify(body.encode(), headers, json_parse=False)
    with pytest.raises(ValueError, match="no signature"):
        spec_verify(new_secret(), headers, body.encode(), parse=False)


def test_the_retry_schedule_runs_from_seconds_to_about_a_day_with_jitter_then_ends() -> None:
    settings = WebhookSettings.from_env()
    schedule = settings.retry_schedule_s
    assert schedule[0] <= 10
    assert 18 * 3600 <= sum(schedule) <= 30 * 3600
    rng = random.Random(7)
    for attempt, base in enumerate(schedule, start=1):
        wait = retry_after_s(settings, attempt, rng)
        assert wait is not None
        assert base * (1 - settings.retry_jitter_ratio) <= wait <= base * (1 + settings.retry_jitter_ratio)
    assert retry_after_s(settings, len(schedule) + 1, rng) is None
    waits = {retry_after_s(settings, 1, rng) for _ in range(20)}
    assert len(waits) > 1  # jittered: retries of many deliveries do not come due together


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("WEBHOOK_TIMEOUT_S", "120", "120.5"),
        ("WEBHOOK_SECRET_GRACE_S", str(30 * 86_400), str(30 * 86_400 + 1)),
        ("WEBHOOK_CONCURRENCY", "512", "513"),
        ("WEBHOOK_ENDPOINTS_MAX", "1000", "1001"),
        ("WEBHOOK_RETRY_JITTER_RATIO", "0.9", "0.91"),
        ("BALANCE_LOW_THRESHOLD_MOMENTS", "1", "0"),
        ("WEBHOOK_RETRY_SCHEDULE_S", "86400", "86401"),
        ("WEBHOOK_RETRY_SCHEDULE_S", ",".join(["1"] * 30), ",".join(["1"] * 31)),
    ],
)
def test_each_webhook_setting_is_taken_at_its_bound_and_refused_past_it(
    monkeypatch: pytest.MonkeyPatch, name: str, good: str, bad: str
) -> None:
    monkeypatch.setenv("WEBHOOK_LEASE_S", "3600")
    monkeypatch.setenv(name, good)
    WebhookSettings.from_env()
    monkeypatch.setenv(name, bad)
    with pytest.raises(SettingsError, match=name):
        WebhookSettings.from_env()


def test_the_lease_must_outlast_an_attempt() -> None:
    settings = WebhookSettings.from_env()
    with pytest.raises(SettingsError, match="WEBHOOK_LEASE_S"):
        dataclasses.replace(settings, lease_s=5, timeout_s=5.0)
