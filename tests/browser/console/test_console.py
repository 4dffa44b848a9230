"""The support console in Chromium, against a real `moments serve` with its dispatcher and a worker.

Each test signs its people in through the sign-in page, acts through the pages' own forms and checks what
the page shows against what the API answers for the same user.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any

import asyncpg

from tests.browser.conftest import DESKTOP, PHONE, Console, require_chromium
from tests.browser.console.helpers import (
    entitlements,
    figure,
    ledger_items,
    premium_user_with_videos,
    sign_in,
    unique,
)
from tests.support.generations import stripe_clawback

require_chromium()
AXE = Path(__file__).resolve().parents[3] / "entitlements" / "http" / "static" / "axe" / "axe.min.js"


async def test_sign_in_with_a_wrong_key_is_refused_and_the_right_one_lets_you_in(page: Any, console: Console) -> None:
    await page.goto(console.url("/console"))
    assert page.url.startswith(console.url("/console/sign-in"))
    await page.fill("#api_key", "mk_not-a-key-anyone-has")
    await page.click("form[action='/console/sign-in'] button[type=submit]")
    assert "unknown or revoked" in await page.inner_text("#sign-in-error")
    service = console.keys["service"]
    await page.fill("#api_key", service)
    await page.click("form[action='/console/sign-in'] button[type=submit]")
    assert "cannot sign in" in await page.inner_text("#sign-in-error")

    await page.fill("#api_key", console.keys["support"])
    await page.click("form[action='/console/sign-in'] button[type=submit]")
    await page.wait_for_url(console.url("/console"))
    assert await page.inner_text("h1") == "Find a user"
    cookie = next(c for c in await page.context.cookies() if c["name"] == "moments_console")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    assert cookie["secure"] is False  # plain HTTP on 127.0.0.1; Secure over TLS
    await page.click("text=Sign out")
    await page.wait_for_url(console.url("/console/sign-in"))
    await page.goto(console.url("/console"))
    assert page.url.startswith(console.url("/console/sign-in"))


async def test_search_finds_the_user_by_each_kind_of_id(page: Any, console: Console) -> None:
    user = unique("searched")
    (video,) = await premium_user_with_videos(console, user, moments=1_000, videos=1)
    customer = f"cus_{unique('c').replace('-', '')}"
    connection = await asyncpg.connect(console.database_url)
    try:
        await connection.execute("INSERT INTO stripe_customers (customer_id, user_id) VALUES ($1, $2)", customer, user)
    finally:
        await connection.close()
    key = unique("support-grant")
    granted = await console.api.post(f"/v1/users/{user}/grants", "support", {"moments": 5, "reason": "sorry"}, key)
    assert granted.status_code == 201, granted.text

    await sign_in(page, console, "support")
    for text in (user, video["id"], customer, key):
        await page.goto(console.url("/console"))
        await page.fill("#q", text)
        await page.click("form[role=search] button")
        await page.wait_for_url(re.compile(r".*/console/users/.*"))
        assert await page.inner_text("h1 .user-id") == user, text
    await page.goto(console.url("/console"))
    await page.fill("#q", "nobody-has-this-id")
    await page.click("form[role=search] button")
    assert "Nothing found" in await page.inner_text("#main")


async def test_the_user_page_shows_what_the_api_says(page: Any, console: Console) -> None:
    user = unique("shown")
    videos = await premium_user_with_videos(console, user, moments=2_000, videos=2)
    await sign_in(page, console, "support")
    await page.goto(console.url(f"/console/users/{user}"))
    api = await entitlements(console, user)
    assert await page.inner_text("[data-figure=tier]") == api["tier"] == "PREMIUM"
    assert figure(await page.inner_text("[data-figure=available]")) == api["balance"]["available"]
    assert figure(await page.inner_text("[data-figure=held]")) == api["balance"]["held"] == 0
    assert figure(await page.inner_text("[data-figure=owed]")) == api["owed"] == 0

    # The journal: the API's history row for row, with a running balance that ends at the balance now.
    items = await ledger_items(console, user)
    rows = page.locator("#journal tbody tr[data-transaction]")
    assert await rows.count() == len(items)
    running = api["balance"]["available"]
    for index, item in enumerate(items):
        row = rows.nth(index)
        assert int(await row.get_attribute("data-transaction")) == item["transaction_id"]
        assert await row.get_attribute("data-kind") == item["kind"]
        assert figure(await row.locator("[data-after=available]").inner_text()) == running
        assert item["actor"] in await row.locator(".actor").inner_text()
        running -= item["delta_available"]
    assert running == 0
    # One lot (the grant) with what is left of it, and each video drew from it.
    assert (
        figure(await page.locator("#lots tbody tr td:nth-child(4)").first.inner_text()) == api["balance"]["available"]
    )
    for video in videos:
        card = page.locator(f"#generation-{video['id']}")
        assert await card.get_attribute("data-status") == "succeeded"
        assert figure(await card.locator("[data-charged]").inner_text()) == video["charged"]
        await card.locator("details summary", has_text="Which lots").click()
        assert figure(await card.locator("details table tbody td:nth-child(3)").first.inner_text()) == video["moments"]
        assert await card.locator("video track[kind=captions]").count() == 1
    playable = await page.evaluate(
        "async (id) => { const v = document.querySelector(`#generation-${id} video`); v.muted = true;"
        " await v.play(); await new Promise(r => setTimeout(r, 200)); v.pause(); return v.readyState; }",
        videos[0]["id"],
    )
    assert playable >= 2, "the video loads and plays inline"
    await page.screenshot(path=str(console.screenshots / "user-page-1280.png"), full_page=True)

    # Phone width: the page reflows; only the tables scroll sideways, inside their own boxes.
    await page.set_viewport_size(PHONE)
    await page.reload()
    widths = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    await page.screenshot(path=str(console.screenshots / "user-page-phone.png"), full_page=True)
    await page.set_viewport_size(DESKTOP)


async def test_a_partial_refund_shows_its_preview_then_refunds_once(page: Any, console: Console) -> None:
    user = unique("refunded")
    (video,) = await premium_user_with_videos(console, user, moments=1_000, videos=1)
    before = (await entitlements(console, user))["balance"]["available"]
    await sign_in(page, console, "support")
    await page.goto(console.url(f"/console/users/{user}"))
    card = page.locator(f"#generation-{video['id']}")
    await card.locator("details.refund summary").click()
    await card.locator("input[name=moments]").fill("100")
    await card.locator("input[name=reason]").fill("the wave looked wrong")
    preview = card.locator(".preview [data-preview-available]")
    await preview.wait_for()
    assert figure(await preview.inner_text()) == before + 100
    assert (await entitlements(console, user))["balance"]["available"] == before, "a preview changes nothing"

    await card.locator("button[type=submit]", has_text="Refund").click()
    await page.wait_for_url(re.compile(r".*done=transaction:\d+"))
    assert "Done: ledger transaction" in await page.inner_text("#done")
    assert (await entitlements(console, user))["balance"]["available"] == before + 100
    assert figure(await page.inner_text("[data-figure=available]")) == before + 100
    refreshed = page.locator(f"#generation-{video['id']}")
    assert figure(await refreshed.locator("[data-charged]").inner_text()) == video["charged"] - 100
    newest = (await ledger_items(console, user))[0]
    assert (newest["kind"], newest["delta_available"], newest["reason"]) == ("refund", 100, "the wave looked wrong")
    assert newest["actor"].endswith(":alice")


async def test_a_grant_above_the_threshold_waits_for_a_second_persons_approval(
    browser: Any, page: Any, console: Console
) -> None:
    user = unique("approved")
    await premium_user_with_videos(console, user, moments=100, videos=0)
    await sign_in(page, console, "support")
    await page.goto(console.url(f"/console/users/{user}"))
    await page.fill("#grant-moments", "3000")
    await page.fill("#grant-reason", "a week of failed renders")
    await page.locator("#grant-preview .pending").wait_for()
    assert "second person" in await page.inner_text("#grant-preview")
    await page.click("#grant-form button[type=submit]")
    await page.wait_for_url(re.compile(r".*done=approval:\d+"))
    approval_id = int(page.url.rsplit(":", 1)[1])
    assert "waits for a second person" in await page.inner_text("#done")
    assert (await entitlements(console, user))["balance"]["available"] == 100
    # The requester cannot decide their own request.
    await page.goto(console.url("/console/approvals"))
    own = page.locator(f"#pending-approval-{approval_id}")
    assert "Your own request" in await own.inner_text()

    second = await browser.new_context(viewport=DESKTOP)
    try:
        bob = await second.new_page()
        await sign_in(bob, console, "second_support")
        await bob.goto(console.url("/console/approvals"))
        row = bob.locator(f"#pending-approval-{approval_id}")
        await row.locator("input[name=reason]").fill("checked the render logs")
        await row.locator("button", has_text="Approve").click()
        await bob.wait_for_url(re.compile(rf".*/console/users/{re.escape(user)}\?done=approval:{approval_id}"))
        assert "approved by key:" in await bob.inner_text("#done")
    finally:
        await second.close()
    assert (await entitlements(console, user))["balance"]["available"] == 3_100
    newest = (await ledger_items(console, user))[0]
    assert (newest["kind"], newest["delta_available"]) == ("grant", 3_000)
    assert newest["actor"].endswith(":alice"), "the requester's grant, approved by bob"
    approval = await console.api.get("/v1/approvals", "admin", status="approved")
    decided = next(item for item in approval.json()["items"] if item["id"] == approval_id)
    assert decided["decided_by"].endswith(":bob")
    assert decided["transaction_id"] == newest["transaction_id"]


async def test_a_double_submitted_form_grants_once(page: Any, console: Console) -> None:
    user = unique("doubled")
    await premium_user_with_videos(console, user, moments=100, videos=0)
    await sign_in(page, console, "support")
    await page.goto(console.url(f"/console/users/{user}"))
    await page.fill("#grant-moments", "25")
    await page.fill("#grant-reason", "sorry for the wait")
    form = await page.evaluate("Object.fromEntries(new FormData(document.getElementById('grant-form')))")
    await page.dblclick("#grant-form button[type=submit]")
    await page.wait_for_url(re.compile(r".*done=transaction:\d+"))
    # The same form sent again (a resubmission), as the browser would send it.
    again = await page.request.post(console.url(f"/console/users/{user}/grants"), form=form, max_redirects=0)
    assert again.status == 303
    assert re.search(r"done=transaction:\d+", again.headers["location"])
    grants = [item for item in await ledger_items(console, user) if item["kind"] == "grant"]
    assert [item["delta_available"] for item in grants] == [25, 100]
    assert (await entitlements(console, user))["balance"]["available"] == 125


async def test_a_forged_form_without_its_csrf_token_is_refused(page: Any, console: Console) -> None:
    user = unique("forged")
    await premium_user_with_videos(console, user, moments=100, videos=0)
    await sign_in(page, console, "support")
    await page.goto(console.url(f"/console/users/{user}"))
    form = await page.evaluate("Object.fromEntries(new FormData(document.getElementById('grant-form')))")
    forged = {**form, "moments": "999", "reason": "forged"}
    del forged["csrf_token"]
    refused = await page.request.post(console.url(f"/console/users/{user}/grants"), form=forged, max_redirects=0)
    assert refused.status == 403
    assert "security token" in await refused.text()
    stolen = {**forged, "csrf_token": "a" * 43}
    refused = await page.request.post(console.url(f"/console/users/{user}/grants"), form=stolen, max_redirects=0)
    assert refused.status == 403
    # The same through the page: a form whose token was taken out is refused in place.
    await page.evaluate("document.querySelector('#grant-form input[name=csrf_token]').remove()")
    await page.fill("#grant-moments", "999")
    await page.fill("#grant-reason", "forged")
    await page.click("#grant-form button[type=submit]")
    await page.locator("#grant-result .problem").wait_for()
    assert "security token" in await page.inner_text("#grant-result")
    assert (await entitlements(console, user))["balance"]["available"] == 100


async def test_an_expired_session_sends_you_to_sign_in_and_back(page: Any, console: Console) -> None:
    await sign_in(page, console, "support")
    user = unique("expired")
    await premium_user_with_videos(console, user, moments=10, videos=0)
    connection = await asyncpg.connect(console.database_url)
    try:
        # Idle for longer than CONSOLE_SESSION_IDLE_S (30 minutes by default).
        ended = await connection.execute(
            "UPDATE console_sessions s SET last_seen_at = now() - interval '31 minutes' FROM api_keys k "
            "WHERE k.id = s.key_id AND k.name = 'alice' AND s.ended_at IS NULL"
        )
        assert ended != "UPDATE 0"
    finally:
        await connection.close()
    await page.goto(console.url(f"/console/users/{user}"))
    assert page.url.startswith(console.url("/console/sign-in?expired=1"))
    assert "session expired" in await page.inner_text("#main")
    await page.fill("#api_key", console.keys["support"])
    await page.click("form[action='/console/sign-in'] button[type=submit]")
    await page.wait_for_url(console.url(f"/console/users/{user}"))


async def test_finance_sees_the_books_but_is_refused_a_refund(page: Any, console: Console) -> None:
    user = unique("finance")
    (video,) = await premium_user_with_videos(console, user, moments=1_000, videos=1)
    pool = await asyncpg.create_pool(console.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await stripe_clawback(pool, user, 50)
    finally:
        await pool.close()
    await sign_in(page, console, "finance")
    await page.goto(console.url(f"/console/users/{user}"))
    assert await page.locator("#journal").count() == 1
    clawback = page.locator("#journal tr[data-kind=clawback]")
    assert "charge.dispute.created" in await clawback.inner_text(), "the Stripe event behind the clawback"
    assert await page.locator("details.refund, #grant-form, #generations").count() == 0
    csrf = await page.get_attribute("form[action='/console/sign-out'] input[name=csrf_token]", "value")
    refused = await page.request.post(
        console.url(f"/console/generations/{video['id']}/refund"),
        form={"csrf_token": csrf, "reason": "finance tries", "idempotency_key": "console-finance-1"},
        max_redirects=0,
    )
    assert refused.status == 403
    assert "role finance may not" in await refused.text()
    assert (await entitlements(console, user))["balance"]["available"] == 1_000 - video["charged"] - 50

    await page.click("nav >> text=Finance")
    # Every finance page is built now: nothing is marked as coming later.
    assert await page.locator("#coming-later").count() == 0
    await page.click("text=Ledger audit")
    assert await page.get_attribute("#audit-result", "data-ok") == "true"
    await page.goto(console.url("/console/finance/reconciliation"))
    assert await page.get_attribute("#reconciliation-result", "data-ok") == "true"
    assert "charge.dispute.created" in await page.inner_text("#events")
    await page.screenshot(path=str(console.screenshots / "finance-reconciliation-1280.png"), full_page=True)
    await page.goto(console.url("/console/finance/audit"))
    await page.screenshot(path=str(console.screenshots / "finance-audit-1280.png"), full_page=True)


async def test_finance_rolls_the_liability_forward_and_exports_the_ledger(page: Any, console: Console) -> None:
    user = unique("books")
    await premium_user_with_videos(console, user, moments=1_000, videos=1)
    await sign_in(page, console, "finance")
    await page.goto(console.url("/console/finance"))
    await page.click("text=Roll-forward")
    await page.fill("#since", "2026-01-01")
    await page.fill("#until", "2100-01-01")
    await page.click("form.filter button[type=submit]")
    await page.wait_for_url(re.compile(r".*/console/finance/rollforward\?since=2026-01-01.*"))
    assert await page.get_attribute("#rollforward-result", "data-ties") == "true"
    await page.wait_for_function("() => document.getElementById('rollforward-chart').dataset.drawn === '1'")
    liability = (await api_rollforward(console))["closing"]["liability"]
    assert figure(await page.inner_text("#closing-liability")) == liability
    await page.screenshot(path=str(console.screenshots / "finance-rollforward-1280.png"), full_page=True)

    await page.goto(console.url("/console/finance"))
    await page.click("text=Exports")
    await page.select_option("#dataset", "postings")
    await page.select_option("#format", "csv")
    await page.click("#export-form button[type=submit]")
    row = page.locator("#exports-table tr[data-status=done]").first
    await row.wait_for()
    async with page.expect_download() as waiting:
        await row.locator("text=Download").click()
    download = await waiting.value
    body = Path(await download.path()).read_bytes()
    assert hashlib.sha256(body).hexdigest() in await row.inner_text()
    assert body.startswith(b"transaction_id,account,amount")
    await page.screenshot(path=str(console.screenshots / "finance-exports-1280.png"), full_page=True)


async def api_rollforward(console: Console) -> Any:
    response = await console.api.get(
        "/v1/ledger/rollforward", "finance", since="2026-01-01T00:00:00Z", until="2100-01-01T00:00:00Z"
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_finance_sees_the_seal_catch_up_and_verifies_it(page: Any, console: Console) -> None:
    user = unique("sealed")
    await premium_user_with_videos(console, user, moments=1_000, videos=1)
    await sign_in(page, console, "finance")
    await page.goto(console.url("/console/finance"))
    await page.click("text=Ledger seal")
    assert await page.get_attribute("#seal-signing", "data-sealing") == "true"
    # The service's sealer catches up by itself (checkpoints every 5 transactions or 0.2 s here).
    for _ in range(200):
        status = (await console.api.get("/v1/ledger/seal", "finance")).json()
        if (
            status["lag"]["transactions"] == 0
            and status["last_checkpoint"]["range"]["last_position"] == (status["sealed_through"]["position"])
        ):
            break
        await asyncio.sleep(0.05)
    await page.reload()
    position = int(await page.get_attribute("#seal-position", "data-position") or 0)
    assert position >= status["sealed_through"]["position"] > 0
    assert len((await page.inner_text("#seal-head")).strip()) == 64
    assert "BEGIN PUBLIC KEY" in (await page.text_content("#seal-public-key") or "")
    await page.click("text=Verify the latest checkpoints now")
    assert await page.get_attribute("#seal-verification", "data-ok") == "true"
    assert "match the ledger" in await page.inner_text("#seal-verification")
    await page.screenshot(path=str(console.screenshots / "finance-seal-1280.png"), full_page=True)


async def test_support_may_not_open_the_seal_page(page: Any, console: Console) -> None:
    await sign_in(page, console, "support")
    refused = await page.request.get(console.url("/console/finance/seal"), max_redirects=0)
    assert refused.status == 403


async def _serious_violations(page: Any) -> list[str]:
    # Evaluated by the browser's debugger, which the page's Content-Security-Policy does not govern.
    await page.evaluate(AXE.read_text())
    result = await page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".filter(v => v.impact === 'serious' || v.impact === 'critical')"
        ".map(v => `${v.id} (${v.impact}): ${v.nodes.map(n => n.target.join(' ')).join(', ')}`)"
    )
    # Labels and fragment links find their element by id: every id once (axe no longer checks it).
    duplicated = await page.evaluate(
        "() => { const seen = new Set(), twice = new Set();"
        " document.querySelectorAll('[id]').forEach(e => (seen.has(e.id) ? twice : seen).add(e.id));"
        " return [...twice]; }"
    )
    return list(result) + [f"duplicate id {element_id}" for element_id in duplicated]


async def test_the_pages_have_no_serious_accessibility_violations(page: Any, console: Console) -> None:
    user = unique("accessible")
    await premium_user_with_videos(console, user, moments=1_000, videos=1)
    pending = await console.api.post(
        f"/v1/users/{user}/grants", "support", {"moments": 2_500, "reason": "pending for the page"}, unique("p")
    )
    assert pending.status_code == 202, pending.text
    await page.goto(console.url("/console/sign-in"))
    found = {"sign-in": await _serious_violations(page)}
    await sign_in(page, console, "admin")
    for name, path in (
        ("home", "/console"),
        ("search", f"/console/search?q=nobody-{user}"),
        ("user", f"/console/users/{user}"),
        ("approvals", "/console/approvals"),
        ("finance", "/console/finance"),
        ("audit", "/console/finance/audit"),
        ("reconciliation", "/console/finance/reconciliation"),
        ("rollforward", "/console/finance/rollforward"),
        ("exports", "/console/finance/exports"),
        ("seal", "/console/finance/seal?verify=true"),
    ):
        await page.goto(console.url(path))
        found[name] = await _serious_violations(page)
    await page.set_viewport_size(PHONE)
    await page.goto(console.url(f"/console/users/{user}"))
    found["user at phone width"] = await _serious_violations(page)
    assert not any(found.values()), found
