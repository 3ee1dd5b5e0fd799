"""The ``gateway`` command's subcommands, one module per area, registered by :mod:`gateway.cli`.

Each module has a ``register(subparsers)`` that adds its subcommands; each subcommand loads the config,
calls the core and maps the outcome to an exit code. The wing depends on the core, never the reverse:
nothing outside ``gateway/commands`` and ``gateway/cli.py`` imports these modules, and they share only
:mod:`gateway.commands.common` (a test checks both).
"""
