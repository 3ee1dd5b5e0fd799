"""``gateway user add | list | disable | enable | passwd``: local users of the pages.

Passwords come from ``--password-file`` (a 0600 secret file, for provisioning scripts) or are asked twice
on the terminal; they are stored only as hashes. Every change goes through the service facade
(``services.users``), which audits it with the actor ``cli:<login name>`` in the change's transaction.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from gateway.commands.common import EXIT_OK, add_config_argument, config_from, local_time
from gateway.config import read_secret
from gateway.errors import GatewayError
from gateway.services import ROLES, GatewayServices, UserError

MIN_PASSWORD_LENGTH = 8


class PasswordError(GatewayError):
    """The new password cannot be used."""


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return f"cli:uid{os.getuid()}"


def _services(args: argparse.Namespace) -> GatewayServices:
    from gateway.runtime import open_runtime

    return GatewayServices(open_runtime(config_from(args)))


def _new_password(password_file: Path | None) -> str:
    if password_file is not None:
        password = read_secret(password_file)
    else:
        if not sys.stdin.isatty():
            raise PasswordError("no terminal to ask for the password: use --password-file FILE")
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise PasswordError("the two passwords differ")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _cmd_add(args: argparse.Namespace) -> int:
    from gateway.web.auth import hash_password

    password = _new_password(args.password_file)
    services = _services(args)
    try:
        services.users.add(args.name, hash_password(password), args.role, language=args.language, actor=_actor())
    finally:
        services.close()
    print(f"user {args.name} added ({args.role})")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    services = _services(args)
    try:
        rows = services.users.list()
        config = services.runtime.config
    finally:
        services.close()
    print(f"{'USER':<20} {'ROLE':<11} {'LANG':<5} {'STATE':<9} CREATED")
    for row in rows:
        state = "disabled" if row.disabled else "active"
        created = local_time(config, row.created_at)
        print(f"{row.username:<20} {row.role:<11} {row.language or '-':<5} {state:<9} {created}")
    return EXIT_OK


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    services = _services(args)
    try:
        services.users.set_disabled(args.name, disabled, actor=_actor())
    finally:
        services.close()
    print(f"user {args.name} {'disabled: their sessions end now' if disabled else 'enabled'}")
    return EXIT_OK


def _cmd_passwd(args: argparse.Namespace) -> int:
    from gateway.web.auth import hash_password

    services = _services(args)
    try:
        if services.users.get(args.name) is None:
            raise UserError(f"no user {args.name!r}")
        password = _new_password(args.password_file)
        services.users.set_password(args.name, hash_password(password), actor=_actor())
    finally:
        services.close()
    print(f"password of {args.name} changed: their sessions end now")
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``gateway user ...`` to the ``gateway`` command."""
    user = subparsers.add_parser("user", help="local users of the pages (nurse, technician, it, admin)")
    sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    add = sub.add_parser("add", help="create a user (asks for the password unless --password-file)")
    add_config_argument(add)
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-file", type=Path, default=None, help="read the password from this 0600 file")
    add.add_argument("--language", choices=("en", "zh"), default=None, help="page language (default: the browser's)")
    add.set_defaults(func=_cmd_add)

    lst = sub.add_parser("list", help="list users")
    add_config_argument(lst)
    lst.set_defaults(func=_cmd_list)

    disable = sub.add_parser("disable", help="disable a user (ends their sessions)")
    add_config_argument(disable)
    disable.add_argument("name")
    disable.set_defaults(func=lambda args: _set_disabled(args, True))

    enable = sub.add_parser("enable", help="enable a disabled user again")
    add_config_argument(enable)
    enable.add_argument("name")
    enable.set_defaults(func=lambda args: _set_disabled(args, False))

    passwd = sub.add_parser("passwd", help="set a user's password (ends their sessions)")
    add_config_argument(passwd)
    passwd.add_argument("name")
    passwd.add_argument("--password-file", type=Path, default=None, help="read the password from this 0600 file")
    passwd.set_defaults(func=_cmd_passwd)
