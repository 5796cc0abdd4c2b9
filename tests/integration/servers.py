"""
servers - what the test-server modules (cyrus, dovecot, opensmtpd, postfix, s3server) share.

    _live = servers.Running()          # module level: the instances of this kind still running
    kill_all = _live.stop_all          # harness.kill_all() calls module.kill_all() by name
    _live.append(self) / _live.discard(self)   # in start() / stop()

    greeting = servers.wait_imap_greeting(proc, host, port, timeout, DovecotError, "dovecot",
                                          diagnostics)

    servers.all_pids(), servers.proc_stat(pid), servers.proc_cmdline(pid)   # /proc, for stop()
    servers.signal_pid(pid, sig)       # os.kill that ignores a process already gone

python3 stdlib only.
"""
import atexit
import os
import socket
import time


class Running(list):
    """The servers of one kind still running. stop_all() stops each (errors ignored): after a
    test timed out (harness.kill_all) and at interpreter exit, so no server outlives the run."""

    def __init__(self):
        super().__init__()
        atexit.register(self.stop_all)

    def discard(self, server):
        if server in self:
            self.remove(server)

    def stop_all(self):
        for s in list(self):
            try:
                s.stop()
            except Exception:
                pass


def wait_imap_greeting(proc, host, port, timeout, error, name, diagnostics, read_timeout=2.0,
                       interval=0.05):
    """Poll until the IMAP server proc listens on host:port and greets with "* OK"; return the
    greeting line. Raise error(...) with diagnostics() if proc exits first or timeout (s) passes.
    A connection refused or a greeting other than "* OK" (still starting) is retried."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if proc.poll() is not None:
            raise error("%s exited with status %s at start:\n%s" %
                        (name, proc.returncode, diagnostics()))
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(read_timeout)
                greeting = s.recv(1024)
            if greeting.startswith(b"* OK"):
                return greeting.decode("utf-8", "replace").strip()
            last = greeting
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise error("%s did not answer on %s:%d within %.0f s (last greeting %r):\n%s" % (
                name, host, port, timeout, last, diagnostics()))
        time.sleep(interval)


def all_pids():
    """Every process id on the machine (from /proc)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def signal_pid(pid, sig):
    """os.kill that ignores a process already gone (stop() races the process's own exit)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def proc_stat(pid):
    """(ppid, session id, start time) of pid from /proc, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[3]), int(fields[19])


def proc_cmdline(pid):
    """The NUL-separated command line of pid, or b"" (gone, or a kernel thread)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""
