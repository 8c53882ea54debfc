"""The command line: global options on either side of the command, --format on every read command, one-line
errors, and help that names every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neutrino import cli

# Every command and action, with the arguments it needs to parse.
COMMANDS: list[list[str]] = [
    ["up"], ["server"], ["agent"], ["status"], ["cleanup"], ["db", "upgrade"], ["clouds-yaml"],
    ["instance", "create", "vm1", "--network", "demo"], ["instance", "create", "vm1", "--port", "p1"],
    ["instance", "list"], ["instance", "delete", "vm1"],
    ["instance", "exec", "vm1"], ["instance", "sweep"],
]
GLOBALS = {"--config": ("config", "/etc/n.yaml"), "--state-dir": ("state_dir", "/var/lib/n"),
           "--log-level": ("log_level", "DEBUG"), "--log-format": ("log_format", "json")}


def flat(options: dict[str, str]) -> list[str]:
    return [w for pair in options.items() for w in pair]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_on_either_side_of_the_command(command: list[str], where: str) -> None:
    opts = flat({flag: value for flag, (_, value) in GLOBALS.items()}) + ["--debug"]
    argv = opts + command if where == "before" else command + opts
    if command[-1:] == ["vm1"] and command[1] == "exec" and where == "after":
        argv = command + opts  # everything after NAME is the instance's command line
        args = cli.parse(argv)
        assert args.argv == opts and args.state_dir is None
        return
    args = cli.parse(argv)
    for attr, value in GLOBALS.values():
        assert getattr(args, attr) == value, (argv, attr)
    assert args.debug is True


def test_a_global_option_between_command_and_action() -> None:
    args = cli.parse(["instance", "--state-dir", "X", "list"])
    assert (args.command, args.action, args.state_dir) == ("instance", "list", "X")
    args = cli.parse(["db", "--config", "c.yaml", "upgrade"])
    assert (args.command, args.action, args.config) == ("db", "upgrade", "c.yaml")


def test_the_later_of_two_values_wins_and_unset_is_none() -> None:
    assert cli.parse(["--state-dir", "A", "status", "--state-dir", "B"]).state_dir == "B"
    args = cli.parse(["status"])
    assert (args.config, args.state_dir, args.log_level, args.log_format, args.debug) == (None, None, None, None,
                                                                                          False)


@pytest.mark.parametrize(("command", "formats"), [
    (["status"], ["table", "json"]), (["instance", "list"], ["table", "json"]), (["clouds-yaml"], ["yaml", "json"])])
def test_every_read_command_has_format(command: list[str], formats: list[str]) -> None:
    assert cli.parse(command).format == formats[0]
    for fmt in formats:
        assert cli.parse([*command, "--format", fmt]).format == fmt
    with pytest.raises(SystemExit):
        cli.parse([*command, "--format", "xml"])


def test_status_json_is_format_json() -> None:
    assert cli.parse(["status", "--json"]).format == "json"


def test_db_upgrade_needs_its_action_and_the_old_name_still_parses() -> None:
    with pytest.raises(SystemExit):
        cli.parse(["db"])
    assert cli.parse(["db-upgrade", "--state-dir", "X"]).state_dir == "X"


def test_help_lists_every_command_and_the_global_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse(["--help"])
    out = capsys.readouterr().out
    for name in ("up", "server", "agent", "status", "instance", "cleanup", "db", "clouds-yaml"):
        assert f"\n    {name} " in out, name
    assert "db-upgrade" not in out
    assert "global options (before or after the command)" in out
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            cli.parse([*command[:2], "--help"] if command[0] in ("instance", "db") else [command[0], "--help"])
        assert "--state-dir DIR" in capsys.readouterr().out, command


def test_instance_create_port_choices() -> None:
    args = cli.parse(["instance", "create", "vm1", "--network", "demo", "--security-group", "web",
                      "--security-group", "0b4c0e0e-5a4e-4a4e-9a4e-0b4c0e0e5a4e", "--fixed-ip", "10.0.0.5"])
    assert (args.network, args.port_ref, args.no_port_security) == ("demo", None, False)
    assert args.security_group == ["web", "0b4c0e0e-5a4e-4a4e-9a4e-0b4c0e0e5a4e"] and args.fixed_ip == ["10.0.0.5"]
    args = cli.parse(["instance", "create", "vm1", "--network", "demo"])
    assert (args.security_group, args.no_port_security) == (None, False)  # the project's default group
    args = cli.parse(["instance", "create", "vm1", "--network", "demo", "--no-port-security"])
    assert args.no_port_security is True and args.security_group is None
    args = cli.parse(["instance", "create", "vm1", "--port", "my-port"])
    assert (args.port_ref, args.network) == ("my-port", None)


def test_instance_port_is_not_the_api_port(tmp_path: Path) -> None:
    """``--port`` names a Neutron port; it must not become the API port the client talks to."""
    args = cli.parse(["instance", "create", "vm1", "--port", "9797", "--state-dir", str(tmp_path)])
    assert cli._load(args).api.port == 9696


@pytest.mark.parametrize("argv", [
    ["--network", "demo", "--port", "p1"],                      # one or the other
    [],                                                         # one of them is needed
    ["--network", "demo", "--security-group", "web", "--no-port-security"],
    ["--port", "p1", "--security-group", "web"],                # an existing port is taken as it is
    ["--port", "p1", "--no-port-security"],
    ["--port", "p1", "--fixed-ip", "10.0.0.5"],
], ids=" ".join)
def test_instance_create_refuses_conflicting_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse(["instance", "create", "vm1", *argv])
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


def test_table_aligns_and_fills_empty_cells() -> None:
    text = cli.table([{"name": "vm1", "addresses": ["10.0.0.3/24", "fd00::3/64"], "now": []},
                      {"name": "longer-name", "addresses": [], "now": None}], ["name", "addresses", "now"])
    assert text.splitlines() == ["NAME         ADDRESSES                NOW",
                                 "vm1          10.0.0.3/24, fd00::3/64  -",
                                 "longer-name  -                        -"]


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No server on this state dir: the instance's bookkeeping says nothing exists.
    assert cli.main(["--state-dir", str(tmp_path), "instance", "delete", "vm1"]) == 1
    assert capsys.readouterr().err == "neutrino instance delete: instance vm1 not found\n"
    assert cli.main(["instance", "exec", "Bad_Name", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Bad_Name" in err
    (tmp_path / "bad.yaml").write_text("api: [")
    assert cli.main(["status", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neutrino: configuration error:") and err.count("\n") == 1


def test_clouds_yaml_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUTRINO_IDENTITY__ADMIN_PASSWORD", "a-long-enough-password")
    assert cli.main(["clouds-yaml", "--format", "json", "--state-dir", str(tmp_path)]) == 0
    entry = json.loads(capsys.readouterr().out)["clouds"]["neutrino"]
    assert entry["auth"]["password"] == "a-long-enough-password"


def test_display_url_hides_the_database_password() -> None:
    assert cli._display_url("postgresql://u:pw@db:5432/n") == "postgresql://u:***@db:5432/n"
    assert cli._display_url("postgresql://u@db/n") == "postgresql://u@db/n"
    assert cli._display_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
