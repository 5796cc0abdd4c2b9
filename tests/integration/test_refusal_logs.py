"""
Every refused recipient has a log line (docs/reliability.md, "The second attack", case 10), with the delivery line's fields:

    event=refused stage=rcpt session= tx= client= from=<> rcpt=<> result= reply="..." [backend=]

for a recipient without a route (550 5.1.1), one a backend's verification refuses (maildir
without the mailbox, IMAP against a real Dovecot), the circuit breaker (451 4.4.1), the recipient
limit (452 4.5.3) and a malformed address (501); stage=data for recipients refused after the
message (too big). Text and JSON log formats carry the same fields.
"""
import json
import os
import re

from harness import Lmtpgw, Skip, cstr, expect, free_port
from test_reliability import imap_backend, make_gateway

STRICT_ROUTE = ("*@strict.test", ["strict"])


def strict_gateway(config=None):
    """local for example.test; strict (maildir, create = false: verified at RCPT) for
    strict.test; nothing else routed."""
    gw = Lmtpgw(config=dict({"max_recipients": 2}, **(config or {})),
                routes=[("*@example.test", ["local"]), STRICT_ROUTE])
    gw.backends = ('strict: { driver = "maildir"; path = %s; create = false; };'
                   % cstr(os.path.join(gw.dir, "strict", "%{local}")))
    gw.write_config()
    return gw


def refused_lines(gw):
    return gw.grep(r"event=refused ")


def one_line(lines, rcpt):
    found = [l for l in lines if " rcpt=<%s> " % rcpt in l]
    assert len(found) == 1, (rcpt, lines)
    return found[0]


def test_rcpt_refusals_logged_with_delivery_fields():
    with strict_gateway() as gw:
        with gw.session() as c:
            sid = re.search(r"\(session (\w+)\)", str(c.greeting)).group(1)
            rep = c.cmd("MAIL FROM:<s@example.test>")
            txid = re.search(r"\(transaction (\S+)\)", str(rep)).group(1)
            expect(c.cmd("RCPT TO:<nobody@unrouted.test>"), 550, "5.1.1")
            expect(c.cmd("RCPT TO:<ghost@strict.test>"), 550, "5.1.1")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<carol@example.test>"), 452, "4.5.3")
            expect(c.cmd("RCPT TO:<no-brackets"), 501)
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: t\r\n\r\nhi\r\n.\r\n")
            expect(c.reply(), 250, "2.0.0")
            expect(c.reply(), 250, "2.0.0")
        lines = refused_lines(gw)
        assert len(lines) == 4, lines
        for l in lines:
            assert " stage=rcpt session=%s tx=%s " % (sid, txid) in l, l
            assert re.search(r" client=\[127\.0\.0\.1\]:\d+ from=<s@example\.test> ", l), l
        l = one_line(lines, "nobody@unrouted.test")
        assert ' result=permfail reply="550 5.1.1 <nobody@unrouted.test> User unknown' in l, l
        assert " backend=" not in l, l
        l = one_line(lines, "ghost@strict.test")
        assert ' result=permfail reply="550 5.1.1 ' in l and l.endswith(" backend=strict"), l
        l = one_line(lines, "carol@example.test")
        assert ' result=tempfail reply="452 4.5.3 <carol@example.test> Too many recipients"' in l, l
        bad = [l for l in lines if " arg=" in l]
        assert len(bad) == 1 and 'arg="TO:<no-brackets"' in bad[0], lines
        assert ' result=permfail reply="501 ' in bad[0], bad
        # the accepted ones have their delivery lines, not refusal lines
        assert len(gw.grep(r"event=delivery ")) == 2


def test_soft_bounced_refusal_logged_as_sent():
    """The log shows the reply the client got: with soft_bounce, 450 4.1.1."""
    with strict_gateway({"soft_bounce": True}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<nobody@unrouted.test>"), 450, "4.1.1")
            expect(c.cmd("RCPT TO:<ghost@strict.test>"), 450, "4.1.1")
        lines = refused_lines(gw)
        assert len(lines) == 2, lines
        for l in lines:
            assert ' result=tempfail reply="450 4.1.1 ' in l, l


def test_refused_after_data_logged_per_recipient():
    with Lmtpgw(config={"max_message_size": "4K"}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n.\r\n")
            expect(c.reply(), 552, "5.3.4")
            expect(c.reply(), 552, "5.3.4")
        lines = refused_lines(gw)
        assert len(lines) == 2, lines
        for r in ("alice@example.test", "bob@example.test"):
            l = one_line(lines, r)
            assert " stage=data " in l and ' result=permfail reply="552 5.3.4 ' in l, l


def test_breaker_refusal_logged():
    port = free_port()                      # nothing listens there: connection refused
    gw = make_gateway(imap_backend("down", port, 'breaker_failures = 1; breaker_cooloff = "60s";'),
                      {}, [("down@example.test", ["down"]), ("*@example.test", ["local"])])
    with gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<down@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: t\r\n\r\nx\r\n.\r\n")
            expect(c.reply(), 451, "4.4.1")
            gw.wait_log(r"event=backend_down backend=down")
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<down@example.test>"), 451, "4.4.1")
        lines = refused_lines(gw)
        assert len(lines) == 1, lines
        l = lines[0]
        assert " stage=rcpt " in l and " rcpt=<down@example.test> " in l, l
        assert ' result=tempfail reply="451 4.4.1 ' in l and l.endswith(" backend=down"), l


def test_imap_verify_refusal_logged():
    """The verification that runs in a worker (IMAP, real Dovecot) is logged too."""
    try:
        from dovecot import DovecotError, DovecotServer, find_dovecot
        find_dovecot()
    except Exception as e:                       # not installed here
        raise Skip(str(e))
    from test_imap import _gw_verify
    with DovecotServer() as dc:
        gw = _gw_verify(dc)
        with gw:
            with gw.session() as c:
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                expect(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")
                expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            lines = refused_lines(gw)
            assert len(lines) == 1, lines
            l = lines[0]
            assert " rcpt=<nobody@example.test> " in l and ' result=permfail reply="550 5.1.1 ' in l, l
            assert l.endswith(" backend=inbox"), l


def test_refusal_json_fields():
    with strict_gateway({"log_format": "json"}) as gw:
        with gw.session() as c:
            rep = c.cmd("MAIL FROM:<s@example.test>")
            txid = re.search(r"\(transaction (\S+)\)", str(rep)).group(1)
            expect(c.cmd("RCPT TO:<ghost@strict.test>"), 550, "5.1.1")
        records = [json.loads(l) for l in gw.log().splitlines() if l.startswith("{")]
        refused = [r for r in records if r.get("event") == "refused"]
        assert len(refused) == 1, records
        r = refused[0]
        assert r["stage"] == "rcpt" and r["tx"] == txid and r["rcpt"] == "<ghost@strict.test>", r
        assert r["from"] == "<s@example.test>" and r["result"] == "permfail", r
        assert r["reply"].startswith("550 5.1.1 ") and r["backend"] == "strict", r
        assert r["client"].startswith("[127.0.0.1]:") and r["session"] == txid.split(".")[0], r


def test_refused_bdat_chunk_logged_and_counted_per_recipient():
    """A BDAT chunk before LAST that makes the message too big gets 552 5.3.4, and the client
    sends no more BDAT (RFC 3030 section 2): that reply is the message's only answer. Each
    recipient has its event=refused stage=data line and is counted in lmtpgw_recipients_total
    then, once, also when the client sends BDAT LAST anyway and gets a 552 per recipient."""
    from test_bdat import bdat
    from test_metrics import classes

    port = free_port()
    with Lmtpgw(config={"max_message_size": "4K", "metrics_listen": "127.0.0.1:%d" % port}) as gw:
        with gw.session() as c:
            # The client stops at the refused chunk, as RFC 3030 says, and resets.
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            bdat(c, b"a" * 5000)
            expect(c.reply(), 552, "5.3.4")
            expect(c.cmd("RSET"), 250)
            # This one goes on to BDAT LAST regardless: still one line per recipient.
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<carol@example.test>"), 250, "2.1.5")
            bdat(c, b"c" * 5000)
            expect(c.reply(), 552, "5.3.4")
            bdat(c, b"d" * 10, last=True)
            expect(c.reply(), 552, "5.3.4")
            expect(c.cmd("NOOP"), 250, "2.0.0")
        lines = refused_lines(gw)
        assert len(lines) == 3, gw.log()
        for r in ("alice@example.test", "bob@example.test", "carol@example.test"):
            l = one_line(lines, r)
            assert " stage=data " in l and ' result=permfail reply="552 5.3.4 ' in l, l
        assert classes(port) == {"2xx": 0, "4xx": 0, "5xx": 3}
        assert gw.all_files() == [], gw.all_files()
