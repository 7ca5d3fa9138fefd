"""Option ``malloc``: glibc keeps freed blocks in the process (no page faults on the next forward
pass), a bad value is an error naming the choices, the choice is recorded and is not part of a
job's identity (it changes no number)."""
import json
import platform
import resource

import pytest
import torch
from torch import nn

from salbench.harness.allocator import MALLOC_CHOICES, set_malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_unknown_choice_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown malloc 'keep'; valid: retain, system"):
        set_malloc("keep")


def test_system_sets_nothing():
    assert set_malloc("system") == {"malloc": "system", "applied": False, "note": "the C library's own rules"}


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_retain_stops_the_page_faults_of_repeated_forward_passes():
    """A conv net whose activations are megabytes: under ``retain`` a warmed-up forward pass
    faults (almost) no page in; the blocks it frees stay in the process."""
    record = set_malloc("retain")
    assert record["applied"] is True, record
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.randn(16, 3, 96, 96)  # each activation 16 x 32 x 96 x 96 floats: 18.9 MB
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            net(x)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    pages = 5 * 2 * 16 * 32 * 96 * 96 * 4 // 4096  # what fresh pages for every activation would fault
    assert faults < pages / 10, f"{faults} page faults in 5 warmed-up passes (fresh pages every time: {pages})"


def test_the_choice_is_validated_recorded_and_not_part_of_the_identity(compose_config, tmp_path):
    from salbench.harness.runner import job_id, run_job

    base = ["dataset.num_images=2", "method=[saliency]", "metric=[pointing_game]", "batch_size=2", "forward_chunk=2",
            "gallery_images=0", "viewer_images=0", "progress=false"]
    with pytest.raises(ValueError, match="unknown malloc 'fast'; valid: retain, system"):
        run_job(compose_config([*base, "malloc=fast"]), tmp_path / "bad")
    assert job_id(compose_config([*base, "malloc=system"])) == job_id(compose_config(base))
    run_job(compose_config([*base, "malloc=system"]), tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["device"]["malloc"]
    assert recorded == {"malloc": "system", "applied": False, "note": "the C library's own rules"}
    set_malloc("retain")  # the process-wide default again for the tests that follow
    assert set(MALLOC_CHOICES) == {"retain", "system"}
