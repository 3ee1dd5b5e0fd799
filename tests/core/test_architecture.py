"""The layering rules of STYLE.md, checked on the source (AST), so they cannot rot silently.

Pure modules import no I/O library; each foreign library has its one adapter; forward/ never reads device
code; web/ reads the store only through services; emulators are never imported by the daemon's paths.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def importers_of(prefix: str) -> set[str]:
    return {m for m, imps in MODULES.items() if any(i == prefix or i.startswith(prefix + ".") for i in imps)}


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


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
    "bluezoo": (),
}


@pytest.mark.parametrize("library", sorted(ADAPTERS))
def test_each_foreign_library_has_its_adapter_only(library: str) -> None:
    offenders = sorted(m for m in importers_of(library) if not under(m, *ADAPTERS[library]))
    assert offenders == [], f"{library} imported outside its adapter: {offenders}"


def test_codecs_are_pure() -> None:
    allowed = ("gateway.errors", "gateway.records", "gateway.meters.codec")
    stdlib_io = ("asyncio", "socket", "sqlite3", "threading", "subprocess", "os", "time")
    for module, imps in MODULES.items():
        if not under(module, "gateway.meters.codec"):
            continue
        bad = sorted(i for i in imps if (i.startswith("gateway") and not under(i, *allowed)) or i in stdlib_io)
        assert bad == [], f"{module} is a pure codec but imports {bad}"


def test_forward_never_reads_device_code() -> None:
    offenders = sorted(
        m for m in MODULES if under(m, "gateway.forward")
        for i in MODULES[m] if under(i, "gateway.meters", "gateway.retina")
    )
    assert offenders == []


def test_web_goes_through_services() -> None:
    offenders = sorted(
        (m, i) for m in MODULES if under(m, "gateway.web")
        for i in MODULES[m] if under(i, "gateway.meters", "gateway.retina", "gateway.forward.mqtt",
                                     "gateway.forward.forwarder", "gateway.emulate")
    )
    assert offenders == []


def test_emulators_are_only_used_by_the_demo_and_their_commands() -> None:
    allowed = ("gateway.emulate", "gateway.demo", "gateway.cli", "gateway.commands")
    offenders = sorted(m for m in importers_of("gateway.emulate") if not under(m, *allowed))
    assert offenders == []


def test_store_is_below_the_device_and_web_layers() -> None:
    for module, imps in MODULES.items():
        if under(module, "gateway.store"):
            bad = [i for i in imps if under(i, "gateway.meters", "gateway.retina", "gateway.web", "gateway.daemon",
                                             "gateway.services", "gateway.forward.mqtt", "gateway.forward.forwarder")]
            assert bad == [], f"{module} imports {bad}"
