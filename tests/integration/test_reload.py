"""
SIGHUP keeps what runs: a backend whose settings (and the files they name) did not change keeps
its driver state, its pooled IMAP connections, its worker threads and its circuit breaker across
a reload; a changed backend gets a fresh runtime (docs/architecture.md, "Settings and runtime").
Real Dovecot for the login counts; a refused port for the breaker.
"""
import os
import signal

from harness import expect

from test_imap import DOMAIN, dovecot, dovecot_log, gateway, imap_backend, logins, message, transaction
from test_reliability import breaker_gateway, expect_refused_at_rcpt, trip_breaker


def reload(gw):
    n = len(gw.grep(r"event=reloaded"))
    gw.signal(signal.SIGHUP)
    gw.wait_log(r"event=reloaded", count=n + 1)
    return gw.grep(r"event=reloaded")[-1]


def deliver(gw, subject):
    with gw.session() as c:
        for r in transaction(c, ["alice@" + DOMAIN], message(subject)):
            expect(r, 250, "2.0.0")


def test_reload_unchanged_keeps_pooled_imap_connection():
    with dovecot() as dc:
        gw = gateway(imap_backend(dc))
        with gw:
            deliver(gw, "before")
            assert len(logins(dovecot_log(dc), "alice")) == 1, dc.log()
            line = reload(gw)
            deliver(gw, "after")
            found = logins(dovecot_log(dc), "alice")
            assert len(found) == 1, "a reload with an unchanged file logged in again: %s" % found
            assert "kept=2" in line and "opened=0" in line, line
        assert dc.count("alice", "INBOX") == 2


def test_reload_changed_backend_gets_fresh_runtime():
    with dovecot() as dc:
        gw = gateway(imap_backend(dc))
        with gw:
            deliver(gw, "before")
            assert len(logins(dovecot_log(dc), "alice")) == 1
            gw.backends = imap_backend(dc, timeout="20s")
            gw.write_config()
            line = reload(gw)
            deliver(gw, "after")
            assert len(logins(dovecot_log(dc), "alice")) == 2, dc.log()
            assert "kept=1" in line and "opened=1" in line, line  # local kept, inbox new


def test_reload_rotated_secret_file_reopens_backend():
    with dovecot() as dc:
        gw = gateway(imap_backend(dc))
        with gw:
            deliver(gw, "before")
            pw = os.path.join(dc.tmpdir, "master.pw")
            tmp = pw + ".new"
            with open(tmp, "w") as f:
                f.write(dc.master[1] + "\n")
            os.chmod(tmp, 0o600)
            os.rename(tmp, pw)  # same words, new file: as a rotation does it
            line = reload(gw)
            deliver(gw, "after")
            assert len(logins(dovecot_log(dc), "alice")) == 2, dc.log()
            assert "opened=1" in line, line


def test_reload_keeps_open_breaker_open():
    gw = breaker_gateway()
    with gw:
        with gw.session() as c:
            trip_breaker(c)
        gw.wait_log(r"event=backend_down backend=down")
        reload(gw)
        with gw.session() as c:
            expect_refused_at_rcpt(c)
        # A changed backend starts with a closed breaker.
        gw.backends = gw.backends.replace('breaker_cooloff = "60s"', 'breaker_cooloff = "59s"')
        gw.write_config()
        reload(gw)
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<down@example.test>"), 250, "2.1.5")
