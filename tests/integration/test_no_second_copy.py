"""A retry never stores a second copy (issue 16, part 2).

The MTA retries a recipient when one of its targets failed (451) or when lmtpgw's reply was
lost (the client dropped the connection after the final dot). Every target that had already
stored the message must not store it again: Maildir and IMAP through the memory of stored
copies (dedupe_db, src/dedupe.c), the webhook through ids that depend only on the content and
the recipient (a receiver drops what it has seen).

Real servers: Postfix 3.7 (postfix.py) as the MTA that retries, Dovecot (dovecot.py) as the
IMAP store, webhook_receiver.py as the HTTP receiver, Maildirs on disk.
"""
import json
import os
import re
import socket
import time
import urllib.request

from harness import (Client, Lmtpgw, conf_value, dot_stuff, expect, free_port, require_dovecot,
                     require_postfix)

from dovecot import DovecotServer
from postfix import PostfixServer
from webhook_receiver import Receiver

DOMAIN = "example.test"
SENDER = "sender@remote.test"
# Long timers: a deferred message waits in Postfix's deferred queue until the test flushes it.
NO_RETRY = {"queue_run_delay": "300s", "minimal_backoff_time": "300s",
            "maximal_backoff_time": "600s"}


def message(subject):
    return (b"From: <%s>\r\nTo: <alice@%s>\r\nSubject: %s\r\n"
            b"Date: Thu, 03 Dec 2026 07:00:00 +0000\r\nMessage-ID: <%s@client.test>\r\n\r\n"
            b"hello\r\n" % (SENDER.encode(), DOMAIN.encode(), subject.encode(),
                            re.sub(r"\W", "-", subject).encode()))


def master_pw(dc):
    path = os.path.join(dc.tmpdir, "master.pw")
    with open(path, "w") as f:
        f.write(dc.master[1] + "\n")
    os.chmod(path, 0o600)
    return path


def imap_block(dc, name="inbox", **opts):
    s = {"driver": "imap", "url": "imap://127.0.0.1:%d" % dc.imap_port, "ca_file": dc.ca_file,
         "login": dc.master[0], "password_file": master_pw(dc), "timeout": 10}
    s.update(opts)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s.items()))


def hook_block(rcv, name="hook", **opts):
    s = {"driver": "webhook", "url": rcv.url, "allow_http": True, "format": "json",
         "timeout": 10}
    s.update(opts)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s.items()))


class FailFirst:
    """Receiver rule: 503 to the first request, 200 to every later one."""

    def __init__(self):
        self.calls = 0

    def __call__(self, req):
        self.calls += 1
        return {"status": 503, "text": "try later"} if self.calls == 1 else {"status": 200}


def gateway(dc, rcv, routes=None, db=True, **kw):
    """lmtpgw with Maildir (local) + Dovecot (inbox) + webhook (hook) for every recipient."""
    gw = Lmtpgw(backends=imap_block(dc) + " " + hook_block(rcv),
                routes=routes or [("*@" + DOMAIN, ["local", "inbox", "hook"])], **kw)
    if db:
        gw.config["dedupe_db"] = os.path.join(gw.dir, "dedupe.sqlite")
        gw.write_config()
    return gw


def maildir_count(gw, user):
    root = os.path.join(gw.maildir_root, DOMAIN, user)
    return sum(len(os.listdir(os.path.join(root, sub))) for sub in ("new", "cur")
               if os.path.isdir(os.path.join(root, sub)))


def accepted_ids(rcv):
    """webhook-ids of the requests the receiver answered 2xx (its events)."""
    return [r.headers.get("webhook-id") for r, ok in zip(rcv.requests, answered_ok(rcv)) if ok]


def answered_ok(rcv):
    # FailFirst answers 503 to the first request only
    return [i > 0 for i in range(len(rcv.requests))]


def send_lmtp(gw, rcpts, content, read_replies=True, sender=SENDER):
    """One LMTP transaction on a fresh connection; the post-DATA replies, or None when the
    client hangs up right after the final dot without reading them (a lost reply)."""
    c = Client.connect_tcp("127.0.0.1", gw.port)
    c.read_greeting()
    c.lhlo()
    expect(c.cmd("MAIL FROM:<%s>" % sender), 250)
    for r in rcpts:
        expect(c.cmd("RCPT TO:<%s>" % r), 250)
    expect(c.cmd("DATA"), 354)
    c.send(dot_stuff(content) + b".\r\n")
    if not read_replies:
        c.close()
        return None
    replies = c.replies(len(rcpts))
    c.cmd("QUIT")
    c.close()
    return replies


def metric(port, name, backend):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^%s\{backend="%s"\} (\d+)$' % (name, backend), text, re.M)
    return int(m.group(1)) if m else None


# --- tests -----------------------------------------------------------------------------------

def test_postfix_retry_after_webhook_503_stores_one_copy_everywhere():
    """alice -> maildir + Dovecot + a webhook that answers 503 the first time. Postfix defers
    alice (451), the flush retries: Maildir and Dovecot hold one copy each (the retry is
    answered from the memory: duplicate=suppressed, the metric counts it), the receiver got
    the same webhook-id twice and accepted one event."""
    require_postfix()
    require_dovecot()
    rule = FailFirst()
    mport = free_port()
    with DovecotServer() as dc, Receiver(rule=rule) as rcv:
        gw = gateway(dc, rcv, config={"metrics_listen": "127.0.0.1:%d" % mport})
        with gw, PostfixServer({DOMAIN: "lmtp:inet:127.0.0.1:%d" % gw.port},
                               main=NO_RETRY) as pf:
            rcpt = "alice@" + DOMAIN
            assert pf.send(SENDER, [rcpt], message("retry-503")) == {}
            pf.wait_status(rcpt, "deferred")
            assert "451 4.3.0" in pf.delivery_lines(rcpt)[0], pf.delivery_lines(rcpt)
            assert maildir_count(gw, "alice") == 1
            assert dc.count("alice") == 1
            assert len(rcv.requests) == 1
            pf.flush()
            pf.wait_status(rcpt, "sent", timeout=30)
            pf.wait_queue_empty()
            assert maildir_count(gw, "alice") == 1, gw.log()[-3000:]
            assert dc.count("alice") == 1, gw.log()[-3000:]
            assert len(rcv.requests) == 2
            ids = [r.headers.get("webhook-id") for r in rcv.requests]
            assert ids[0] == ids[1], ids
            assert len(accepted_ids(rcv)) == 1
            line = gw.grep(r"event=delivery .* rcpt=<%s> result=ok " % re.escape(rcpt))
            assert len(line) == 1, gw.log()[-3000:]
            assert line[0].count("duplicate=suppressed") == 2, line[0]
            assert re.search(r"local:250:2\.0\.0:duplicate=suppressed original=\S+/new/", line[0]), line[0]
            assert re.search(r"inbox:250:2\.0\.0:duplicate=suppressed original=user=alice folder=INBOX uid=", line[0]), line[0]
            assert metric(mport, "lmtpgw_duplicates_suppressed_total", "local") == 1
            assert metric(mport, "lmtpgw_duplicates_suppressed_total", "inbox") == 1
            assert metric(mport, "lmtpgw_duplicates_suppressed_total", "hook") == 0


def test_lost_reply_after_final_dot_then_resend_stores_one_copy():
    """The client hangs up right after the final dot, before reading the reply (lmtpgw stores
    the message anyway), then sends the same message again: 250, and Maildir and Dovecot
    still hold one copy each."""
    require_dovecot()
    with DovecotServer() as dc, Receiver() as rcv:
        gw = gateway(dc, rcv)
        with gw:
            content = message("lost-reply")
            rcpt = "bob@" + DOMAIN
            assert send_lmtp(gw, [rcpt], content, read_replies=False) is None
            gw.wait_log(r"event=delivery .* rcpt=<%s> result=ok " % re.escape(rcpt))
            assert maildir_count(gw, "bob") == 1 and dc.count("bob") == 1
            replies = send_lmtp(gw, [rcpt], content)
            expect(replies[0], 250, "2.0.0")
            assert maildir_count(gw, "bob") == 1, gw.log()[-3000:]
            assert dc.count("bob") == 1, gw.log()[-3000:]
            lines = gw.grep(r"event=delivery .* rcpt=<%s> result=ok " % re.escape(rcpt))
            assert len(lines) == 2 and lines[1].count("duplicate=suppressed") == 2, lines
            # the webhook: the same id both times (the receiver's job to drop the second)
            ids = [r.headers.get("webhook-id") for r in rcv.requests]
            assert len(ids) == 2 and ids[0] == ids[1], ids


def test_restart_between_attempts_still_one_copy():
    """The memory is a file: a restart of lmtpgw between the first attempt (deferred by the
    webhook's 503) and the retry does not forget the copies already stored."""
    require_dovecot()
    rule = FailFirst()
    with DovecotServer() as dc, Receiver(rule=rule) as rcv:
        gw = gateway(dc, rcv)
        content = message("restart")
        rcpt = "carol@" + DOMAIN
        with gw:
            expect(send_lmtp(gw, [rcpt], content)[0], 451)
            assert maildir_count(gw, "carol") == 1 and dc.count("carol") == 1
            gw.stop()
            gw.start()
            expect(send_lmtp(gw, [rcpt], content)[0], 250, "2.0.0")
            assert maildir_count(gw, "carol") == 1, gw.log()[-3000:]
            assert dc.count("carol") == 1, gw.log()[-3000:]
            assert len(rcv.requests) == 2


def test_other_content_or_recipient_is_stored():
    """The memory is keyed by content and recipient: another message to the same mailbox, and
    the same message to another recipient, are stored as usual."""
    require_dovecot()
    with DovecotServer() as dc, Receiver() as rcv:
        gw = gateway(dc, rcv)
        with gw:
            expect(send_lmtp(gw, ["alice@" + DOMAIN], message("one"))[0], 250)
            expect(send_lmtp(gw, ["alice@" + DOMAIN], message("two"))[0], 250)
            expect(send_lmtp(gw, ["bob@" + DOMAIN], message("one"))[0], 250)
            assert maildir_count(gw, "alice") == 2 and dc.count("alice") == 2
            assert maildir_count(gw, "bob") == 1 and dc.count("bob") == 1
            assert "duplicate=suppressed" not in gw.log()


def test_memory_unavailable_delivers_and_warns():
    """dedupe_db in a directory that does not exist: every delivery goes ahead (a duplicate is
    better than a loss) and a warning says the memory is unavailable."""
    gw = Lmtpgw(config={})
    gw.config["dedupe_db"] = os.path.join(gw.dir, "missing", "dedupe.sqlite")
    gw.write_config()
    with gw:
        content = message("no-memory")
        expect(send_lmtp(gw, ["dave@" + DOMAIN], content)[0], 250, "2.0.0")
        expect(send_lmtp(gw, ["dave@" + DOMAIN], content)[0], 250, "2.0.0")
        gw.wait_log(r"event=dedupe_unavailable .*action=delivering_without_memory")
        assert maildir_count(gw, "dave") == 2   # without the memory: stored twice, never lost


def test_webhook_event_id_per_recipient_is_stable_across_a_partial_retry():
    """One request for alice and bob (mode message): the receiver takes bob and defers alice
    (JSON results). The retry carries alice alone, so its webhook-id differs from the first
    request's, but alice's own event id in the body (event_ids) is the same in both, and it
    is the webhook-id of the request that carries only her."""
    calls = []

    def rule(req):
        calls.append(req)
        if len(calls) == 1:
            return {"status": 200, "json": {"results": [
                {"rcpt": "alice@" + DOMAIN, "code": 451, "status": "4.3.0", "text": "later"},
                {"rcpt": "bob@" + DOMAIN, "code": 250, "status": "2.0.0", "text": "ok"}]}}
        return {"status": 200}

    with Receiver(rule=rule) as rcv:
        gw = Lmtpgw(backends=hook_block(rcv), routes=[("*@" + DOMAIN, ["hook"])])
        with gw:
            content = message("partial")
            r = send_lmtp(gw, ["alice@" + DOMAIN, "bob@" + DOMAIN], content)
            expect(r[0], 451)
            expect(r[1], 250)
            expect(send_lmtp(gw, ["alice@" + DOMAIN], content)[0], 250)
        first, second = rcv.requests
        assert first.headers["webhook-id"] != second.headers["webhook-id"]
        ids1 = first.json()["envelope"]["event_ids"]
        ids2 = second.json()["envelope"]["event_ids"]
        assert set(ids1) == {"alice@" + DOMAIN, "bob@" + DOMAIN}, ids1
        assert set(ids2) == {"alice@" + DOMAIN}, ids2
        assert ids1["alice@" + DOMAIN] == ids2["alice@" + DOMAIN]
        assert ids1["bob@" + DOMAIN] != ids1["alice@" + DOMAIN]
        assert second.headers["webhook-id"] == ids2["alice@" + DOMAIN]
        assert re.fullmatch(r"msg_[0-9a-f]{64}", ids1["bob@" + DOMAIN])


def test_imap_search_always_no_second_copy_through_two_instances():
    """Two instances that share no memory (as on two hosts): with dedupe = true and
    dedupe_search = "always", the second instance searches the folder for the copy's
    X-Lmtpgw-Id before appending, finds the first instance's copy and answers 250 without a
    second APPEND."""
    require_dovecot()
    with DovecotServer() as dc:
        block = imap_block(dc, dedupe=True, dedupe_search="always")
        first = Lmtpgw(backends=block, routes=[("*@" + DOMAIN, ["inbox"])])
        second = Lmtpgw(backends=block, routes=[("*@" + DOMAIN, ["inbox"])])
        content = message("two-hosts")
        rcpt = "alice@" + DOMAIN
        with first, second:
            expect(send_lmtp(first, [rcpt], content)[0], 250, "2.0.0")
            assert dc.count("alice") == 1
            r = send_lmtp(second, [rcpt], content)[0]
            expect(r, 250, "2.0.0")
            assert "already stored" in str(r), r
            assert dc.count("alice") == 1, second.log()[-3000:]
            assert second.grep(r"event=delivery .* targets=\"inbox:250:2\.0\.0:user=alice "
                               r"folder=INBOX uid=\d+ dedupe=found")
            # another message is searched for, not found, and appended
            expect(send_lmtp(second, [rcpt], message("two-hosts-2"))[0], 250, "2.0.0")
            assert dc.count("alice") == 2


def test_memory_writable_by_others_is_not_used():
    """Whoever can write the memory can make lmtpgw answer 250 for mail it never stored: a
    dedupe_db file writable by group or others is refused (warning, mail delivered as without
    it), even when it holds the row that would suppress the copy."""
    gw = Lmtpgw()
    db = os.path.join(gw.dir, "dedupe.sqlite")
    gw.config["dedupe_db"] = db
    gw.write_config()
    with gw:
        content = message("planted")
        expect(send_lmtp(gw, ["erin@" + DOMAIN], content)[0], 250, "2.0.0")
        assert maildir_count(gw, "erin") == 1
        os.chmod(db, 0o666)
        gw.stop()
        gw.start()
        expect(send_lmtp(gw, ["erin@" + DOMAIN], content)[0], 250, "2.0.0")
        gw.wait_log(r"event=dedupe_unavailable .*not a regular file of lmtpgw's or writable by group")
        assert maildir_count(gw, "erin") == 2
        assert "duplicate=suppressed" not in gw.log()


def test_memory_in_a_shared_directory_or_behind_a_link_is_not_used():
    """The same rule for what surrounds the file: a directory others may write (they could swap
    the file or plant its -wal), a -wal others may write, or a symbolic link in place of the
    file: refused (warning, mail delivered as without the memory)."""
    gw = Lmtpgw()
    shared = os.path.join(gw.dir, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    gw.config["dedupe_db"] = os.path.join(shared, "dedupe.sqlite")
    gw.write_config()
    with gw:
        content = message("shared dir")
        for _ in range(2):
            expect(send_lmtp(gw, ["fred@" + DOMAIN], content)[0], 250, "2.0.0")
        gw.wait_log(r"event=dedupe_unavailable .*directory not lmtpgw's \(or root's\) or writable")
        assert maildir_count(gw, "fred") == 2

    gw = Lmtpgw()
    real = os.path.join(gw.dir, "real.sqlite")
    link = os.path.join(gw.dir, "dedupe.sqlite")
    open(real, "w").close()
    os.chmod(real, 0o600)
    os.symlink(real, link)
    gw.config["dedupe_db"] = link
    gw.write_config()
    with gw:
        content = message("link")
        for _ in range(2):
            expect(send_lmtp(gw, ["gina@" + DOMAIN], content)[0], 250, "2.0.0")
        gw.wait_log(r"event=dedupe_unavailable .*step=open .*Too many levels of symbolic links")
        assert maildir_count(gw, "gina") == 2

    gw = Lmtpgw()
    db = os.path.join(gw.dir, "dedupe.sqlite")
    gw.config["dedupe_db"] = db
    gw.write_config()
    with gw:
        content = message("wal")
        expect(send_lmtp(gw, ["hugo@" + DOMAIN], content)[0], 250, "2.0.0")
        gw.stop()
        wal = db + "-wal"
        if not os.path.exists(wal):
            open(wal, "w").close()
        os.chmod(wal, 0o666)
        gw.start()
        expect(send_lmtp(gw, ["hugo@" + DOMAIN], content)[0], 250, "2.0.0")
        gw.wait_log(r"event=dedupe_unavailable .*-wal or -shm not a regular file of lmtpgw's")
        assert maildir_count(gw, "hugo") == 2


def test_same_bytes_from_another_sender_are_stored():
    """A retry keeps its envelope sender; the same bytes under another sender are another
    submission (a script feeding a fixed template, a client that adds no trace header) and
    must be stored, not answered "already stored"."""
    gw = Lmtpgw(config={"dedupe_db": "dedupe.sqlite"})
    with gw:
        content = message("template")
        expect(send_lmtp(gw, ["ivan@" + DOMAIN], content)[0], 250, "2.0.0")
        expect(send_lmtp(gw, ["ivan@" + DOMAIN], content, sender="")[0], 250, "2.0.0")
        assert maildir_count(gw, "ivan") == 2
        assert "duplicate=suppressed" not in gw.log()
        expect(send_lmtp(gw, ["ivan@" + DOMAIN], content)[0], 250, "2.0.0")   # a retry
        assert maildir_count(gw, "ivan") == 2
        gw.wait_log(r"rcpt=<ivan@.*duplicate=suppressed")


def test_duplicates_from_memory_do_not_keep_a_down_backend_up():
    """A copy answered from the memory never reached the store, so it says nothing of the
    backend's health: while Dovecot is down, the MTA's retries of mail stored before must not
    reset the circuit breaker's count of consecutive failures (it would never open)."""
    require_dovecot()
    with DovecotServer() as dc:
        block = imap_block(dc, breaker_failures=2, breaker_cooloff="60s", timeout=2)
        gw = Lmtpgw(backends=block, routes=[("*@" + DOMAIN, ["inbox"])],
                    config={"dedupe_db": "dedupe.sqlite"})
        stored = message("stored before")
        rcpt = "alice@" + DOMAIN
        with gw:
            expect(send_lmtp(gw, [rcpt], stored)[0], 250, "2.0.0")
            dc.stop(remove=False)
            # new mail fails (4.4.1), a retry of the stored one is answered from the memory
            expect(send_lmtp(gw, [rcpt], message("new 1"))[0], 451, "4.4.1")
            r = send_lmtp(gw, [rcpt], stored)[0]
            expect(r, 250, "2.0.0")
            assert "already stored" in str(r), r
            expect(send_lmtp(gw, [rcpt], message("new 2"))[0], 451, "4.4.1")
            # two consecutive failures of the store: the breaker is open, RCPT says so
            c = Client.connect_tcp("127.0.0.1", gw.port)
            c.read_greeting()
            c.lhlo()
            expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            expect(c.cmd("RCPT TO:<%s>" % rcpt), 451, "4.4.1")
            c.close()
