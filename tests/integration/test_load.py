"""
Load and crash behaviour: 1000 concurrent idle connections held with bounded memory (and the
next one refused with 421 4.3.2), and SIGKILL in the middle of deliveries leaving no partial
message in the Maildirs.
"""
import os
import resource
import signal
import socket
import threading
import time

from harness import Lmtpgw, expect, SLOW, MEMORY_FIGURES_MEAN_SOMETHING, Skip


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_thousand_idle_connections_bounded_memory():
    if not MEMORY_FIGURES_MEAN_SOMETHING:
        raise Skip("memory figures mean nothing under valgrind or ASan")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2200:
        raise Skip("file descriptor limit %d too low for 1000 connections" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2200), hard))
    # All from 127.0.0.1: trusted, or max_connections_per_client would stop them at 100.
    with Lmtpgw(config={"max_connections": 1000, "trusted_networks": ["127.0.0.1"]}) as gw:
        pid = gw.proc.pid
        base = rss_kib(pid)
        socks = []
        try:
            for i in range(1000):
                s = socket.create_connection((gw.host, gw.port), timeout=10 * SLOW)
                socks.append(s)
            # Every one greeted: the server really holds them.
            for s in socks:
                s.settimeout(10 * SLOW)
                assert s.recv(100).startswith(b"220 "), "no greeting"
            # And they work: a command on the last one.
            socks[-1].sendall(b"LHLO t.test\r\n")
            assert b"250 SMTPUTF8" in socks[-1].recv(1000)
            full = rss_kib(pid)
            per_conn = (full - base) * 1024 / 1000
            print("RSS: %d KiB idle, %d KiB with 1000 connections: %.0f bytes per connection"
                  % (base, full, per_conn))
            assert per_conn < 32 * 1024, "%.0f bytes per idle connection" % per_conn
            # The 1001st is refused with a clear reply.
            extra = socket.create_connection((gw.host, gw.port), timeout=10 * SLOW)
            extra.settimeout(10 * SLOW)
            reply = extra.recv(200)
            extra.close()
            assert reply.startswith(b"421 4.3.2"), reply
        finally:
            for s in socks:
                s.close()


def test_sigkill_mid_delivery_leaves_no_partial_message():
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 4000  # ~4 MB
    with Lmtpgw() as gw:
        results = {}

        def sender(i):
            try:
                c = gw.session()
                c.settimeout(30 * SLOW)
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                expect(c.cmd("RCPT TO:<u%d@example.test>" % i), 250, "2.1.5")
                expect(c.cmd("DATA"), 354)
                c.send(big + b".\r\n")
                results[i] = c.reply().code
            except Exception as e:  # the connection drops when the server dies
                results[i] = repr(e)

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3 * SLOW)
        os.kill(gw.proc.pid, signal.SIGKILL)
        for t in threads:
            t.join(60)
        gw.proc.wait(10)
        gw.returncode = -9
        # Whatever reached new/ is complete; whatever was acknowledged is there.
        root = os.path.join(gw.maildir_root, "example.test")
        for i in range(8):
            new = os.path.join(root, "u%d" % i, "new")
            files = os.listdir(new) if os.path.isdir(new) else []
            if results.get(i) == 250:
                assert len(files) == 1, (i, files)
            for name in files:
                data = open(os.path.join(new, name), "rb").read()
                assert data.endswith(big), "partial message in new/: %s (%d bytes)" % (name, len(data))
                assert name.endswith(",S=%d" % len(data)), name
        print("results after SIGKILL:", results)
        # Let the harness's exit check pass: the daemon is gone on purpose.
        gw.proc = None
