"""`oca-server --check-config` and `oca-fill --check-config` on one shared file, as subprocesses.

The server validates only the appliance's sections and lets [fill] through;
the fill agent validates [fill] with its cross-checks against [signing].
"""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT
from tests.unit.test_fill_config import write


def test_check_config_of_both_programs(tmp_path):
    good = write(tmp_path, 'manifest_url = "https://c/m.json"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('manifest_url = "https://c/m.json"', 'manifest_url = "ftp://c/m.json"'))
    for path, fill_code in ((good, 0), (bad, 1)):
        server = subprocess.run([sys.executable, "-m", "oca.server.main", "--config", str(path), "--check-config"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert server.returncode == 0, server.stderr  # the server validates only its own sections
        fill = subprocess.run([sys.executable, "-m", "fill.cli", "--config", str(path), "--check-config"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert fill.returncode == fill_code, fill.stderr
    assert "fill.manifest_url: 'ftp://c/m.json' must be an http:// or https:// URL" in fill.stderr
