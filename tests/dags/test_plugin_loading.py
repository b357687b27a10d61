"""Airflow loads the streamops plugin once, and its package's modules under their own names only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.dags.conftest import airflow_env

pytestmark = pytest.mark.airflow

# Run in a fresh interpreter: Airflow's plugin loader, then every module that came from plugins/.
LOAD = """
import json, sys
from pathlib import Path
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
plugins, errors = plugins_manager._get_plugins()
folder = Path(sys.argv[1]).resolve()
modules = {
    name: str(Path(m.__file__).resolve().relative_to(folder))
    for name, m in list(sys.modules.items())
    if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(folder)
}
print(json.dumps({"plugins": [p.name for p in plugins], "errors": errors, "modules": modules}))
"""


def test_plugins_are_loaded_once_under_their_package_name(tmp_path: Path) -> None:
    plugins = ROOT / "plugins"
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(plugins)],
        env=airflow_env(tmp_path / "home", tmp_path / "data"),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["errors"] == {}
    assert loaded["plugins"].count("streamops") == 1, loaded["plugins"]
    bare = {
        name: path
        for name, path in loaded["modules"].items()
        if path.startswith("streamops/") and not name.startswith("streamops")
    }
    assert bare == {}, f"modules of plugins/streamops imported under a bare name: {bare}"
    # The package itself was loaded, by its name
    assert "streamops.web" in loaded["modules"], sorted(loaded["modules"])
