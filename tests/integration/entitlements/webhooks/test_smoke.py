from __future__ import annotations

from tests.integration.entitlements.webhooks.conftest import grant, register
from tests.support.webhooks import verify_both_ways


async def test_smoke(api, receiver, make_deliverer) -> None:
    created = await register(api, receiver.url)
    await grant(api, "u1", 500)
    await grant(api, "u1", 50)
    r = await api.put("/v1/users/u1/subscription", "admin", {"tier": "PREMIUM"})
    assert r.status_code == 200
    deliverer = make_deliverer()
    sent = await deliverer.deliver_due()
    print(sent)
    for request in receiver.accepted:
        print(verify_both_ways(created["secret"], request))
    print((await api.get("/v1/events", "service", user_id="u1")).json())
    print((await api.get(f"/v1/webhook-endpoints/{created['endpoint']['id']}/deliveries", "admin")).json())
