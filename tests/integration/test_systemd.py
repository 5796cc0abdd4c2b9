"""
Socket activation: lmtpgw serves on sockets passed by systemd (LISTEN_PID/LISTEN_FDS, fds from
3 on) and then binds none of its configured addresses.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from harness import Lmtpgw, Client, expect, binary, VALGRIND, SLOW

# Run in the child: put the passed socket at fd 3, name our own pid, then become lmtpgw (same
# pid, as systemd does it).
WRAPPER = r"""
import os, sys
fd = int(os.environ.pop("TEST_SOCKET_FD"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_systemd_socket_activation():
    gw = Lmtpgw()  # only for its config and maildir; started by hand below
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    env = dict(os.environ, TEST_SOCKET_FD=str(listener.fileno()))
    cmd = [sys.executable, "-c", WRAPPER, binary(), "-f", "-c", gw.conf_path]
    log = open(gw.log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, pass_fds=(listener.fileno(),), stdout=log,
                            stderr=subprocess.STDOUT)
    listener.close()  # lmtpgw holds its own copy now
    try:
        deadline = time.time() + 10 * SLOW
        while b"event=started" not in open(gw.log_path, "rb").read():
            assert proc.poll() is None, open(gw.log_path).read()
            assert time.time() < deadline, "lmtpgw did not start"
            time.sleep(0.05)
        text = open(gw.log_path).read()
        assert "systemd:fd3" in text, text
        # The configured default (127.0.0.1:2424) must not have been bound.
        assert "address=[127.0.0.1]:2424" not in text, text
        c = Client.connect_tcp("127.0.0.1", port)
        c.read_greeting()
        c.lhlo()
        expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: activated\r\n\r\nhello\r\n.\r\n")
        expect(c.reply(), 250, "2.0.0")
        expect(c.cmd("QUIT"), 221, "2.0.0")
        c.close()
        assert len(gw.messages("alice")) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10 * SLOW)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        log.close()
    assert rc == 0, "exit status %r: %s" % (rc, open(gw.log_path).read())
    shutil.rmtree(gw.dir, ignore_errors=True)


def test_sd_notify_ready_reloading_stopping():
    """Type=notify: READY=1 once serving, RELOADING=1/READY=1 around SIGHUP, STOPPING=1."""
    import tempfile
    d = tempfile.mkdtemp(prefix="lmtpgw-notify-")
    path = os.path.join(d, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10 * SLOW)
    old = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = path
    try:
        gw = Lmtpgw()
        with gw:
            assert sock.recv(200) == b"READY=1"
            gw.signal(signal.SIGHUP)
            assert sock.recv(200) == b"RELOADING=1"
            assert sock.recv(200) == b"READY=1"
        assert sock.recv(200) == b"STOPPING=1"
    finally:
        if old is None:
            del os.environ["NOTIFY_SOCKET"]
        else:
            os.environ["NOTIFY_SOCKET"] = old
        sock.close()
        shutil.rmtree(d, ignore_errors=True)
