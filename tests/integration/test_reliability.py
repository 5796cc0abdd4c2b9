"""
Reliability: the delivery deadline (451 4.4.7 before the MTA gives up) and the per-backend
circuit breaker (451 4.4.1 at RCPT while a backend is down). A stalling IMAP server (a fake:
it accepts and never greets) injects the fault; maildir is the healthy backend beside it.
"""
import socket
import threading
import time

from harness import Lmtpgw, expect, cstr, free_port, SLOW


class StallServer:
    """Accepts TCP connections on loopback and never says a word (fault injection)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    def close(self):
        self.stop = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


def imap_backend(name, port, extra=""):
    # The password file must exist and be private even though no login happens.
    return ('%s: { driver = "imap"; url = %s; allow_plaintext = true; login = "master"; '
            'password_file = %%(pw)s; %s };' % (name, cstr("imap://127.0.0.1:%d" % port), extra))


def make_gateway(backend_text, config, routes):
    gw = Lmtpgw(config=config, routes=routes)
    pw = gw.dir + "/imap.pw"
    with open(pw, "w") as f:
        f.write("secret\n")
    import os
    os.chmod(pw, 0o600)
    gw.backends = backend_text % {"pw": cstr(pw)}
    gw.write_config()
    return gw


def send(c, rcpts, body=b"Subject: t\r\n\r\nhello\r\n"):
    expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
    accepted = []
    for r in rcpts:
        rep = c.cmd("RCPT TO:<%s>" % r)
        if rep.code == 250:
            accepted.append(r)
        else:
            return rep, []
    expect(c.cmd("DATA"), 354)
    c.send(body + b".\r\n")
    return None, [c.reply() for _ in accepted]


def test_delivery_deadline_answers_451_447_and_spares_healthy_backends():
    stall = StallServer()
    try:
        gw = make_gateway(imap_backend("slow", stall.port, 'timeout = "60s";'),
                          {"delivery_deadline": "2s"},
                          [("slow@example.test", ["slow"]), ("*@example.test", ["local"])])
        with gw:
            with gw.session() as c:
                c.settimeout(30 * SLOW)
                t0 = time.monotonic()
                _, replies = send(c, ["alice@example.test", "slow@example.test", "bob@example.test"])
                elapsed = time.monotonic() - t0
                expect(replies[0], 250, "2.0.0")
                expect(replies[1], 451, "4.4.7")
                expect(replies[2], 250, "2.0.0")
                assert elapsed < 10 * SLOW, "deadline of 2s took %.1fs" % elapsed
                # The session is usable afterwards.
                expect(c.cmd("NOOP"), 250, "2.0.0")
            stored = (gw.messages("alice"), gw.messages("bob"))
            assert len(stored[0]) == 1 and len(stored[1]) == 1, (stored, gw.log())
            assert gw.grep(r"event=delivery_deadline"), gw.log()
    finally:
        stall.close()


def breaker_gateway():
    """A gateway whose backend "down" (a refused port) opens its breaker after 2 failures, for
    60 s; down@example.test goes there, every other address to maildir "local"."""
    port = free_port()  # nothing listens there: connection refused
    return make_gateway(imap_backend("down", port, 'breaker_failures = 2; breaker_cooloff = "60s";'),
                        {}, [("down@example.test", ["down"]), ("*@example.test", ["local"])])


def trip_breaker(c):
    """Two failed deliveries to down@example.test in session c: breaker_gateway's breaker opens."""
    for _ in range(2):
        _, replies = send(c, ["down@example.test"])
        expect(replies[0], 451, "4.4.1")


def expect_refused_at_rcpt(c):
    """The open breaker refuses down@example.test at RCPT (451 4.4.1), without waiting for DATA;
    the transaction (MAIL FROM) stays open."""
    expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
    rep = c.cmd("RCPT TO:<down@example.test>")
    expect(rep, 451, "4.4.1")
    assert "temporarily unavailable" in str(rep), rep


def test_circuit_breaker_refuses_at_rcpt_after_failures():
    gw = breaker_gateway()
    with gw:
        with gw.session() as c:
            trip_breaker(c)
            # Now the breaker is open: refused at RCPT, without waiting for DATA.
            expect_refused_at_rcpt(c)
            # Other routes are unaffected in the same transaction.
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: t\r\n\r\nx\r\n.\r\n")
            expect(c.reply(), 250, "2.0.0")
        assert gw.grep(r"event=backend_down backend=down"), gw.log()


def test_breaker_off_when_zero():
    port = free_port()
    gw = make_gateway(imap_backend("down", port, "breaker_failures = 0;"), {},
                      [("down@example.test", ["down"])])
    with gw:
        with gw.session() as c:
            for _ in range(3):
                _, replies = send(c, ["down@example.test"])
                expect(replies[0], 451, "4.4.1")
        assert not gw.grep(r"event=backend_down"), gw.log()


def test_write_timeout_while_verifying_a_recipient_does_not_crash():
    """A client pipelines commands, never reads, and ends with a RCPT whose backend verifies it
    against a stalled IMAP server: the write timeout ends the transaction while the
    verification still runs, and its late answer must find no transaction to touch (it used
    to dereference the freed one and kill the daemon)."""
    stall = StallServer()
    try:
        gw = make_gateway(imap_backend("inbox", stall.port,
                                       'verify_recipients = true; timeout = "6s";'),
                          {"timeout_command": "1s"}, [("*@example.test", ["inbox"])])
        with gw:
            c = socket.create_connection(("127.0.0.1", gw.port))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sendall(b"LHLO x\r\nMAIL FROM:<a@b.test>\r\n")
            payload = b"NOOP\r\n" * 400000 + b"RCPT TO:<alice@example.test>\r\n"
            threading.Thread(target=lambda: _send_quietly(c, payload), daemon=True).start()
            deadline = time.time() + 10 * SLOW
            while time.time() < deadline and gw.proc.poll() is None:
                time.sleep(0.2)
            assert gw.proc.poll() is None, "lmtpgw died (status %s)" % gw.proc.returncode
            c.close()
            with gw.session() as c2:
                expect(c2.cmd("NOOP"), 250)
    finally:
        stall.close()


def _send_quietly(c, payload):
    try:
        c.sendall(payload)
    except OSError:
        pass  # closed by the write timeout: expected
