"""crimuxd SIGKILLed with pods on all three handlers (runc, kata, docker),
exec sessions, log writers and an event stream open: the restarted crimuxd
lists every pod and container with its handler, operates each (exec, logs,
stop, remove), has lost no log line written while it was down (the docker
pods' log copy), and nothing leaked (pause containers, sandboxes, IPAM
addresses, network namespaces). The ownership rebuild time is printed; the
110-pod version is tests/soak/test_sigkill_110.py (`make soak`)."""

from conftest import stop_checked
from lab import mixed

PODS = 9  # three per handler


def test_sigkill_with_every_handler(lab, dockerd, crimuxd_binary, tmp_path, capsys):
    started = []
    try:
        figures = mixed.sigkill_scenario(lab, dockerd, crimuxd_binary, str(tmp_path),
                                         PODS, started)
    finally:
        stop_checked(started)
    with capsys.disabled():
        print(f"\nsigkill: {figures}")
