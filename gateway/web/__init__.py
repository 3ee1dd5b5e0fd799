"""Local pages: IT status, nurse and technician desks, login and roles (Flask, served by waitress).

:func:`gateway.web.app.create_app` builds the app; ``gateway.web.component`` runs it inside the daemon
(``gateway user ...`` is :mod:`gateway.commands.users`). The pages talk to the core only through
:class:`gateway.services.GatewayServices`.
"""
