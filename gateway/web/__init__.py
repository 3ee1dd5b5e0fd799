"""Local pages: IT status, nurse and technician desks, login and roles (Flask, served by waitress).

``create_app(services, config)`` builds the app; ``gateway.web.component`` runs it inside the daemon
(``gateway user ...`` is :mod:`gateway.commands.users`). The pages talk to the core only through
:class:`gateway.services.GatewayServices`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from gateway.config import GatewayConfig
    from gateway.services import GatewayServices


def create_app(services: GatewayServices, config: GatewayConfig) -> Flask:
    """Build the pages for ``services`` (see :func:`gateway.web.app.create_app`)."""
    from gateway.web.app import create_app as _create

    return _create(services, config)


__all__ = ["create_app"]
