"""The install-time checks `make` runs before creating .venv, and the GPU check script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


GPU_CHECK = Path(__file__).parents[1] / "scripts" / "gpu_check.py"


def test_gpu_check_says_plainly_when_there_is_no_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run scripts/gpu_check.sh itself")
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no CUDA device" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_gpu_check_runs_every_part_at_toy_size_on_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--device", "cpu", "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result.returncode == 0 and all(part["ok"] for part in report["parts"].values()), report
    assert set(report["parts"]) == {"demo", "nccl", "throughput", "compile"}
    assert set(report["parts"]["throughput"]["rows"]) == {"clip", "rils", "mae", "milan"}
