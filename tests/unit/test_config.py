from __future__ import annotations

from pathlib import Path

import pytest

from neutrino import config
from neutrino.errors import ConfigError


def test_file_then_env(tmp_path: Path) -> None:
    f = tmp_path / "n.yaml"
    f.write_text("api:\n  port: 9797\nnetwork:\n  base_mac: 'fa:16:3f:00:00:00'\n")
    cfg = config.load(f, env={"NEUTRINO_API__PORT": "9898", "NEUTRINO_AGENT__PHYSICAL_INTERFACE_MAPPINGS":
                              "physnet1:eth1"})
    assert cfg.api.port == 9898 and cfg.network.base_mac == "fa:16:3f:00:00:00"
    assert cfg.agent.physical_interface_mappings == {"physnet1": "eth1"}


def test_unknown_and_wrong_types_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "n.yaml"
    f.write_text("api:\n  prot: 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        config.load(f, env={})
    with pytest.raises(ConfigError, match="expected an integer"):
        config.load(None, env={"NEUTRINO_API__PORT": "lots"})


def test_the_readme_example_is_a_valid_config(tmp_path: Path) -> None:
    """The configuration block in the README loads as it stands (every key known, every type right)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "n.yaml"
    f.write_text(block)
    cfg = config.load(f, env={})
    assert cfg.agent.resync_seconds == 2.0 and cfg.network.vlan_ranges == ["physnet1:100:199"]
