"""Dependencies resolved in order (entitlements/http/dependencies.py), and the one hook before every handler."""

from __future__ import annotations

import inspect

from litestar._kwargs.kwargs_model import KwargsModel
from litestar.routes import HTTPRoute

from entitlements.app import create_app
from entitlements.http.dependencies import LITESTAR_RESOLVE_DEPENDENCIES, resolve_in_order
from entitlements.http.hooks import before_request


def test_the_replacement_has_the_shape_of_litestars_method() -> None:
    ours = inspect.signature(resolve_in_order)
    theirs = inspect.signature(LITESTAR_RESOLVE_DEPENDENCIES)
    assert list(ours.parameters) == list(theirs.parameters)
    # Litestar still batches dependencies the way the replacement reads them.
    assert "dependency_batches" in inspect.getsource(LITESTAR_RESOLVE_DEPENDENCIES)


def test_the_app_resolves_dependencies_in_order() -> None:
    create_app()
    assert KwargsModel.resolve_dependencies is resolve_in_order


def test_every_route_passes_the_apps_hook_so_none_skips_the_role_check() -> None:
    # The role check runs in the app's before_request: a layer that set its own would replace it (Litestar
    # takes the closest layer's hook) and serve that route to anyone.
    app = create_app()
    handlers = [
        handler
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler, _ in route.route_handler_map.values()
    ]
    assert handlers
    for handler in handlers:
        assert handler.resolve_before_request() is not None, handler
        assert handler.resolve_before_request() is before_request, handler
