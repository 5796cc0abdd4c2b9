"""The imap backend's group commit: concurrent deliveries into one folder of one account leave as
one MULTIAPPEND (RFC 3502, with LITERAL+), against a real Dovecot 2.3.

A relay between lmtpgw and Dovecot holds every server-to-client chunk for a moment (fault
injection: a slow server), so deliveries arriving while one APPEND is in flight queue up behind
it and form the next batch whatever the machine's speed. What Dovecot stored is checked over
IMAP; lmtpgw's log says which deliveries went in a batch ("batch=N" in the delivery's targets).
"""
import re
import threading

from harness import expect
from test_imap import (DOMAIN, CutProxy, dovecot, gateway, imap_backend, message, transaction)


def SlowServerProxy(port, delay):
    """A relay to Dovecot that holds each server-to-client chunk for `delay` seconds."""
    return CutProxy(port, delay=delay)


def slow_backend(dc, proxy, **opts):
    return imap_backend(dc, url="imap://127.0.0.1:%d" % proxy.port, **opts)


def parallel_transactions(gw, jobs):
    """Run (rcpts, content) jobs, each in its own LMTP session, all at once; their replies."""
    results = [None] * len(jobs)
    errors = []
    start = threading.Barrier(len(jobs))

    def run(i, rcpts, content):
        try:
            c = gw.session()
            start.wait(10)
            results[i] = transaction(c, rcpts, content)
            c.cmd("QUIT")
        except Exception as e:  # reported below, with the others
            errors.append("job %d: %r" % (i, e))

    threads = [threading.Thread(target=run, args=(i, r, m)) for i, (r, m) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def batch_sizes(log):
    return [int(n) for n in re.findall(r"batch=(\d+)", log)]


def stored_subjects(dc, user, folder="INBOX"):
    out = []
    for m in dc.messages(user, folder):
        found = re.search(rb"^Subject: (.*?)\r?$", m.raw, re.M)
        out.append(found.group(1).decode() if found else None)
    return sorted(out)


def test_imap_multiappend_groups_concurrent_deliveries():
    with dovecot() as dc:
        proxy = SlowServerProxy(dc.imap_port, 0.3)
        try:
            with gateway(slow_backend(dc, proxy)) as gw:
                subjects = ["batch%d" % i for i in range(6)]
                replies = parallel_transactions(
                    gw, [(["alice@" + DOMAIN], message(s, size=3000)) for s in subjects])
                uids = set()
                for r in replies:
                    expect(r[0], 250, "2.0.0")
                    uids.add(re.search(r"uid (\d+/\d+)", r[0].text).group(1))
                assert len(uids) == 6, "every message has its own UID: %s" % replies
                sizes = batch_sizes(gw.log())
                assert len(sizes) == 6 and sum(sizes) >= 6 and max(sizes) >= 2, (
                    "deliveries that queued behind a slow APPEND went as one MULTIAPPEND: "
                    "batch sizes %s" % sizes)
        finally:
            proxy.stop()
        # every message stored once, whole, and the UIDs in the replies are Dovecot's
        assert stored_subjects(dc, "alice") == sorted(subjects)
        for m in dc.messages("alice"):
            assert m.raw.count(b"0123456789abcdefghijklmnopqrstuvwxyz") >= 3000 // 74
        assert {str(m.uid) for m in dc.messages("alice")} == {u.split("/")[1] for u in uids}


def test_imap_multiappend_refused_batch_goes_again_one_by_one():
    """A MULTIAPPEND is all or none: one message over carol's quota makes Dovecot refuse the
    whole batch; each message then goes alone and gets its own answer."""
    with dovecot() as dc:
        proxy = SlowServerProxy(dc.imap_port, 0.3)
        try:
            with gateway(slow_backend(dc, proxy)) as gw:
                jobs = [(["carol@" + DOMAIN], message("small%d" % i)) for i in range(4)]
                jobs.insert(2, (["carol@" + DOMAIN], message("big", size=100 * 1024)))
                replies = parallel_transactions(gw, jobs)
                for i, r in enumerate(replies):
                    if i == 2:
                        expect(r[0], 452, "4.2.2")
                    else:
                        expect(r[0], 250, "2.0.0")
        finally:
            proxy.stop()
        assert stored_subjects(dc, "carol") == ["small%d" % i for i in range(4)]


def test_imap_multiappend_missing_folder_created_once_then_stored():
    """[TRYCREATE] on a batch: each message goes alone, the first creates the folder."""
    with dovecot() as dc:
        proxy = SlowServerProxy(dc.imap_port, 0.2)
        try:
            be = slow_backend(dc, proxy, folder_from_detail=True)
            with gateway(be) as gw:
                subjects = ["new%d" % i for i in range(5)]
                replies = parallel_transactions(
                    gw, [(["bob+projects@" + DOMAIN], message(s)) for s in subjects])
                for r in replies:
                    expect(r[0], 250, "2.0.0")
        finally:
            proxy.stop()
        assert stored_subjects(dc, "bob", "projects") == sorted(subjects)
        assert dc.count("bob", "INBOX") == 0


def test_imap_multiappend_one_turns_batching_off():
    with dovecot() as dc:
        proxy = SlowServerProxy(dc.imap_port, 0.2)
        try:
            with gateway(slow_backend(dc, proxy, multiappend=1)) as gw:
                replies = parallel_transactions(
                    gw, [(["alice@" + DOMAIN], message("one%d" % i)) for i in range(4)])
                for r in replies:
                    expect(r[0], 250, "2.0.0")
                assert batch_sizes(gw.log()) == [], "multiappend = 1: every message alone"
        finally:
            proxy.stop()
        assert dc.count("alice") == 4


def test_imap_literal_bytes_exact_and_bare_line_ends_made_crlf():
    """A CRLF-clean message goes up byte for byte (sent as it is, no conversion pass); one with
    a bare LF or a bare CR has them made CRLF, as IMAP requires and libetpan did before."""
    with dovecot() as dc:
        with gateway(imap_backend(dc)) as gw:
            clean = message("clean", body=b"line one\r\n\x80\xff 8-bit\r\n" + b"y" * 998 + b"\r\n")
            c = gw.session()
            expect(transaction(c, ["alice@" + DOMAIN], clean)[0], 250, "2.0.0")
            bare = message("bare", body=b"lf only\nthen cr only\rend\r\n")
            expect(transaction(c, ["bob@" + DOMAIN], bare)[0], 250, "2.0.0")
            c.cmd("QUIT")
        stored = dc.messages("alice")[0].raw
        assert stored.endswith(clean), stored[-200:]
        stored = dc.messages("bob")[0].raw
        assert stored.endswith(message("bare", body=b"lf only\r\nthen cr only\r\nend\r\n")), (
            stored[-120:])


def test_imap_multiappend_connection_lost_mid_batch_every_message_deferred():
    """The connection dies while a MULTIAPPEND is on the wire: the outcome of the whole batch is
    unknown, so every message of it gets 451 4.4.2 (the MTA retries); Dovecot keeps nothing of
    an unfinished command, and the retry stores each message once. One lost connection is one
    failure for the circuit breaker, however many messages it carried: with breaker_failures =
    2, counting each deferred message would refuse the retry at RCPT (451 4.4.1)."""
    with dovecot() as dc:
        proxy = CutProxy(dc.imaps_port, cut_after=600 * 1024, delay=0.3)
        try:
            be = imap_backend(dc, url="imaps://127.0.0.1:%d" % proxy.port, breaker_failures=2)
            with gateway(be) as gw:
                subjects = ["lost%d" % i for i in range(6)]
                jobs = [(["alice@" + DOMAIN], message(s, size=200 * 1024)) for s in subjects]
                replies = parallel_transactions(gw, jobs)
                deferred = [s for s, r in zip(subjects, replies) if r[0].code == 451]
                for r in replies:
                    if r[0].code != 250:
                        expect(r[0], 451, "4.4.2")
                assert proxy.cuts >= 1, "the relay never cut"
                assert len(deferred) >= 2, "a whole batch is in doubt: %s" % replies
                lost = re.findall(r"multiappend: libetpan error", gw.log())
                assert len(lost) >= 2, "the deferred messages were one batch: %s" % gw.log()[-2000:]
                stored = [s for s in subjects if s not in deferred]
                assert stored_subjects(dc, "alice") == sorted(stored), "a partial batch was kept"
                # the MTA's retry, now that the server is reachable again
                proxy.cut_after = None
                retry = parallel_transactions(
                    gw, [(["alice@" + DOMAIN], message(s, size=200 * 1024)) for s in deferred])
                for r in retry:
                    expect(r[0], 250, "2.0.0")
        finally:
            proxy.stop()
        assert stored_subjects(dc, "alice") == sorted(subjects)
