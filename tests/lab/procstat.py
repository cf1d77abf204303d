"""What a process holds, from /proc: threads, open fds, resident memory.

Fault and soak tests print these before and after abuse and check that they
come back (or stay within a bound), never how fast anything ran.
"""

import os


class Usage:
    def __init__(self, threads, fds, rss_kib):
        self.threads, self.fds, self.rss_kib = threads, fds, rss_kib

    def __repr__(self):
        return f"threads={self.threads} fds={self.fds} rss={self.rss_kib} KiB"


def usage(pid):
    """Threads, fds and RSS of `pid` now."""
    threads = len(os.listdir(f"/proc/{pid}/task"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return Usage(threads, fds, rss)


def sanitized(pid):
    """Whether `pid` runs an ASan build (gcc links libasan dynamically, clang
    statically: either way the binary carries the runtime's entry point)."""
    with open(f"/proc/{pid}/exe", "rb") as f:
        return b"__asan_init" in f.read()


# ASan holds freed memory in a quarantine (256 MiB by default on 64-bit) before
# reuse, so an ASan build's RSS grows by up to that much without a leak; there
# LeakSanitizer's report at exit is the leak check.
ASAN_QUARANTINE_KIB = 256 * 1024


def rss_allowance_kib(pid, slack_kib):
    """How much `pid`'s RSS may grow: `slack_kib`, plus the quarantine under ASan."""
    return slack_kib + (ASAN_QUARANTINE_KIB if sanitized(pid) else 0)


def report(name, before, after, **more):
    """One line for the test's output (pytest -s shows it; soak prints it)."""
    extra = "".join(f" {k}={v}" for k, v in more.items())
    line = f"[figures] {name}: before {before}; after {after}{extra}"
    print(line, flush=True)
    return line


def settled(pid, baseline, slack_threads=4, slack_fds=4, timeout=60):
    """Waits (up to `timeout` s: idle pool threads leave after 30 s, later
    on a loaded machine) until
    `pid` holds no more threads and fds than `baseline` plus some slack;
    returns the last usage seen."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        now = usage(pid)
        if (now.threads <= baseline.threads + slack_threads
                and now.fds <= baseline.fds + slack_fds) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)
