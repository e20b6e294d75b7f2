"""The SSRF allow-list: Label Studio's own banned subnets with exactly the backend's address carved out."""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import label_studio
import pytest
from click.testing import CliRunner

from geolabel.cli import cli
from geolabel.deploy import check_backend_secret, parse_bind, ssrf_settings
from geolabel.errors import ConfigError
from geolabel.ssrf import LABEL_STUDIO_DEFAULT_BANNED_SUBNETS, banned_subnets_except, is_banned

LS_DIR = Path(label_studio.__file__).parent
BACKEND = "172.30.0.10"


def label_studio_default_list() -> list[str]:
    """``default_banned_subnets`` as written in the installed Label Studio's ``validate_ip``."""
    tree = ast.parse((LS_DIR / "core" / "utils" / "io.py").read_text())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "validate_ip")
    assign = next(
        n
        for n in ast.walk(function)
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "default_banned_subnets"
    )
    return [ast.literal_eval(element) for element in assign.value.elts]  # type: ignore[attr-defined]


def test_the_copy_of_label_studios_list_is_exact() -> None:
    assert list(LABEL_STUDIO_DEFAULT_BANNED_SUBNETS) == label_studio_default_list()


def edge_addresses() -> list[str]:
    """First, last and neighbouring addresses of every default subnet, and around the backend."""
    found = {BACKEND, "172.30.0.9", "172.30.0.11", "127.0.0.1", "127.0.0.2", "169.254.169.254"}
    for text in LABEL_STUDIO_DEFAULT_BANNED_SUBNETS:
        net = ipaddress.ip_network(text)
        top = 2**net.max_prefixlen - 1
        for address in (int(net.network_address), int(net.broadcast_address)):
            for value in (address - 1, address, address + 1):
                if 0 <= value <= top:
                    ip = ipaddress.IPv4Address(value) if net.version == 4 else ipaddress.IPv6Address(value)
                    found.add(str(ip))
    return sorted(found)


def test_only_the_backend_is_carved_out() -> None:
    banned = banned_subnets_except([BACKEND])
    for address in edge_addresses():
        default = is_banned(address, LABEL_STUDIO_DEFAULT_BANNED_SUBNETS)
        assert is_banned(address, banned) == (default and address != BACKEND), address


def test_two_addresses_and_loopback() -> None:
    banned = banned_subnets_except(["127.0.0.2", "fd00::5"])
    assert not is_banned("127.0.0.2", banned)
    assert not is_banned("fd00::5", banned)
    for address in ("127.0.0.1", "127.0.0.3", "fd00::4"):
        assert is_banned(address, banned), address


def test_bad_addresses_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        banned_subnets_except(["backend"])
    with pytest.raises(ConfigError, match="needs no allow-listing"):
        banned_subnets_except(["8.8.8.8"])


def test_label_studio_itself_applies_the_list(tmp_path: Path) -> None:
    """Label Studio's own ``validate_ip``, under the printed settings, lets the backend through only."""
    settings = ssrf_settings([BACKEND])
    script = (
        "import json, django; django.setup()\n"
        "from core.utils.io import validate_ip\n"
        "out = {}\n"
        "for ip in json.loads(input()):\n"
        "    try:\n        validate_ip(ip); out[ip] = False\n"
        "    except Exception:\n        out[ip] = True\n"
        "print(json.dumps(out))\n"
    )
    probes = [BACKEND, "172.30.0.2", "172.30.0.11", "127.0.0.1", "169.254.169.254", "10.1.2.3", "8.8.8.8"]
    env = {
        **os.environ,
        **settings,
        "DJANGO_SETTINGS_MODULE": "core.settings.label_studio",
        "PYTHONPATH": str(LS_DIR),
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path),
        "DJANGO_DB": "sqlite",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(probes), env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    refused = json.loads(result.stdout.strip().splitlines()[-1])
    assert refused == {ip: ip not in (BACKEND, "8.8.8.8") for ip in probes}


def test_the_cli_prints_the_settings() -> None:
    result = CliRunner().invoke(cli, ["ssrf-allow", BACKEND])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("=", 1) for line in result.output.strip().splitlines())
    assert lines["SSRF_PROTECTION_ENABLED"] == "true"
    assert lines["ML_BLOCK_LOCAL_IP"] == "true"
    assert lines["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    assert lines["USER_ADDITIONAL_BANNED_SUBNETS"].split(",") == banned_subnets_except([BACKEND])
    refused = CliRunner().invoke(cli, ["ssrf-allow", "8.8.8.8"])
    assert refused.exit_code == 2
    assert "needs no allow-listing" in refused.output


def test_bind_parsing_and_the_backend_password_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from geolabel.config import parse_config

    assert parse_bind("0.0.0.0:9090") == ("0.0.0.0", 9090)
    assert parse_bind("[::]:9090") == ("::", 9090)
    for bad in ("9090", "host:", "host:99999", ":80"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_bind(bad)
    config = parse_config({"classes": [{"id": 1, "name": "building", "color": "#ff0000"}]}, Path("."))
    monkeypatch.delenv("GEOLABEL_ML_BACKEND_PASSWORD", raising=False)
    check_backend_secret(config, "127.0.0.1")  # loopback: a generated password is fine
    with pytest.raises(ConfigError, match="GEOLABEL_ML_BACKEND_PASSWORD"):
        check_backend_secret(config, "0.0.0.0")
    monkeypatch.setenv("GEOLABEL_ML_BACKEND_PASSWORD", "chosen-by-the-operator")
    check_backend_secret(config, "0.0.0.0")


def test_connect_before_any_import_says_what_to_run(tmp_path: Path) -> None:
    """`geolabel connect` in a fresh deployment, before the first import: a clear message, exit code 1."""
    config = tmp_path / "geolabel.toml"
    config.write_text('[[classes]]\nid = 1\nname = "building"\ncolor = "#ff0000"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "connect"])
    assert result.exit_code == 1, result.output
    assert "no project 'geolabel' imported yet" in result.output
    assert "geolabel import" in result.output
