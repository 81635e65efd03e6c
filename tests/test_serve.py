"""`regionlock serve` refuses to start on a bad seed bundle, naming the file and the path."""

from __future__ import annotations

import os
import subprocess
import sys


def test_bad_seed_bundle_stops_start_up_naming_the_path(tmp_path, redis_url):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "10-rules.yaml").write_text(
        "rules:\n  - id: s\n    type: sanctioned_region\n    regions: [CU, XX]\n    signals: [ip]\n"
    )
    env = {
        **os.environ,
        "REGIONLOCK_POLICIES": str(policies),
        "REGIONLOCK_REDIS_URL": redis_url,
        "REGIONLOCK_VAR_DIR": str(tmp_path / "var"),
        "REGIONLOCK_BIND": "127.0.0.1:1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"the seed bundle in {policies} is invalid" in result.stderr
    assert "10-rules.yaml:rules.0.regions.1: unknown country code 'XX'" in result.stderr
