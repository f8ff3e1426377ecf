"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine needed): every
infogrowth command parses with the project's own parser under the environment compose gives
it, credentials have no built-in default, Kafka keeps its data in its volume."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from infogrowth.commands.cli import build_parser, settings_from_args
from infogrowth.io.avro import SCHEMAS_ENV
from infogrowth.settings import CONFIG_ENV, FIELD_TYPES, WORKER_ROLES, env_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# What a user exports before `docker compose up` (the file itself holds no credentials).
USER_ENV = {"MINIO_ROOT_USER": "crawler-team", "MINIO_ROOT_PASSWORD": "a-real-password-42"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def interpolate(value: Any) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with USER_ENV set."""
    return INTERPOLATION.sub(lambda m: USER_ENV[m.group(1)], str(value))


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    return {name: interpolate(value) for name, value in service.get("environment", {}).items()}


INFOGROWTH_SERVICES = {
    name: service for name, service in SERVICES.items() if command_of(service)[:1] == ["infogrowth"]
}


def test_compose_starts_every_worker_role() -> None:
    assert INFOGROWTH_SERVICES, "no service runs infogrowth"
    roles: list[str] = []
    for service in INFOGROWTH_SERVICES.values():
        args = build_parser().parse_args(command_of(service)[1:])
        roles += settings_from_args(args, environ=environment_of(service)).worker_roles.split(",")
    assert sorted(roles) == sorted(WORKER_ROLES)


@pytest.mark.parametrize("name", sorted(INFOGROWTH_SERVICES))
def test_compose_command_parses_with_the_cli_and_its_environment(name: str) -> None:
    service = INFOGROWTH_SERVICES[name]
    try:
        args = build_parser().parse_args(command_of(service)[1:])
    except SystemExit as exc:
        pytest.fail(f"{name}: {command_of(service)} does not parse (exit {exc.code})")

    settings = settings_from_args(args, environ=environment_of(service))  # raises if invalid

    assert settings.s3_secret_key == USER_ENV["MINIO_ROOT_PASSWORD"]
    assert settings.kafka_bootstrap.split(":")[0] in SERVICES
    assert settings.s3_endpoint.split(":")[0] in SERVICES


def test_compose_infogrowth_variables_are_settings() -> None:
    known = {env_name(name) for name in FIELD_TYPES} | {CONFIG_ENV, SCHEMAS_ENV}
    used = set(re.findall(r"\bINFOGROWTH_[A-Z0-9_]+", COMPOSE_TEXT))
    assert used, "compose sets no INFOGROWTH_* variable"
    assert used <= known, f"not settings: {sorted(used - known)}"


def test_compose_credentials_must_be_given() -> None:
    credential = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER")
    checked = 0
    for service in SERVICES.values():
        for name, value in service.get("environment", {}).items():
            if credential.search(name):
                checked += 1
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {value}"
    assert checked >= 4  # MinIO's user and password, the workers' access and secret key


def test_kafka_keeps_its_data_in_its_volume() -> None:
    kafka = SERVICES["kafka"]
    log_dirs = str(kafka["environment"]["KAFKA_LOG_DIRS"]).split(",")
    mounts = [str(volume).split(":")[1] for volume in kafka["volumes"]]
    for log_dir in log_dirs:
        assert any(Path(log_dir).is_relative_to(mount) for mount in mounts), (log_dir, mounts)


def test_dockerfile_installs_a_cxx_compiler_before_pip() -> None:
    """hnswlib has no wheel on PyPI: `pip install .` compiles it."""
    runs = [
        " ".join(block.split())
        for block in re.split(r"\n(?=[A-Z]+\s)", (ROOT / "Dockerfile").read_text())
        if block.startswith("RUN ")
    ]
    compiler = next(
        (
            i
            for i, run in enumerate(runs)
            if re.search(r"apt-get install .*(build-essential|g\+\+)", run)
        ),
        None,
    )
    pip = next((i for i, run in enumerate(runs) if "pip install" in run), None)
    assert compiler is not None and pip is not None and compiler < pip, runs
