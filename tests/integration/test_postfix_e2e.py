"""End to end through a real Postfix 3.7: SMTP in (swaks / smtplib) -> Postfix queue -> lmtp:
-> lmtpgw -> Maildir / Dovecot IMAP.

Each test starts its own lmtpgw (tests/integration/harness.py) and its own private Postfix
instance (tests/integration/postfix.py: own config, queue and data directories, smtpd on a random
127.0.0.1 port, maillog_file) and checks, per recipient, what Postfix logged and queued and what
lmtpgw stored. The Postfix settings we recommend are read from contrib/postfix/master.cf (its
`-o lmtp_...` lines), and one test runs contrib/postfix/main.cf + master.cf as they are.
"""
import os
import re
import signal
import time

from harness import Lmtpgw, conf_value, require_dovecot, require_postfix, cstr, split_trace

from postfix import PostfixServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTRIB = os.path.join(ROOT, "contrib", "postfix")
DOMAIN = "example.test"
SENDER = "sender@" + DOMAIN        # routed to lmtpgw as well: bounces and DSNs land in its Maildir


def recommended():
    """{lmtp_*: value} from the `-o` lines of contrib/postfix/master.cf."""
    with open(os.path.join(CONTRIB, "master.cf")) as f:
        return dict(re.findall(r"^\s+-o\s+(lmtp_\w+)=(\S*)\s*$", f.read(), re.M))


def recommended_args():
    """The command arguments (not -o) of the lmtpgw service in contrib/postfix/master.cf."""
    with open(os.path.join(CONTRIB, "master.cf")) as f:
        m = re.search(r"^lmtpgw\s+unix(?:\s+\S+){5}\s+lmtp\b(.*\n(?:[ \t]+\S.*\n)*)", f.read(), re.M)
    assert m, "no lmtpgw service in contrib/postfix/master.cf"
    words = m.group(1).split()
    return " ".join(w for i, w in enumerate(words)
                    if w != "-o" and (i == 0 or words[i - 1] != "-o"))


def postfix(gw, main=None, recommended_settings=True, **kw):
    """A PostfixServer (not started) routing DOMAIN to gw over lmtp:inet:, or RealServerMissing."""
    require_postfix()
    settings = dict(recommended()) if recommended_settings else {}
    settings.update(main or {})
    if recommended_settings:
        kw.setdefault("lmtp_args", recommended_args())
    return PostfixServer({DOMAIN: "lmtp:inet:127.0.0.1:%d" % gw.port}, main=settings, **kw)


# Long timers: a deferred message stays in the deferred queue until the test flushes it.
NO_RETRY = {"queue_run_delay": "300s", "minimal_backoff_time": "300s",
            "maximal_backoff_time": "600s"}


def message(subject, body=b"hello\r\n", extra_headers=b""):
    """A complete message (Date, Message-ID, From, To present: Postfix adds nothing but Received)."""
    return (b"From: Sender <%s>\r\nTo: <list@%s>\r\nSubject: %s\r\n"
            b"Date: Wed, 25 Nov 2026 07:00:00 +0000\r\nMessage-ID: <%s@client.test>\r\n%s\r\n"
            % (SENDER.encode(), DOMAIN.encode(), subject.encode(),
               re.sub(r"\W", "-", subject).encode(), extra_headers)) + body


def deliveries(gw, rcpt, result="ok"):
    return gw.grep(r"event=delivery .* rcpt=<%s> result=%s " % (re.escape(rcpt), result))


def only(gw, user, root=None):
    """The one message of user (exactly one file in new/, none left in tmp/)."""
    msgs = gw.messages(user) if root is None else sorted(
        os.path.join(root, user, "new", n) for n in os.listdir(os.path.join(root, user, "new")))
    assert len(msgs) == 1, "expected exactly 1 message for %s, found %s" % (user, msgs)
    tmp = os.path.join(os.path.dirname(os.path.dirname(msgs[0])), "tmp")
    assert os.listdir(tmp) == [], "files left in %s: %s" % (tmp, os.listdir(tmp))
    return gw.read(msgs[0])


def queue_id(pf, rcpt):
    for l in pf.delivery_lines(rcpt):
        m = re.search(r": ([0-9A-F]{6,}): to=<", l)
        if m:
            return m.group(1)
    raise AssertionError("no queue id for %s in\n%s" % (rcpt, pf.log()[-3000:]))


def wait_for(pred, what, timeout=15.0):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.1)


# --- tests -----------------------------------------------------------------------------------

def test_postfix_delivers_each_recipient_where_routed():
    """swaks -> Postfix -> lmtp:inet -> lmtpgw: two routes, two Maildirs, one copy each."""
    gw = Lmtpgw(routes=[("carol@" + DOMAIN, ["archive"]), ("*@" + DOMAIN, ["local"])])
    archive = os.path.join(gw.dir, "archive")
    gw.backends = 'archive: { driver = "maildir"; path = %s; };' % cstr(archive + "/%{local}")
    gw.write_config()
    with gw, postfix(gw) as pf:
        data = os.path.join(pf.tmpdir, "msg.eml")
        content = message("routed")
        with open(data, "wb") as f:
            f.write(content[:-2])       # swaks ends the data with CRLF . CRLF itself
        rcpts = ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN]
        out = pf.send_swaks("someone@remote.test", rcpts, data)
        assert "250 2.0.0 Ok: queued" in out, out[-1500:]
        pf.wait_queue_empty()
        for r in rcpts:
            assert pf.statuses(r) == ["sent"], (r, pf.delivery_lines(r))
            line = pf.delivery_lines(r)[0]
            assert "relay=127.0.0.1[127.0.0.1]:%d" % gw.port in line, line
            assert len(deliveries(gw, r)) == 1, gw.log()[-3000:]
        for u in ("alice", "bob"):
            split_trace(only(gw, u), content)
        assert gw.messages("carol") == [], "carol went to local, not to archive"
        split_trace(only(gw, "carol", root=archive), content)
        # one LMTP transaction carried all three (Postfix's default limit is 50 per transaction)
        txs = {re.search(r" tx=(\S+)", l).group(1) for l in gw.grep(r"event=delivery ")}
        assert len(txs) == 1, txs


def test_postfix_temporary_failure_defers_only_that_recipient():
    """A broken Maildir backend (its parent is a file: ENOTDIR -> 451 4.3.0) for carol: carol
    stays in Postfix's deferred queue, alice and bob are delivered; once the backend is fixed a
    flush delivers carol exactly once and nobody gets a second copy."""
    gw = Lmtpgw(routes=[("carol@" + DOMAIN, ["broken"]), ("*@" + DOMAIN, ["local"])])
    blocker = os.path.join(gw.dir, "broken")
    with open(blocker, "w") as f:
        f.write("not a directory\n")
    gw.backends = 'broken: { driver = "maildir"; path = %s; };' % cstr(blocker + "/%{local}")
    gw.write_config()
    with gw, postfix(gw, main=NO_RETRY) as pf:
        content = message("defer-one")
        rcpts = ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN]
        assert pf.send(SENDER, rcpts, content) == {}
        pf.wait_status("carol@" + DOMAIN, "deferred")
        pf.wait_status("alice@" + DOMAIN, "sent")
        pf.wait_status("bob@" + DOMAIN, "sent")
        line = pf.delivery_lines("carol@" + DOMAIN)[0]
        assert "451 4.3.0" in line and "Not a directory" in line, line
        queued = pf.queued_recipients()
        assert list(queued) == ["carol@" + DOMAIN], pf.queue()
        snap = []

        def in_deferred():
            snap[:] = pf.queue()
            return [m["queue_name"] for m in snap] == ["deferred"]
        wait_for(in_deferred, "the message in the deferred queue")
        assert [r["address"] for r in snap[0]["recipients"]] == ["carol@" + DOMAIN], snap
        assert "4.3.0" in snap[0]["recipients"][0].get("delay_reason", ""), snap
        assert not pf.statuses("alice@" + DOMAIN).count("deferred")
        # fix the backend, flush
        os.unlink(blocker)
        pf.flush()
        pf.wait_status("carol@" + DOMAIN, "sent")
        pf.wait_queue_empty()
        for u in ("alice", "bob"):
            split_trace(only(gw, u), content)
            assert pf.statuses(u + "@" + DOMAIN) == ["sent"]
            assert len(deliveries(gw, u + "@" + DOMAIN)) == 1
        split_trace(only(gw, "carol", root=blocker), content)
        assert len(deliveries(gw, "carol@" + DOMAIN)) == 1
        assert len(deliveries(gw, "carol@" + DOMAIN, "tempfail")) == 1, gw.log()[-2000:]
        assert pf.statuses("carol@" + DOMAIN) == ["deferred", "sent"]   # the flush did it


def test_postfix_imap_backend_down_then_up():
    """bob -> IMAP backend whose server is down (451 4.4.1): bob deferred, alice delivered.
    The backend is pointed at a running Dovecot (SIGHUP), the queue flushed: bob's message is
    in his Dovecot INBOX once, alice still has one copy."""
    from dovecot import DovecotServer
    require_dovecot()
    from harness import free_port
    with DovecotServer() as dc:
        pw = os.path.join(dc.tmpdir, "master.pw")
        with open(pw, "w") as f:
            f.write(dc.master[1] + "\n")
        os.chmod(pw, 0o600)

        def imap(port):
            s = {"driver": "imap", "url": "imap://127.0.0.1:%d" % port, "allow_plaintext": True,
                 "login": dc.master[0], "password_file": pw, "timeout": 5}
            return "imapbox: { %s };" % " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s.items())

        gw = Lmtpgw(backends=imap(free_port()),
                    routes=[("bob@" + DOMAIN, ["imapbox"]), ("*@" + DOMAIN, ["local"])])
        with gw, postfix(gw, main=NO_RETRY) as pf:
            content = message("imap-down")
            assert pf.send(SENDER, ["alice@" + DOMAIN, "bob@" + DOMAIN], content) == {}
            pf.wait_status("bob@" + DOMAIN, "deferred")
            pf.wait_status("alice@" + DOMAIN, "sent")
            line = pf.delivery_lines("bob@" + DOMAIN)[0]
            assert "451 4.4.1" in line, line
            assert list(pf.queued_recipients()) == ["bob@" + DOMAIN], pf.queue()
            assert dc.count("bob") == 0
            # the server is back (here: the backend now points at the running Dovecot)
            gw.backends = imap(dc.imap_port)
            gw.write_config()
            n = len(gw.grep("event=reloaded"))
            gw.signal(signal.SIGHUP)
            gw.wait_log("event=reloaded", count=n + 1)
            pf.flush()
            pf.wait_status("bob@" + DOMAIN, "sent", timeout=20)
            pf.wait_queue_empty()
            assert dc.count("bob") == 1
            stored = dc.fetch("bob").raw.replace(b"\r\n", b"\n")
            assert stored.endswith(content.replace(b"\r\n", b"\n")), stored[-300:]
            split_trace(only(gw, "alice"), content)
            assert pf.statuses("alice@" + DOMAIN) == ["sent"]
            assert len(deliveries(gw, "bob@" + DOMAIN)) == 1
            assert pf.statuses("bob@" + DOMAIN) == ["deferred", "sent"]


def test_postfix_permanent_failure_bounces_only_that_recipient():
    """ghost@ has no route: lmtpgw says 550 5.1.1 at RCPT; Postfix bounces ghost only (the
    bounce reaches the sender's Maildir through lmtpgw) and delivers alice."""
    gw = Lmtpgw(routes=[("alice@" + DOMAIN, ["local"]), (SENDER, ["local"])])
    with gw, postfix(gw) as pf:
        content = message("bounce-one")
        assert pf.send(SENDER, ["alice@" + DOMAIN, "ghost@" + DOMAIN], content) == {}
        pf.wait_status("ghost@" + DOMAIN, "bounced")
        pf.wait_status("alice@" + DOMAIN, "sent")
        line = pf.delivery_lines("ghost@" + DOMAIN)[0]
        assert "550 5.1.1" in line and "RCPT TO" in line, line
        wait_for(lambda: gw.messages("sender"), "the bounce in the sender's Maildir")
        pf.wait_queue_empty()
        split_trace(only(gw, "alice"), content)
        assert pf.statuses("alice@" + DOMAIN) == ["sent"]
        bounce = only(gw, "sender")
        assert b"Return-Path: <>" in bounce, bounce[:500]
        assert b"Final-Recipient: rfc822; ghost@" + DOMAIN.encode() in bounce, bounce
        assert b"Status: 5.1.1" in bounce and b"Action: failed" in bounce, bounce
        assert b"Final-Recipient: rfc822; alice@" not in bounce, bounce
        assert b"Subject: bounce-one" in bounce      # the returned message
        assert deliveries(gw, "ghost@" + DOMAIN) == []


def long_8bit_message(subject):
    line5000 = (b"0123456789" * 500)                    # one 5000-octet line
    body = (b"8-bit: caf\xc3\xa9 \xe2\x82\xac and raw octets " + bytes(range(0x80, 0x100)) + b"\r\n"
            + b".a line that starts with a dot\r\n..two dots\r\n.\r\n"
            + line5000 + b"\r\n"
            + b"trailing space \r\n\ttab\r\nend\r\n")
    return message(subject, body, b"MIME-Version: 1.0\r\n"
                   b"Content-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\n")


def test_postfix_8bit_and_long_lines_byte_exact():
    """With the recommended settings (lmtp_line_length_limit = 0; lmtpgw offers 8BITMIME) an
    8-bit message with a 5000-octet line and dot lines arrives byte for byte."""
    gw = Lmtpgw()
    with gw, postfix(gw) as pf:
        assert pf.postconf("-h", "lmtp_line_length_limit").strip() == "0"
        content = long_8bit_message("eight-bit")
        assert pf.send(SENDER, ["alice@" + DOMAIN], content, mail_options=["BODY=8BITMIME"]) == {}
        pf.wait_status("alice@" + DOMAIN, "sent")
        stored = only(gw, "alice")
        trace = split_trace(stored, content)           # raises unless content is a byte-exact suffix
        assert trace.count(b"Received:") == 2, trace   # Postfix's and lmtpgw's
        assert b"with ESMTP" in trace                  # Postfix's smtpd, no re-encoding noted


def test_postfix_defaults_would_mangle():
    """Evidence for the recommendation: with Postfix's default lmtp_line_length_limit (998) the
    5000-octet line is folded, and when 8BITMIME is not offered (lmtp_discard_lhlo_keywords =
    8bitmime, smtputf8) Postfix converts the body to quoted-printable."""
    gw = Lmtpgw()
    with gw, postfix(gw, recommended_settings=False) as pf:
        assert pf.postconf("-h", "lmtp_line_length_limit").strip() == "998"
        content = long_8bit_message("defaults")
        assert pf.send(SENDER, ["alice@" + DOMAIN], content, mail_options=["BODY=8BITMIME"]) == {}
        pf.wait_status("alice@" + DOMAIN, "sent")
        stored = only(gw, "alice")
        assert not stored.endswith(content)
        assert max(len(l) for l in stored.split(b"\r\n")) <= 998, "no line was folded"
        assert b"\xc3\xa9" in stored                   # 8-bit kept: lmtpgw offers 8BITMIME
        assert "breaking line > 998 bytes" in pf.log()
        # SMTPUTF8 implies 8BITMIME for Postfix ("offers SMTPUTF8 support, but not 8BITMIME"):
        # hide both to see the downgrade
        pf.set(lmtp_discard_lhlo_keywords="8bitmime, smtputf8")
        assert pf.send(SENDER, ["bob@" + DOMAIN], content, mail_options=["BODY=8BITMIME"]) == {}
        pf.wait_status("bob@" + DOMAIN, "sent")
        stored = only(gw, "bob")
        assert b"Content-Transfer-Encoding: quoted-printable" in stored, stored[:1500]
        assert not re.search(rb"[\x80-\xff]", stored.split(b"\r\n\r\n", 1)[1]), "8-bit left in body"


def test_postfix_xforward_passes_queue_id():
    """lmtpgw xforward = true + lmtp_send_xforward_command = yes, Postfix's address in
    trusted_networks: lmtpgw's delivery line carries qid=<Postfix queue id>, Postfix's own
    client as xforward_client= and Postfix itself (the peer) as client=."""
    gw = Lmtpgw(config={"xforward": True, "trusted_networks": ["127.0.0.1"]})
    with gw, postfix(gw) as pf:
        assert pf.send(SENDER, ["alice@" + DOMAIN, "bob@" + DOMAIN], message("xforward")) == {}
        pf.wait_status("alice@" + DOMAIN, "sent")
        pf.wait_status("bob@" + DOMAIN, "sent")
        qid = queue_id(pf, "alice@" + DOMAIN)
        for r in ("alice@" + DOMAIN, "bob@" + DOMAIN):
            lines = deliveries(gw, r)
            assert len(lines) == 1, gw.log()[-2000:]
            assert " qid=%s " % qid in lines[0], (qid, lines[0])
            assert re.search(r" client=\[127\.0\.0\.1\]:\d+ xforward_client=localhost\[127\.0\.0\.1\] ",
                             lines[0]), lines[0]


def test_postfix_recipient_limit_splits_transactions():
    """lmtp_destination_recipient_limit = 3 and 7 recipients: Postfix makes three LMTP
    transactions (3 + 3 + 1); each recipient is stored once."""
    gw = Lmtpgw()
    with gw, postfix(gw, main={"lmtp_destination_recipient_limit": "3"}) as pf:
        rcpts = ["u%d@%s" % (i, DOMAIN) for i in range(1, 8)]
        content = message("split")
        assert pf.send(SENDER, rcpts, content) == {}
        pf.wait_queue_empty()
        by_tx = {}
        for r in rcpts:
            assert pf.statuses(r) == ["sent"], pf.delivery_lines(r)
            lines = deliveries(gw, r)
            assert len(lines) == 1, lines
            by_tx.setdefault(re.search(r" tx=(\S+)", lines[0]).group(1), []).append(r)
            split_trace(only(gw, r.split("@")[0]), content)
        assert sorted(len(v) for v in by_tx.values()) == [1, 3, 3], by_tx


def test_postfix_more_recipients_than_lmtpgw_accepts():
    """Limits out of step (lmtpgw max_recipients = 2, Postfix sends up to 50): lmtpgw answers
    452 4.5.3 to the third RCPT; Postfix delivers the first two and retries the rest in further
    transactions. Nothing is lost or duplicated, only delayed: Postfix moves the message back to
    its incoming queue for the rest, and when its queue manager looks there while the first
    delivery is still finishing ("skipped, still being delivered", seen under valgrind) the rest
    waits for the queue manager's next wakeup (300 s in the stock master.cf). The test flushes
    every 3 s so it does not wait that long."""
    gw = Lmtpgw(config={"max_recipients": 2})
    with gw, postfix(gw) as pf:
        rcpts = ["v%d@%s" % (i, DOMAIN) for i in range(1, 6)]
        content = message("too-many")
        assert pf.send(SENDER, rcpts, content) == {}
        pf.wait_queue_empty(timeout=30, flush_every=3)
        for r in rcpts:
            assert pf.statuses(r)[-1] == "sent", pf.delivery_lines(r)
            assert pf.statuses(r).count("sent") == 1, pf.delivery_lines(r)
            assert len(deliveries(gw, r)) == 1
            split_trace(only(gw, r.split("@")[0]), content)
        assert any("452 4.5.3" in l for l in pf.log().splitlines()), pf.log()[-3000:]


def test_postfix_success_dsn_with_recommended_settings():
    """NOTIFY=SUCCESS with lmtpgw's dsn = true: lmtpgw sends no notices itself, so Postfix (which
    leaves success notices to a DSN-capable next hop) would send none. With the recommended
    lmtp_discard_lhlo_keywords = dsn and flags=X (final delivery) on the lmtp service, Postfix
    sends the sender a "delivered" notice."""
    gw = Lmtpgw(config={"dsn": True})
    with gw, postfix(gw) as pf:
        assert pf.send(SENDER, ["alice@" + DOMAIN], message("dsn"), rcpt_options=["NOTIFY=SUCCESS"]) == {}
        pf.wait_status("alice@" + DOMAIN, "sent")
        wait_for(lambda: gw.messages("sender"), "the success DSN in the sender's Maildir")
        pf.wait_queue_empty()
        dsn = only(gw, "sender")
        assert b"Action: delivered" in dsn and b"Final-Recipient: rfc822; alice@" in dsn, dsn


def test_postfix_success_dsn_by_default_without_postfix_settings():
    """lmtpgw does not offer DSN unless configured (dsn = false), so even a stock Postfix lmtp
    client sends the requested success notice itself."""
    gw = Lmtpgw()
    with gw, postfix(gw, main={"lmtp_discard_lhlo_keywords": ""}) as pf:
        assert pf.send(SENDER, ["alice@" + DOMAIN], message("dsn-default"),
                       rcpt_options=["NOTIFY=SUCCESS"]) == {}
        pf.wait_status("alice@" + DOMAIN, "sent")
        wait_for(lambda: gw.messages("sender"), "the success DSN in the sender's Maildir")
        pf.wait_queue_empty()


def test_postfix_success_dsn_lost_when_dsn_offered():
    """With lmtpgw's dsn = true and without lmtp_discard_lhlo_keywords = dsn: Postfix passes
    NOTIFY=SUCCESS to lmtpgw, logs the delivery, and nobody sends the requested success notice
    (why dsn is off by default)."""
    gw = Lmtpgw(config={"dsn": True})
    with gw, postfix(gw, main={"lmtp_discard_lhlo_keywords": ""}) as pf:
        assert pf.send(SENDER, ["alice@" + DOMAIN], message("dsn-lost"), rcpt_options=["NOTIFY=SUCCESS"]) == {}
        pf.wait_status("alice@" + DOMAIN, "sent")
        pf.wait_queue_empty()
        time.sleep(1.5)
        assert gw.messages("sender") == [], "a success notice arrived after all"
        assert "delivery status notification" not in pf.log(), pf.log()[-2000:]


def test_postfix_contrib_snippets_as_shipped():
    """contrib/postfix/main.cf and master.cf appended verbatim (example.com -> example.test, the
    socket path -> lmtpgw's unix socket): postconf reports no unknown parameter and mail flows
    through the "lmtpgw" transport over lmtp:unix: with the group-postfix socket, byte-exact,
    XFORWARD on, and a "delivered" success notice for NOTIFY=SUCCESS."""
    gw = Lmtpgw()
    os.chmod(gw.dir, 0o755)                          # the postfix user must reach the socket
    sock = os.path.join(gw.dir, "lmtp.sock")
    gw.listen_arg = "unix:" + sock
    gw.config.update({"unix_socket_group": "postfix", "unix_socket_mode": "0660", "xforward": True})
    gw.write_config()
    with open(os.path.join(CONTRIB, "main.cf")) as f:
        main_text = f.read().replace("example.com", DOMAIN).replace("/run/lmtpgw/lmtp.sock", sock)
    with open(os.path.join(CONTRIB, "master.cf")) as f:
        master_text = f.read()
    require_postfix()
    with gw, PostfixServer({}, main_text=main_text, master_extra=master_text) as pf:
        _rc, out = pf._run(["/usr/sbin/postconf", "-c", pf.config_dir, "-n"])
        assert "postconf: warning" not in out, out
        assert "flags=X" in recommended_args()
        _rc, out = pf._run(["/usr/sbin/postconf", "-c", pf.config_dir, "-P", "lmtpgw/unix"])
        assert "lmtpgw/unix/lmtp_line_length_limit = 0" in out, out
        content = long_8bit_message("contrib")
        rcpts = ["alice@" + DOMAIN, "bob@" + DOMAIN]
        assert pf.send(SENDER, rcpts, content, mail_options=["BODY=8BITMIME"],
                       rcpt_options=["NOTIFY=SUCCESS"]) == {}
        wait_for(lambda: gw.messages("sender"), "the success DSN in the sender's Maildir")
        pf.wait_queue_empty()
        dsn = only(gw, "sender")                      # flags=X and the DSN keyword hidden
        assert dsn.count(b"Action: delivered") == 2, dsn
        assert "discarding EHLO keywords: DSN" in pf.log()
        for r in rcpts:
            assert pf.statuses(r) == ["sent"], pf.log()[-3000:]
            line = pf.delivery_lines(r)[0]
            assert "postfix/lmtpgw/lmtp[" in line and "[%s]" % sock in line, line
            split_trace(only(gw, r.split("@")[0]), content)
            assert " qid=%s " % queue_id(pf, r) in deliveries(gw, r)[0], deliveries(gw, r)
        assert "warning" not in pf.log().replace("delay_warning", ""), pf.log()
