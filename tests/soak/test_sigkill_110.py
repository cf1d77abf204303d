"""crimuxd SIGKILLed on a full node: 110 pods (the kubelet's default
maxPods) over runc, kata and docker. The same checks as
tests/integration/test_sigkill.py, at scale; prints the ownership rebuild
time (the target is 1 s; containerd allows itself 10 s per container)."""

import pytest

from lab import mixed

PODS = 110


@pytest.mark.soak
def test_sigkill_110_pods(lab, dockerd, crimuxd_binary, tmp_path, capsys):
    from crimux_integration_conftest import stop_checked
    started = []
    try:
        figures = mixed.sigkill_scenario(lab, dockerd, crimuxd_binary, str(tmp_path), PODS,
                                         started, parallel=4)
    finally:
        stop_checked(started)
    with capsys.disabled():
        print(f"\nsoak sigkill {PODS} pods: ownership rebuilt in {figures['rebuild_s']:.3f} s "
              f"({figures['rebuild_pods']} sandboxes, {figures['rebuild_containers']} "
              f"containers); serving {figures['restart_ready_s']:.3f} s after the start; "
              f"pods made in {figures['created_s']} s")
    assert figures["rebuild_pods"] >= PODS
