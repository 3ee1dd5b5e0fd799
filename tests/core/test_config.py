"""The config model: every problem named by key path, env overrides, secret files refused when open."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config, parse_config, read_secret
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MINIMAL = '[gateway]\nsite_id = "chc-1"\ngateway_id = "gw-1"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), environ={})
    assert cfg.forward.port == 1883
    assert cfg.topic_prefix == "cg/v1/chc-1/gw-1/"
    assert cfg.db_path == Path("/var/lib/clinic-gateway/gateway.db")


def test_every_problem_is_named_by_its_key_path(tmp_path: Path) -> None:
    text = MINIMAL + 'bogus = 1\n[forward]\nport = "abc"\ninflight_window = 0\n[meters.ble]\nadapter = 3\n[webb]\nx=1\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    keys = [key for key, _ in info.value.problems]
    assert keys == ["gateway.bogus", "forward.port", "forward.inflight_window", "meters.ble.adapter", "webb"]
    messages = dict(info.value.problems)
    assert messages["gateway.bogus"] == "unknown key"
    assert "'abc'" in messages["forward.port"]


def test_missing_required_section_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[forward]\nport = 1\n"), environ={})
    assert ("gateway", "required key is missing") in info.value.problems


def test_not_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[gateway\n"), environ={})
    assert info.value.problems[0][0] == "(file)"
    assert str(tmp_path) in str(info.value)


def test_environment_overrides_nested_keys_with_toml_scalars(tmp_path: Path) -> None:
    env = {"CG_FORWARD__PORT": "8883", "CG_FORWARD__HOST": "mqtt.example.org", "CG_METERS__BLE__ENABLED": "true"}
    cfg = load_config(write(tmp_path, MINIMAL), environ=env)
    assert (cfg.forward.port, cfg.forward.host, cfg.meters.ble.enabled) == (8883, "mqtt.example.org", True)


def test_environment_override_is_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL), environ={"CG_FORWARD__PORT": "70000"})
    assert info.value.problems[0][0] == "forward.port"


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    text = MINIMAL + f'[forward]\nusername = "gw"\npassword_file = "{secret}"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.problems[0][0] == "forward.password_file"
    assert "chmod 600" in info.value.problems[0][1]
    secret.chmod(0o600)
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.forward.password_file is not None
    assert read_secret(cfg.forward.password_file) == "s3cret"


def test_mutual_tls_needs_both_cert_and_key(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "gateway": {"site_id": "a", "gateway_id": "b"},
                "forward": {"tls": {"ca_file": str(ca), "cert_file": str(ca)}},
            }
        )
    assert info.value.problems[0][0] == "forward.tls"


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"gateway": {"site_id": "a", "gateway_id": "b", "timezone": "Mars/Olympus"}})
    assert info.value.problems[0][0] == "gateway.timezone"


@pytest.mark.parametrize("name", ["gateway.example.toml", "demo.toml"])
def test_shipped_configs_are_valid(name: str) -> None:
    # The example points at files that exist only on a provisioned Pi; its structure must still be valid.
    import tomllib

    parse_config(tomllib.loads((REPO / "config" / name).read_text()), name, check_files=False)


def test_config_check_command_lists_problems_and_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL + "[forward]\nport = 0\ncolour = 'red'\n")
    assert main(["config", "check", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any("forward.port:" in line for line in out)
    assert any("forward.colour: unknown key" in line for line in out)
    assert main(["config", "check", str(write(tmp_path, MINIMAL))]) == 0


def test_env_prefix_without_double_underscore_is_ignored(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), environ={"CG_CONFIG": "/x"})
    assert cfg.gateway.site_id == "chc-1"
