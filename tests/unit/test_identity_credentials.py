"""The builtin admin's password: generated once, kept 0600, reused; weak ones named; loopback recognised."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from neutrino.config import Config
from neutrino.errors import ConfigError
from neutrino.identity import credentials


def config(state: Path, password: str = "", host: str = "127.0.0.1") -> Config:
    cfg = Config(state_dir=str(state))
    cfg.identity.admin_password = password
    cfg.api.host = host
    return cfg


def test_generated_once_kept_0600_and_reused(tmp_path: Path) -> None:
    cfg = config(tmp_path / "state")
    with pytest.raises(ConfigError, match="does not exist yet"):
        credentials.admin_password(cfg)  # the tools never generate one
    first = credentials.ensure(cfg)
    kept = tmp_path / "state" / "admin-password"
    assert first.generated and first.source == str(kept)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text() == first.value + "\n"
    assert len(first.value) == 24 and first.value.isalnum() and credentials.weakness(first.value, "admin") is None
    again = credentials.ensure(cfg)
    assert (again.value, again.generated) == (first.value, False)
    assert credentials.admin_password(cfg) == first.value
    assert [p.name for p in kept.parent.iterdir()] == ["admin-password"]  # no temp file left
    assert credentials.ensure(config(tmp_path / "other")).value != first.value


def test_concurrent_first_starts_agree_on_one_password(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    got: list[credentials.AdminPassword] = []
    threads = [threading.Thread(target=lambda: got.append(credentials.ensure(cfg))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({g.value for g in got}) == 1 and sum(g.generated for g in got) == 1
    assert (tmp_path / "admin-password").read_text().strip() == got[0].value


def test_the_config_wins_and_no_file_is_made(tmp_path: Path) -> None:
    (tmp_path / "admin-password").write_text("kept-generated-password\n")
    cfg = config(tmp_path, "configured-password-1")
    assert credentials.ensure(cfg) == credentials.AdminPassword("configured-password-1", "config", False)
    assert credentials.admin_password(cfg) == "configured-password-1"
    assert not credentials.ensure(config(tmp_path / "fresh", "configured-password-1")).generated
    assert not (tmp_path / "fresh").exists()


def test_an_empty_password_file_is_an_error_not_an_empty_password(tmp_path: Path) -> None:
    (tmp_path / "admin-password").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        credentials.ensure(config(tmp_path))


@pytest.mark.parametrize("password,user,reason", [
    ("admin", "admin", "well-known"), ("Secret", "admin", "well-known"), ("change-me", "admin", "well-known"),
    ("NoMoreSecret", "admin", "well-known"), ("s3cr3t-pw", "admin", "shorter than 12"),
    ("operator-account", "Operator-Account", "user name"), ("aaaaaaaaaaaaaaa", "admin", "too few"),
    ("abababababababab", "admin", "too few"),
])
def test_weak_passwords_are_named(password: str, user: str, reason: str) -> None:
    found = credentials.weakness(password, user)
    assert found is not None and reason in found


@pytest.mark.parametrize("password", ["correct-horse-battery-staple", "Xk2#pL9!qR4z", "s3cret-admin"])
def test_strong_passwords_pass(password: str) -> None:
    assert credentials.weakness(password, "admin") is None


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST.", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("", False),
    ("192.0.2.10", False), ("10.0.0.1", False), ("fe80::1%eth0", False), ("example.com", False),
    ("localhost.example.com", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert credentials.is_loopback(host) is loopback


def test_weak_refused_beyond_loopback_only_in_builtin_mode(tmp_path: Path) -> None:
    weak = credentials.AdminPassword("admin", "config", False)
    credentials.refuse_weak_beyond_loopback(config(tmp_path, "admin", "127.0.0.1"), weak)
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 .*well-known"):
        credentials.refuse_weak_beyond_loopback(config(tmp_path, "admin", "0.0.0.0"), weak)
    with pytest.raises(ConfigError, match="all addresses"):
        credentials.refuse_weak_beyond_loopback(config(tmp_path, "admin", ""), weak)
    keystone = config(tmp_path, "admin", "0.0.0.0")
    keystone.identity.mode = "keystone"
    credentials.refuse_weak_beyond_loopback(keystone, weak)
    strong = credentials.AdminPassword(credentials.generate(), str(tmp_path / "admin-password"), True)
    credentials.refuse_weak_beyond_loopback(config(tmp_path, "", "0.0.0.0"), strong)


def test_a_state_dir_that_cannot_hold_the_file_is_a_config_error(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=r"admin password .* Not a directory"):
        credentials.ensure(config(tmp_path / "a-file" / "state"))

    def refuse(*args: object, **kw: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("neutrino.identity.credentials.tempfile.mkstemp", refuse)  # root writes anywhere
    with pytest.raises(ConfigError, match=r"cannot keep a generated admin password .* Permission denied"):
        credentials.ensure(config(tmp_path / "state"))
