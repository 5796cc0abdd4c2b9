"""The imap backend when the real Dovecot (tests/integration/dovecot.py) misbehaves between and
during deliveries (docs/reliability.md, "The second attack", case 8): pooled connections the server killed or closed are
replaced without failing a delivery, and a stalled server costs a delivery one timeout, not
one per step.
"""
import os
import signal
import threading
import time

from harness import expect

from test_imap import DOMAIN, dovecot, gateway, imap_backend, message, transaction

TIMEOUT_S = 3


def _wait_gone(dc, pids, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline and any(p in dc.session_pids("imap") for p in pids):
        time.sleep(0.02)


def _stop_all(dc, sig):
    """Signal every process of this Dovecot instance (master, login, auth, imap sessions)."""
    for pid in dc.processes():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_imap_pool_replaces_connection_of_killed_session():
    """The imap process serving a pooled connection is killed (SIGKILL: no BYE): the next
    delivery must not fail on the dead connection but go over a fresh one."""
    with dovecot() as dc:
        with gateway(imap_backend(dc, timeout="%ds" % TIMEOUT_S)) as gw:
            c = gw.session()
            expect(transaction(c, ["alice@" + DOMAIN], message("before"))[0], 250, "2.0.0")
            time.sleep(0.2)
            pids = dc.session_pids("imap", "alice")
            assert len(pids) == 1, "expected one imap process for alice: %s" % pids
            os.kill(pids[0], signal.SIGKILL)
            _wait_gone(dc, pids)
            t0 = time.monotonic()
            r = transaction(c, ["alice@" + DOMAIN], message("after"))
            expect(r[0], 250, "2.0.0")
            assert time.monotonic() - t0 < TIMEOUT_S, "the delivery waited out a timeout"
        assert dc.count("alice") == 2


def test_imap_pool_survives_dovecot_restart():
    """Dovecot is restarted between two deliveries (every pooled connection dies with it): the
    second delivery gets 250 over a new connection."""
    with dovecot() as dc:
        with gateway(imap_backend(dc, timeout="%ds" % TIMEOUT_S)) as gw:
            c = gw.session()
            expect(transaction(c, ["alice@" + DOMAIN], message("before"))[0], 250, "2.0.0")
            port = dc.imap_port
            dc.stop(remove=False)
            _restart_same_ports(dc, port)
            r = transaction(c, ["alice@" + DOMAIN], message("after"))
            expect(r[0], 250, "2.0.0")
        assert dc.count("alice") == 2


def _restart_same_ports(dc, imap_port):
    """Start the stopped Dovecot again on its old ports (the gateway's url names them)."""
    dc._write_conf()
    dc._spawn()
    assert dc.imap_port == imap_port


def _concurrent(gw, n, tag):
    """n deliveries to alice at once, each on its own LMTP session: [(reply, seconds)]."""
    out = [None] * n

    def one(i):
        c = gw.session()
        c.settimeout(60)
        t0 = time.monotonic()
        r = transaction(c, ["alice@" + DOMAIN], message("%s-%d" % (tag, i)))[0]
        out[i] = (r, time.monotonic() - t0)
        c.cmd("QUIT")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o is not None for o in out), out
    return out


def test_imap_stalled_server_one_timeout_then_recovers():
    """Every Dovecot process is stopped (SIGSTOP) while lmtpgw holds pooled connections idle
    long enough to be checked with NOOP. Three deliveries arrive during the stall: each answers
    451 after about one timeout -- not NOOP's timeout plus the reconnect's, and not one timeout
    more for each delivery queued behind another for the same folder (before the fix: 6 s
    alone, 12 s for the third, with timeout = 3 s). After SIGCONT deliveries get 250 again; a
    second stall met by the APPEND on a just-used connection also costs one timeout (6 s
    before the fix)."""
    with dovecot() as dc:
        with gateway(imap_backend(dc, timeout="%ds" % TIMEOUT_S)) as gw:
            for r, _ in _concurrent(gw, 3, "before"):
                expect(r, 250, "2.0.0")
            time.sleep(5.5)  # idle long enough for the pool to check a connection first
            _stop_all(dc, signal.SIGSTOP)
            try:
                stalled = _concurrent(gw, 3, "stalled")
            finally:
                _stop_all(dc, signal.SIGCONT)
            for r, took in stalled:
                expect(r, 451)
                assert took < TIMEOUT_S + 1.0, \
                    "a stalled delivery took %.1f s for timeout = %d s: %s" % (
                        took, TIMEOUT_S, [(str(r), round(t, 1)) for r, t in stalled])
            for r, _ in _concurrent(gw, 3, "after"):
                expect(r, 250, "2.0.0")
            # stalled again at once: the pooled connections were just used (no NOOP check),
            # the APPEND itself meets the stall; still one timeout
            _stop_all(dc, signal.SIGSTOP)
            try:
                again = _concurrent(gw, 1, "again")
            finally:
                _stop_all(dc, signal.SIGCONT)
            expect(again[0][0], 451)
            assert again[0][1] < TIMEOUT_S + 1.0, \
                "a stalled APPEND took %.1f s for timeout = %d s" % (again[0][1], TIMEOUT_S)
        subjects = b"".join(m.raw for m in dc.messages("alice"))
        for i in range(3):
            assert b"Subject: after-%d" % i in subjects, "after-%d not stored" % i
