"""The multi-host lab's bookkeeping: its record survives a round trip, its prefix is the state dir's,
and `instance create --host` forwards the command without the options that only the machine side reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from neutrino.cli import main, parse
from neutrino.hosts import Process
from neutrino.lab.multihost import HostRecord, LabRecord, prefix_for, strip_options


def test_the_record_round_trips() -> None:
    rec = LabRecord("nl123456", 9797, "/tmp/clouds.yaml", "/etc/n.yaml", 2.0, Process(10, 20),
                    {"host2": HostRecord(2, Process(30, 40), None), "host1": HostRecord(1, None, None)})
    again = LabRecord.from_json(rec.to_json())
    assert again == rec
    assert list(rec.to_json()["hosts"]) == ["host1", "host2"]  # by index


def test_the_prefix_belongs_to_the_state_dir(tmp_path: Path) -> None:
    a, b = prefix_for(tmp_path / "a"), prefix_for(tmp_path / "b")
    assert re.fullmatch(r"nl[0-9a-f]{6}", a) and a != b
    assert prefix_for(tmp_path / "x" / ".." / "a") == a


def test_forwarded_instance_commands_lose_the_lab_options() -> None:
    argv = ["--state-dir", "/lab", "instance", "create", "--host", "host2", "--network=demo", "vm1",
            "--config=/c.yaml", "--fixed-ip", "10.0.0.5"]
    assert strip_options(argv, ("--host", "--state-dir", "--config")) == [
        "instance", "create", "--network=demo", "vm1", "--fixed-ip", "10.0.0.5"]


def test_lab_commands_take_the_state_dir_after_their_words() -> None:
    args = parse(["lab", "host", "stop", "--state-dir", "/lab", "host1"])
    assert (args.action, args.host_action, args.name, args.state_dir) == ("host", "stop", "host1", "/lab")
    assert parse(["--state-dir", "/lab", "lab", "down"]).state_dir == "/lab"
    args = parse(["lab", "exec", "upstream", "--", "ip", "-4", "addr"])
    assert (args.name, args.argv) == ("upstream", ["ip", "-4", "addr"])
    args = parse(["instance", "create", "--host", "host3", "--network", "demo", "vm1"])
    assert args.lab_host == "host3"


def test_a_state_dir_of_another_neutrino_is_not_the_labs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "neutrino.db").write_text("not the lab's")
    assert main(["lab", "up", "--hosts", "2", "--state-dir", str(tmp_path), "--clouds-yaml", ""]) == 1
    assert "not a lab" in capsys.readouterr().err
    assert main(["lab", "down", "--state-dir", str(tmp_path)]) == 0
    assert "no lab in" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neutrino.db"]
    assert main(["lab", "host", "stop", "host1", "--state-dir", str(tmp_path)]) == 1
    assert "no lab in" in capsys.readouterr().err
    assert main(["lab", "up", "--hosts", "0", "--state-dir", str(tmp_path)]) == 1
    assert "between 1 and" in capsys.readouterr().err
