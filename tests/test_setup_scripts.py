"""The install-time checks `make` runs before creating .venv."""
import os
import subprocess
from pathlib import Path

CHECK_DISK = Path(__file__).parents[1] / "scripts" / "check_disk.sh"


def check_disk(folder: Path, need_gb: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "NEED_GB": str(need_gb), "TMPDIR": str(folder)}
    return subprocess.run(["bash", str(CHECK_DISK), str(folder)], env=env, capture_output=True, text=True)


def test_disk_check_stops_with_a_message_when_space_is_short(tmp_path):
    result = check_disk(tmp_path, need_gb=10**9)
    assert result.returncode == 1
    assert str(tmp_path) in result.stderr and "VENV=" in result.stderr and "NEED_GB" in result.stderr


def test_disk_check_passes_with_enough_space_and_skips_missing_folders(tmp_path):
    assert check_disk(tmp_path, need_gb=0).returncode == 0
    missing = check_disk(tmp_path / "not" / "yet", need_gb=0)
    assert missing.returncode == 0 and missing.stderr == ""
