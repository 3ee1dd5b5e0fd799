"""The layering of DESIGN.md and STYLE.md, checked on the source so it cannot rot silently.

Every import counts however it is written (module level, inside a function, under ``TYPE_CHECKING``,
relative, or ``importlib.import_module("...")`` / ``__import__`` with a literal name): one walker,
:mod:`support.imports`, reads them all. The rules, each its own test:

- every module has a declared floor, and no module imports from a floor above its own::

      records, errors, config, clock, logs, notify  ->  wire  ->  store  ->  runtime, desk
        ->  meters, retina, forward, health, retention  ->  services, emulate
        ->  web, commands, cli, daemon, demo

- the store imports only the wire contract and the base floor (never an area, the runtime or above);
- web/ never imports the store, only services; the CLI wing (``gateway/cli.py``, ``gateway/commands``) reaches
  the store only through services too (it may open it: ``gateway.store`` itself, or ``gateway.runtime``);
- nothing but ``gateway/cli.py``, ``gateway/__main__.py`` and ``gateway/commands`` imports the CLI wing, and
  commands modules share only ``commands.common``;
- emulate/ is imported only by the demo, the commands and itself (and by tests and benches);
- no import cycles between modules; no import by a computed name;
- each foreign library has its one adapter; codecs are pure; meter transports only move bytes (no codec, driver
  or record in them); forward/ never reads device code.

The last tests feed the same rules small synthetic packages with one violation each, so none of the
checks above can pass by looking at nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.imports import (
    Edge,
    How,
    ModuleImports,
    cycles,
    gateway_modules,
    internal_graph,
    scan_package,
    under,
)

FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("gateway", "gateway.records", "gateway.errors", "gateway.config", "gateway.clock", "gateway.logs",
              "gateway.notify", "gateway.glucose_stats")),
    ("wire", ("gateway.wire",)),
    ("store", ("gateway.store",)),
    ("runtime", ("gateway.runtime", "gateway.desk")),
    ("areas", ("gateway.meters", "gateway.retina", "gateway.forward", "gateway.health", "gateway.retention")),
    ("services", ("gateway.services", "gateway.emulate")),
    ("top", ("gateway.web", "gateway.commands", "gateway.cli", "gateway.daemon", "gateway.demo",
             "gateway.__main__")),
)  # fmt: skip
"""Floors, lowest first: a module may import its own floor and those below (the most specific prefix wins)."""

CLI_WING = ("gateway.cli", "gateway.commands")
CLI_ENTRY = ("gateway.__main__",)
EMULATE_USERS = ("gateway.emulate", "gateway.demo", "gateway.commands")

Rule = Callable[[dict[str, ModuleImports]], list[str]]


def declared(module: str, prefix: str) -> bool:
    """``module`` is ``prefix`` or inside it; the package root ``gateway`` stands only for ``gateway/__init__.py``."""
    return module == prefix if prefix == "gateway" else under(module, prefix)


def floor_of(module: str) -> int | None:
    """Index of ``module``'s floor in :data:`FLOORS` (most specific prefix), None when undeclared."""
    best: tuple[int, int] | None = None  # (prefix length, floor)
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if declared(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _internal_edges(modules: dict[str, ModuleImports], root: str = "gateway") -> list[Edge]:
    return [e for m in modules.values() for e in m.edges if under(e.imported, root)]


def _fmt(edges: list[Edge]) -> list[str]:
    return sorted({str(e) for e in edges})


# -- the rules: each returns its offenders (empty when the rule holds) -------------------------------------------
def modules_without_a_floor(modules: dict[str, ModuleImports]) -> list[str]:
    return sorted(name for name in modules if floor_of(name) is None)


def upward_imports(modules: dict[str, ModuleImports]) -> list[str]:
    bad = []
    for edge in _internal_edges(modules):
        own, target = floor_of(edge.importer), floor_of(edge.imported)
        if own is not None and target is not None and target > own:
            bad.append(edge)
    return sorted({f"{e} [{FLOORS[floor_of(e.importer) or 0][0]} imports {FLOORS[floor_of(e.imported) or 0][0]}]"
                   for e in bad})  # fmt: skip


def store_imports_beyond_wire(modules: dict[str, ModuleImports]) -> list[str]:
    allowed = (*FLOORS[0][1], "gateway.wire", "gateway.store")
    return _fmt(
        [
            e
            for e in _internal_edges(modules)
            if under(e.importer, "gateway.store") and not any(declared(e.imported, p) for p in allowed)
        ]
    )


def web_imports_of_the_store(modules: dict[str, ModuleImports]) -> list[str]:
    return _fmt(
        [e for e in _internal_edges(modules) if under(e.importer, "gateway.web") and under(e.imported, "gateway.store")]
    )


def cli_imports_of_store_internals(modules: dict[str, ModuleImports]) -> list[str]:
    return _fmt(
        [
            e
            for e in _internal_edges(modules)
            if under(e.importer, *CLI_WING) and under(e.imported, "gateway.store") and e.imported != "gateway.store"
        ]
    )


def imports_of_the_cli_wing(modules: dict[str, ModuleImports]) -> list[str]:
    return _fmt(
        [
            e
            for e in _internal_edges(modules)
            if under(e.imported, *CLI_WING) and not under(e.importer, *CLI_WING, *CLI_ENTRY)
        ]
    )


def commands_reaching_into_each_other(modules: dict[str, ModuleImports]) -> list[str]:
    bad = []
    for edge in _internal_edges(modules):
        if not under(edge.importer, "gateway.commands") or edge.importer == "gateway.commands":
            continue
        if under(edge.imported, "gateway.cli"):
            bad.append(edge)  # cli registers commands; a command importing it back is a cycle in waiting
        elif under(edge.imported, "gateway.commands") and not under(
            edge.imported, "gateway.commands.common", edge.importer
        ):
            bad.append(edge)
    return _fmt(bad)


def emulate_importers(modules: dict[str, ModuleImports]) -> list[str]:
    return _fmt(
        [
            e
            for e in _internal_edges(modules)
            if under(e.imported, "gateway.emulate") and not under(e.importer, *EMULATE_USERS)
        ]
    )


def import_cycles(modules: dict[str, ModuleImports]) -> list[str]:
    return [" -> ".join(c) for c in cycles(internal_graph(modules))]


def imports_by_computed_name(modules: dict[str, ModuleImports]) -> list[str]:
    return sorted(f"{m.name}:{line}" for m in modules.values() for line in m.unresolved)


MODULES = gateway_modules()


def check(rule: Rule, why: str) -> None:
    offenders = rule(MODULES)
    assert offenders == [], why + ":\n  " + "\n  ".join(offenders)


# -- the package as it is ----------------------------------------------------------------------------------------
def test_every_module_has_a_declared_floor() -> None:
    check(modules_without_a_floor, "declare the floor of these modules in FLOORS (tests/core/test_architecture.py)")


def test_no_module_imports_from_a_higher_floor() -> None:
    check(upward_imports, "imports from a higher floor (lazy, TYPE_CHECKING and importlib ones count)")


def test_store_imports_only_the_wire_contract_and_the_base() -> None:
    check(store_imports_beyond_wire, "store/ may import only wire/ and records/errors/config/clock/logs/notify")


def test_web_never_imports_the_store() -> None:
    check(web_imports_of_the_store, "web/ talks to the core only through gateway.services")


def test_the_cli_reaches_the_store_only_through_services() -> None:
    check(cli_imports_of_store_internals, "gateway commands use gateway.services (opening the store is fine)")


def test_nothing_but_the_cli_imports_the_cli_wing() -> None:
    check(imports_of_the_cli_wing, "the core and the areas never import gateway.cli or gateway.commands")


def test_commands_share_only_commands_common() -> None:
    check(commands_reaching_into_each_other, "a commands module imports another's internals (or gateway.cli)")


def test_emulators_are_used_only_by_the_demo_and_the_commands() -> None:
    check(emulate_importers, "gateway.emulate imported outside the demo and the commands")


def test_no_import_cycles() -> None:
    check(import_cycles, "import cycles (lazy, TYPE_CHECKING and importlib imports included)")


def test_no_import_by_a_computed_name() -> None:
    check(imports_by_computed_name, "importlib/__import__ with a computed name hides an edge from these checks")


# library -> the modules allowed to import it (prefix match)
ADAPTERS = {
    "bleak": ("gateway.meters.transport.ble", "gateway.emulate"),
    "serial": ("gateway.meters.transport.serial", "gateway.meters.discovery", "gateway.emulate"),
    "paho": ("gateway.forward.mqtt", "gateway.emulate"),
    "onnxruntime": ("gateway.retina.triage",),
    "flask": ("gateway.web",),
    "flask_login": ("gateway.web",),
    "flask_wtf": ("gateway.web",),
    "flask_babel": ("gateway.web",),
    "waitress": ("gateway.web",),
    "sqlite_utils": ("gateway.store",),
    "sqlite3": ("gateway.store", "gateway.emulate.platform_store"),
    "bluezoo": (),  # GPL-2.0-only: runs as its own process, never imported (tests/meters_ble)
}


def library_users(modules: dict[str, ModuleImports], library: str) -> list[str]:
    return _fmt([e for m in modules.values() for e in m.edges if under(e.imported, library)])


@pytest.mark.parametrize("library", sorted(ADAPTERS))
def test_each_foreign_library_has_its_adapter_only(library: str) -> None:
    offenders = [u for u in library_users(MODULES, library) if not under(u.split(":")[0], *ADAPTERS[library])]
    assert offenders == [], f"{library} imported outside its adapter: {offenders}"


def test_codecs_are_pure() -> None:
    allowed = ("gateway.errors", "gateway.records", "gateway.meters.codec")
    stdlib_io = ("asyncio", "socket", "sqlite3", "threading", "subprocess", "os", "time")
    for name, module in MODULES.items():
        if under(name, "gateway.meters.codec"):
            bad = sorted(i for i in module.imported if (under(i, "gateway") and not under(i, *allowed)) or
                         under(i, *stdlib_io))  # fmt: skip
            assert bad == [], f"{name} is a pure codec but imports {bad}"


def test_forward_never_reads_device_code() -> None:
    offenders = _fmt(
        [
            e
            for e in _internal_edges(MODULES)
            if under(e.importer, "gateway.forward") and under(e.imported, "gateway.meters", "gateway.retina")
        ]
    )
    assert offenders == []


def transports_beyond_bytes(modules: dict[str, ModuleImports]) -> list[str]:
    return _fmt(
        [
            e
            for e in _internal_edges(modules)
            if under(e.importer, "gateway.meters.transport") and not any(declared(e.imported, p) for p in FLOORS[0][1])
            and not under(e.imported, "gateway.meters.transport")
        ]
    )  # fmt: skip


def test_meter_transports_only_move_bytes() -> None:
    """transport/ble.py and transport/serial.py are adapters: no codec, driver, session or record in them."""
    check(transports_beyond_bytes, "a meter transport imports more than errors/config (what bytes mean is a driver's)")


def test_web_never_touches_devices_or_the_forwarder() -> None:
    devices = ("gateway.meters", "gateway.retina", "gateway.forward", "gateway.emulate")
    offenders = _fmt(
        [e for e in _internal_edges(MODULES) if under(e.importer, "gateway.web") and under(e.imported, *devices)]
    )
    assert offenders == []


# -- the checks can fail ------------------------------------------------------------------------------------------
def write_package(root: Path, files: dict[str, str]) -> dict[str, ModuleImports]:
    """A throw-away ``gateway`` package under ``root`` with ``files`` (path -> source), scanned."""
    package = root / "gateway"
    for rel, source in {"__init__.py": "", **files}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(package).parents:
            (package / parent / "__init__.py").touch()
        path.write_text(source, encoding="utf-8")
    return scan_package(package)


VIOLATIONS: dict[str, tuple[Rule, dict[str, str], str]] = {
    "no floor": (modules_without_a_floor, {"stray.py": ""}, "gateway.stray"),
    "upward, lazy": (
        upward_imports,
        {"records.py": "def f():\n    from gateway.services import x\n", "services.py": ""},
        "gateway.records:2 -> gateway.services (lazy)",
    ),
    "upward, TYPE_CHECKING": (
        upward_imports,
        {"store/db.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gateway.runtime\n",
         "runtime.py": ""},
        "gateway.store.db:3 -> gateway.runtime (type_checking)",
    ),
    "upward, importlib": (
        upward_imports,
        {"wire/contract.py": "import importlib\nimportlib.import_module('gateway.store.db')\n", "store/db.py": ""},
        "gateway.wire.contract:2 -> gateway.store.db (dynamic)",
    ),
    "upward, relative": (
        upward_imports,
        {"store/db.py": "from ..forward import mqtt\n", "forward/mqtt.py": ""},
        "gateway.store.db:1 -> gateway.forward.mqtt (top)",
    ),
    "store beyond wire": (
        store_imports_beyond_wire,
        {"store/db.py": "from gateway.runtime import Runtime\n", "runtime.py": ""},
        "gateway.store.db:1 -> gateway.runtime (top)",
    ),
    "web imports store": (
        web_imports_of_the_store,
        {"web/auth.py": "from gateway.store import audit\n", "store/audit.py": ""},
        "gateway.web.auth:1 -> gateway.store.audit (top)",
    ),
    "command imports a store module": (
        cli_imports_of_store_internals,
        {"commands/users.py": "def f():\n    from gateway.store import users\n", "store/users.py": ""},
        "gateway.commands.users:2 -> gateway.store.users (lazy)",
    ),
    "area imports the CLI": (
        imports_of_the_cli_wing,
        {"meters/session.py": "def f():\n    from gateway.commands.common import EXIT_OK\n",
         "commands/common.py": ""},
        "gateway.meters.session:2 -> gateway.commands.common (lazy)",
    ),
    "command imports another command": (
        commands_reaching_into_each_other,
        {"commands/users.py": "from gateway.commands.outbox import _open\n", "commands/outbox.py": ""},
        "gateway.commands.users:1 -> gateway.commands.outbox (top)",
    ),
    "command imports the cli back": (
        commands_reaching_into_each_other,
        {"commands/users.py": "from gateway.cli import main\n", "cli.py": ""},
        "gateway.commands.users:1 -> gateway.cli (top)",
    ),
    "emulate from the daemon": (
        emulate_importers,
        {"daemon.py": "from gateway.emulate import synthetic\n", "emulate/synthetic.py": ""},
        "gateway.daemon:1 -> gateway.emulate.synthetic (top)",
    ),
    "transport decodes": (
        transports_beyond_bytes,
        {"meters/transport/ble.py": "from gateway.meters.codec import gls\n", "meters/codec/gls.py": ""},
        "gateway.meters.transport.ble:1 -> gateway.meters.codec.gls (top)",
    ),
    "cycle through a lazy import": (
        import_cycles,
        {"store/db.py": "def f():\n    from gateway.store.events import add\n",
         "store/events.py": "from gateway.store.outbox import enqueue\n",
         "store/outbox.py": "from . import db\n"},
        "gateway.store.db -> gateway.store.events -> gateway.store.outbox",
    ),
    "cycle through importlib": (
        import_cycles,
        {"daemon.py": "import importlib\nimportlib.import_module('.demo', package='gateway')\n",
         "demo.py": "from gateway import daemon\n"},
        "gateway.daemon -> gateway.demo",
    ),
    "self-import by name": (
        import_cycles,
        {"daemon.py": "__import__('gateway.daemon')\n"},
        "gateway.daemon",
    ),
    "computed name": (
        imports_by_computed_name,
        {"cli.py": "import importlib\nfor name in ('a', 'b'):\n    importlib.import_module(name)\n"},
        "gateway.cli:3",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_each_rule_catches_its_violation(tmp_path: Path, case: str) -> None:
    rule, files, expected = VIOLATIONS[case]
    assert expected in [o.split(" [")[0] for o in rule(write_package(tmp_path, files))]


def test_a_clean_synthetic_package_passes_every_rule(tmp_path: Path) -> None:
    modules = write_package(
        tmp_path,
        {
            "records.py": "",
            "wire/contract.py": "from gateway import records\n",
            "store/db.py": "from gateway.wire import contract\nfrom . import outbox\n",
            "store/outbox.py": "import typing\nif typing.TYPE_CHECKING:\n    from gateway.records import X\n",
            "services.py": "from gateway.store import db\n",
            "web/app.py": "from gateway import services\n",
            "commands/common.py": "",
            "commands/outbox.py": "from gateway.commands.common import EXIT_OK\nfrom gateway.emulate import platform\n",
            "emulate/platform.py": "from gateway.wire import contract\n",
            "cli.py": "from gateway.commands import outbox\n",
            "errors.py": "",
            "meters/transport/serial.py": "from gateway.errors import DeviceError\nfrom . import common\n",
            "meters/transport/common.py": "",
            "commands/store.py": "from gateway.store import open_store\nfrom gateway import services\n",
        },
    )
    rules = (modules_without_a_floor, upward_imports, store_imports_beyond_wire, web_imports_of_the_store,
             cli_imports_of_store_internals, imports_of_the_cli_wing, commands_reaching_into_each_other,
             emulate_importers, import_cycles, imports_by_computed_name, transports_beyond_bytes)  # fmt: skip
    assert {rule.__name__: rule(modules) for rule in rules} == {rule.__name__: [] for rule in rules}


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = (
        "from __future__ import annotations\n"
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..wire import contract as c\n"
        "if TYPE_CHECKING:\n"
        "    from gateway.runtime import Runtime\n"
        "def f():\n"
        "    import gateway.services\n"
        "    return importlib.import_module('gateway.web.app'), __import__('json')\n"
    )
    modules = write_package(tmp_path, {"store/db.py": source, "store/sibling.py": "", "wire/contract.py": ""})
    edges = {(e.imported, e.how) for e in modules["gateway.store.db"].edges}
    assert edges >= {
        ("gateway.store.sibling", How.TOP),
        ("gateway.wire.contract", How.TOP),
        ("gateway.runtime", How.TYPE_CHECKING),
        ("gateway.services", How.LAZY),
        ("gateway.web.app", How.DYNAMIC),
        ("json", How.DYNAMIC),
    }
