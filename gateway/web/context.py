"""What every view needs, kept on the Flask app (no module globals): the service facade and the config."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from gateway.config import GatewayConfig
from gateway.services import GatewayServices

EXTENSION_KEY = "clinic_gateway"


@dataclass(frozen=True, slots=True)
class WebContext:
    """The facade and config one app instance serves; ``status_token`` guards ``/api/status`` for scripts."""

    services: GatewayServices
    config: GatewayConfig
    status_token: str | None = None


def web_context() -> WebContext:
    """The context of the app handling the current request."""
    context: WebContext = current_app.extensions[EXTENSION_KEY]
    return context


def services() -> GatewayServices:
    """The service facade of the current app."""
    return web_context().services
