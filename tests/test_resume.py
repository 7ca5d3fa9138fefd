"""A sweep killed with SIGKILL mid-job resumes: finished work is skipped, tables equal an
uninterrupted run's; a half-written file is never read as a result."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

SALBENCH = str(Path(sys.executable).with_name("salbench"))
ARGS = ["dataset.limit=96", "batch_size=4", "flush_every=8", "progress=false", "gallery_images=0",
        "method=[gradcam,random]"]


def sorted_scores(path):
    frame = pd.read_parquet(path)
    return frame.sort_values(["method", "metric", "score", "image_index"]).reset_index(drop=True)


@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_sigkill_mid_job_then_rerun_completes_and_equals_uninterrupted(tmp_path, synthetic_bundle):
    reference = tmp_path / "reference"
    subprocess.run([SALBENCH, *ARGS, f"hydra.run.dir={reference}"], check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen([SALBENCH, *ARGS, f"hydra.run.dir={killed}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists():  # wait for the first flushed chunk
        assert process.poll() is None, "the job finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "running" and not (killed / "scores.parquet").exists()

    result = subprocess.run([SALBENCH, *ARGS, f"hydra.run.dir={killed}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming job" in result.stdout
    info = json.loads((killed / "run.json").read_text())
    assert info["status"] == "completed" and 0 < info["resumed_from"] < 96 and info["attempts"] == 2
    assert not (killed / "checkpoint.pt").exists() and not (killed / "parts").exists()
    pd.testing.assert_frame_equal(sorted_scores(killed / "scores.parquet"), sorted_scores(reference / "scores.parquet"))

    again = subprocess.run([SALBENCH, *ARGS, f"hydra.run.dir={killed}"], capture_output=True, text=True, timeout=600)
    assert "already completed" in again.stdout  # a finished job is not redone


def test_changed_config_in_the_same_directory_starts_afresh(tmp_path, compose_config, synthetic_bundle):
    from salbench.harness.runner import job_id, run_job

    first = compose_config(["debug=fast", "method=[random]"])
    second = compose_config(["debug=fast", "method=[center]"])
    assert job_id(first) != job_id(second)
    assert job_id(first) == job_id(compose_config(["debug=fast", "method=[random]", "progress=true"]))
    run_job(first, tmp_path)
    scores = run_job(second, tmp_path)
    assert set(scores["method"]) == {"center"}


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path):
    from salbench.harness.store import atomic_path

    target = tmp_path / "scores.parquet"
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    except RuntimeError:
        pass
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_gives_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from salbench.harness.store import write_json

    write_json(tmp_path / "run.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o666 & ~umask
