"""
Load and crash behaviour: 1000 concurrent idle connections held with bounded memory (and the
next one refused with 421 4.3.2), and SIGKILL in the middle of deliveries leaving no partial
message in the Maildirs.
"""
import os
import re
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
    """8 sessions send ~1 MB messages one after another; lmtpgw is killed (SIGKILL) once at
    least 8 were acknowledged, so some are acknowledged and others are in flight at the kill.
    Every acknowledged message is in new/, whole; every file in new/ is whole (its ,S= size
    matches). (The earlier version killed after 0.3 s, often before anything was stored or
    acknowledged, and then its loops checked nothing.)"""
    def message(i, n):
        return (b"Subject: big\r\nX-Kill-Id: %d-%d\r\n\r\n" % (i, n)) + \
            (b"x" * 998 + b"\r\n") * 1000
    with Lmtpgw() as gw:
        acked = []                       # (sender, n) answered 250 before the kill
        in_flight = []                   # (sender, n) sent whole, no answer: cut by the kill
        lock = threading.Lock()
        killed = threading.Event()

        def sender(i):
            n = 0
            try:
                c = gw.session()
                c.settimeout(30 * SLOW)
                while not killed.is_set():
                    expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                    expect(c.cmd("RCPT TO:<u%d@example.test>" % i), 250, "2.1.5")
                    expect(c.cmd("DATA"), 354)
                    c.send(message(i, n) + b".\r\n")
                    sent = (i, n)
                    try:
                        code = c.reply().code
                    except Exception:
                        with lock:
                            in_flight.append(sent)
                        raise
                    if code == 250:
                        with lock:
                            acked.append(sent)
                    n += 1
            except Exception:            # the connection drops when the server dies
                pass

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.time() + 30 * SLOW
        while len(acked) < 8 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(gw.proc.pid, signal.SIGKILL)
        killed.set()
        for t in threads:
            t.join(60)
        gw.proc.wait(10)
        gw.returncode = -9
        assert len(acked) >= 8, "only %d acknowledged before the kill" % len(acked)
        assert in_flight, "nothing was in flight at the kill: the test showed nothing"
        # Whatever reached new/ is complete; whatever was acknowledged is there.
        root = os.path.join(gw.maildir_root, "example.test")
        found = set()
        for i in range(8):
            new = os.path.join(root, "u%d" % i, "new")
            for name in os.listdir(new) if os.path.isdir(new) else []:
                data = open(os.path.join(new, name), "rb").read()
                assert name.endswith(",S=%d" % len(data)), name
                m = re.search(rb"X-Kill-Id: (\d+)-(\d+)", data)
                assert m, "no X-Kill-Id in %s" % name
                ident = (int(m.group(1)), int(m.group(2)))
                assert data.endswith(message(*ident)), \
                    "partial message in new/: %s (%d bytes)" % (name, len(data))
                found.add(ident)
        missing = sorted(set(acked) - found)
        assert not missing, "acknowledged but not in new/: %s" % missing
        print("after SIGKILL: %d acknowledged, %d in flight, %d whole files in new/"
              % (len(acked), len(in_flight), len(found)))
        # Let the harness's exit check pass: the daemon is gone on purpose.
        gw.proc = None
