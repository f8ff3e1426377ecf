"""Settings layers (built-in < command default < config file < environment < flag), one-line
errors naming their source, and secrets that never reach help, repr or error output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infogrowth.commands import cli
from infogrowth.settings import CONFIG_ENV, FIELD_TYPES, Settings, SettingsError, env_name
from infra import free_port

SECRET = "Zq9-distinctive-S3-secret"
SUBCOMMANDS = ("curate", "ingest", "export", "worker", "replay", "demo")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No INFOGROWTH_* setting of the developer's shell leaks in; relative paths in tmp_path."""
    for name in [*map(env_name, FIELD_TYPES), CONFIG_ENV]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def run_cli(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[int, Settings | None]:
    """``cli.main(argv)`` with the command replaced by one that records its settings."""
    seen: list[Settings] = []

    def record(args: Any, settings: Settings) -> int:
        seen.append(settings)
        return 0

    command = argv[0]
    monkeypatch.setattr(cli, f"cmd_{command}", record)
    code = cli.main(argv)
    return code, (seen[0] if seen else None)


# --- precedence --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "config", "env", "expected"),
    [
        (["curate", "in.jsonl", "--out", "o.jsonl"], None, {}, 0.4),  # built-in
        (["demo"], None, {}, 0.25),  # the demo's own default
        (["demo", "--config", "recipe.yaml"], "delta: 0.3", {}, 0.3),
        (["demo"], "delta: 0.3", {CONFIG_ENV: "recipe.yaml"}, 0.3),
        (["demo", "--config", "recipe.yaml"], "delta: 0.3", {"INFOGROWTH_DELTA": "0.35"}, 0.35),
        (["demo", "--delta", "0.45"], "delta: 0.3", {"INFOGROWTH_DELTA": "0.35"}, 0.45),
    ],
    ids=["built-in", "command-default", "config-file", "config-env", "environment", "flag"],
)
def test_each_layer_overrides_the_one_before(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    config: str | None,
    env: dict[str, str],
    expected: float,
) -> None:
    if config is not None:
        Path("recipe.yaml").write_text(config)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    code, settings = run_cli(monkeypatch, argv)

    assert code == 0 and settings is not None
    assert settings.delta == expected


def test_layers_merge_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("recipe.yaml").write_text("k: 7\ntau: 0.2\npolicy: budget\ns3_secure: true\n")
    monkeypatch.setenv("INFOGROWTH_K", "5")
    argv = ["demo", "--config", "recipe.yaml", "--policy", "all"]

    code, settings = run_cli(monkeypatch, argv)

    assert code == 0 and settings is not None
    assert (settings.k, settings.tau, settings.policy) == (5, 0.2, "all")
    assert settings.s3_secure is True and settings.delta == 0.25  # file, command default


def test_flag_given_config_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("a.yaml").write_text("k: 2\n")
    Path("b.yaml").write_text("k: 3\n")
    monkeypatch.setenv(CONFIG_ENV, "a.yaml")

    assert run_cli(monkeypatch, ["demo"])[1].k == 2  # type: ignore[union-attr]
    assert run_cli(monkeypatch, ["demo", "--config", "b.yaml"])[1].k == 3  # type: ignore[union-attr]


# --- one-line errors naming the source ---------------------------------------------------
@pytest.mark.parametrize(
    ("config", "env", "flags", "message"),
    [
        ("delta: 2", {}, [], "recipe.yaml: delta: must be in [0, 1], got 2.0"),
        ("delt: 0.3", {}, [], "recipe.yaml: delt: unknown setting (did you mean delta?)"),
        ("k: 1.5", {}, [], "recipe.yaml: k: must be an integer, got 1.5"),
        ("s3_secure: maybe", {}, [], "recipe.yaml: s3_secure: must be true or false"),
        ("policy: best", {}, [], "recipe.yaml: policy: must be one of threshold|budget|all"),
        ("[delta, 2]", {}, [], "recipe.yaml: must be a mapping of setting names to values"),
        ("k: 3\n  x: : y", {}, [], "recipe.yaml: not valid YAML (line 2, column 4: "),
        (None, {"INFOGROWTH_DELTA": "2"}, [], "environment: INFOGROWTH_DELTA: must be in [0, 1]"),
        (None, {"INFOGROWTH_K": "four"}, [], "environment: INFOGROWTH_K: must be an integer"),
        (None, {CONFIG_ENV: "missing.yaml"}, [], "missing.yaml: cannot read (No such file"),
        (None, {}, ["--delta", "2"], "command line: --delta: must be in [0, 1], got 2.0"),
        (None, {}, ["--batch-size", "0"], "command line: --batch-size: must be >= 1, got 0"),
        (
            "producer_batch_bytes: 2000000",  # a batch over the broker's message limit
            {},
            [],
            "recipe.yaml: producer_batch_bytes: must be in [16384, 1000000], got 2000000",
        ),
        (None, {}, ["--tau", "high"], "command line: --tau: must be a number, got 'high'"),
        (
            None,
            {"INFOGROWTH_WORKER_ROLES": "curatr"},
            [],
            "environment: INFOGROWTH_WORKER_ROLES: must be a comma-separated subset",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_source_and_field(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config: str | None,
    env: dict[str, str],
    flags: list[str],
    message: str,
) -> None:
    argv = ["curate", "in.jsonl", "--out", "o.jsonl", *flags]
    if config is not None:
        Path("recipe.yaml").write_text(config)
        argv += ["--config", "recipe.yaml"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    code, settings = run_cli(monkeypatch, argv)

    captured = capsys.readouterr()
    assert (code, settings, captured.out) == (2, None, "")
    assert captured.err.startswith(f"infogrowth curate: error: {message}")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_help_still_works_with_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFOGROWTH_DELTA", "2")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["curate", "--help"])
    assert exit_.value.code == 0 and "--config FILE.yaml" in capsys.readouterr().out


# --- secrets -----------------------------------------------------------------------------
def test_settings_repr_masks_the_secret() -> None:
    settings = Settings(s3_secret_key=SECRET)
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert SECRET not in text and "s3_secret_key=***" in text
    assert settings.mask(f"signed with {SECRET}") == "signed with ***"


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_shows_the_secret_default_as_stars(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str | None
) -> None:
    monkeypatch.setenv("INFOGROWTH_S3_SECRET_KEY", SECRET)
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"] if command else ["--help"])
    captured = capsys.readouterr()
    output = captured.out + captured.err

    assert exit_.value.code == 0 and SECRET not in output
    if command:
        assert "--s3-secret-key" in output and "(default: ***;" in output


@pytest.mark.parametrize(
    ("error", "code", "shape"),
    [
        (ValueError, 2, "infogrowth curate: error: endpoint refused key ***\n"),
        (KeyError, 1, "Traceback"),  # unexpected errors keep their traceback, masked
    ],
)
def test_error_output_masks_the_secret(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: type[Exception],
    code: int,
    shape: str,
) -> None:
    def leaky(args: Any, settings: Settings) -> int:
        raise error(f"endpoint refused key {settings.s3_secret_key}")

    monkeypatch.setattr(cli, "cmd_curate", leaky)
    Path("recipe.yaml").write_text(f"s3_secret_key: {SECRET}\n")

    assert cli.main(["curate", "in.jsonl", "--out", "o.jsonl", "--config", "recipe.yaml"]) == code

    err = capsys.readouterr().err
    assert SECRET not in err and shape in err and "***" in err


def test_a_bad_secret_value_is_reported_without_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("recipe.yaml").write_text("s3_secret_key: 31415926535\n")  # a number, not a string
    code, _ = run_cli(monkeypatch, ["curate", "in.jsonl", "--out", "o", "--config", "recipe.yaml"])
    err = capsys.readouterr().err
    assert code == 2 and "recipe.yaml: s3_secret_key: must be a string, got ***" in err
    assert "31415926535" not in err


def test_the_built_in_credentials_are_refused_for_a_remote_endpoint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["curate", "in.jsonl", "--out", "o.jsonl", "--s3-endpoint", "minio:9000"]

    code, _ = run_cli(monkeypatch, argv)

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "s3_secret_key: the built-in default is for the local S3 gateway only" in err
    code, settings = run_cli(monkeypatch, [*argv, "--s3-secret-key", SECRET])
    assert code == 0 and settings is not None and settings.s3_endpoint == "minio:9000"
    for local in ("127.0.0.1:9000", "localhost:9000", "[::1]:9000"):
        assert Settings(s3_endpoint=local).s3_endpoint == local
    with pytest.raises(SettingsError, match="s3_secret_key"):
        Settings(s3_endpoint="s3.example.com:443")


def _cli_output(*args: str) -> tuple[int, str]:
    """The real command in a child process: every byte it writes to stdout and stderr."""
    env = {**os.environ, "INFOGROWTH_S3_SECRET_KEY": SECRET, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "infogrowth.commands.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
    )
    return done.returncode, done.stdout.decode(errors="replace")


def test_failing_commands_never_print_the_secret(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "image": "a.png", "caption": "c"}\n')
    runs = [
        ("ingest", str(tmp_path / "missing.jsonl")),
        ("ingest", str(src), "--kafka-bootstrap", dead, "--s3-endpoint", dead),
        ("curate", str(src), "--out", str(tmp_path / "o.jsonl"), "--delta", "2"),
    ]
    for args in runs:
        code, output = _cli_output(*args)
        assert code == 2 and SECRET not in output, (args, output)
        assert "Traceback" not in output


@pytest.mark.kafka
@pytest.mark.s3
def test_s3_failures_never_print_the_secret(kafka: str, s3: Any, tmp_path: Path) -> None:
    """An unreachable endpoint and a rejected key, after a real broker accepted the run."""
    (tmp_path / "a.png").write_bytes(b"\x89PNG not really")
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "image": "a.png", "caption": "c"}\n')
    base = ("ingest", str(src), "--quiet", "--kafka-bootstrap", kafka, "--s3-access-key")
    dead = f"127.0.0.1:{free_port()}"

    code, output = _cli_output(*base, s3.access_key, "--s3-endpoint", dead)
    assert code == 2 and f"S3 endpoint at {dead} is unreachable" in output
    assert SECRET not in output

    code, output = _cli_output(*base, s3.access_key, "--s3-endpoint", s3.endpoint)
    assert code == 2 and f"S3 at {s3.endpoint}" in output  # the gateway refuses the key
    assert SECRET not in output and "Traceback" not in output


@pytest.mark.parametrize("typo", [["--s3-secret-ky", SECRET], [f"--openai-api-ky={SECRET}"]])
def test_a_misspelt_secret_flag_is_named_without_its_value(
    typo: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["curate", "in.jsonl", "--out", "o.jsonl", *typo])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert SECRET not in err and typo[0].split("=")[0] in err and "values not shown" in err
