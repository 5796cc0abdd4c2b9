"""The LMTP state machine against the real daemon: greeting, LHLO, command order, parameters,
addresses, routes, the small commands, over-long lines. Every reply code AND enhanced code."""
from harness import Lmtpgw, expect, expect_enhanced

EXTENSIONS = ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE", "CHUNKING", "BINARYMIME",
              "SMTPUTF8"]


def test_greeting_and_lhlo():
    with Lmtpgw(config={"max_message_size": "10M"}) as gw:
        with gw.client(greeting=False) as c:
            g = c.read_greeting()
            expect(g, 220)
            assert "LMTP" in g.text or "lmtpgw" in g.text, g
            assert "mx.lmtpgw.test" in g.text, "greeting should name the configured hostname: %s" % g
            r = c.cmd("LHLO client.test")
            expect(r, 250)
            assert len(r.lines) >= 2, "LHLO reply should be multi-line: %s" % r
            assert r.lines[0].startswith("mx.lmtpgw.test"), r
            keywords = [l.split()[0].upper() for l in r.lines[1:] if l.strip()]
            for ext in EXTENSIONS:
                assert ext in keywords, "LHLO lacks %s: %s" % (ext, r)
            size = [l for l in r.lines[1:] if l.upper().startswith("SIZE")]
            assert size == ["SIZE %d" % (10 * 1024 * 1024)], "SIZE should advertise max_message_size: %s" % size
            # DSN only when configured (lmtpgw sends no "delivered" notices itself).
            assert "DSN" not in keywords, r
            expect(c.cmd("QUIT"), 221, "2.0.0")
            c.expect_closed()


def test_dsn_offered_when_configured():
    with Lmtpgw(config={"dsn": True}) as gw:
        with gw.client() as c:
            r = c.cmd("LHLO client.test")
            assert r.lines[-1] == "DSN", r
            # The DSN parameters are carried (and were accepted before, too).
            expect(c.cmd("MAIL FROM:<s@example.test> RET=HDRS ENVID=abc"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<a@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.test"),
                   250, "2.1.5")


def test_helo_ehlo_refused_and_unknown_verb():
    with Lmtpgw() as gw:
        with gw.client() as c:
            r = c.cmd("HELO client.test")
            expect(r, 500)
            expect_enhanced(r)
            r = c.cmd("EHLO client.test")
            expect(r, 500)
            expect_enhanced(r)
            expect(c.cmd("XYZZY foo"), 500, "5.5.2")
            expect(c.cmd(""), 500, "5.5.2")
            # the session is still usable
            c.lhlo()
            expect(c.cmd("FROB"), 500, "5.5.2")
            expect(c.cmd("NOOP"), 250, "2.0.0")


def test_lhlo_syntax():
    with Lmtpgw() as gw:
        with gw.client() as c:
            expect(c.cmd("LHLO"), 501, "5.5.4")
            expect(c.cmd("LHLO two words"), 501, "5.5.4")
            expect(c.cmd("MAIL FROM:<a@example.test>"), 503, "5.5.1")
            c.lhlo()
            expect(c.cmd("MAIL FROM:<a@example.test>"), 250, "2.1.0")


def test_command_order():
    with Lmtpgw() as gw:
        with gw.client() as c:
            # before LHLO
            expect(c.cmd("MAIL FROM:<a@example.test>"), 503, "5.5.1")
            expect(c.cmd("RCPT TO:<b@example.test>"), 503, "5.5.1")
            expect(c.cmd("DATA"), 503, "5.5.1")
            c.lhlo()
            # RCPT and DATA before MAIL
            expect(c.cmd("RCPT TO:<b@example.test>"), 503, "5.5.1")
            expect(c.cmd("DATA"), 503, "5.5.1")
            expect(c.cmd("MAIL FROM:<a@example.test>"), 250, "2.1.0")
            # nested MAIL
            expect(c.cmd("MAIL FROM:<a@example.test>"), 503, "5.5.1")
            # DATA with no RCPT
            expect(c.cmd("DATA"), 503, "5.5.1")
            # DATA with only a rejected RCPT
            expect(c.cmd("RCPT TO:<nobody@elsewhere.test>"), 550, "5.1.1")
            expect(c.cmd("DATA"), 503, "5.5.1")
            # RSET ends the transaction: RCPT needs a new MAIL
            expect(c.cmd("RSET"), 250, "2.0.0")
            expect(c.cmd("RCPT TO:<b@example.test>"), 503, "5.5.1")
            expect(c.cmd("MAIL FROM:<a@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<b@example.test>"), 250, "2.1.5")
            # a second LHLO resets the transaction too
            c.lhlo()
            expect(c.cmd("DATA"), 503, "5.5.1")
        assert gw.all_files() == [], "nothing was sent, nothing may be stored: %s" % gw.all_files()


def test_mail_parameters():
    with Lmtpgw(config={"max_message_size": "1M"}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<a@example.test> FOO=BAR"), 555, "5.5.4")
            expect(c.cmd("MAIL FROM:<a@example.test> XYZ"), 555, "5.5.4")
            # known parameters are accepted
            expect(c.cmd("MAIL FROM:<a@example.test> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=abc"),
                   250, "2.1.0")
            r = c.cmd("RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.test")
            expect(r, 250, "2.1.5")
            expect(c.cmd("RCPT TO:<c@example.test> FOO=BAR"), 555, "5.5.4")
            expect(c.cmd("RSET"), 250, "2.0.0")
            # SIZE over the limit at MAIL
            expect(c.cmd("MAIL FROM:<a@example.test> SIZE=%d" % (2 * 1024 * 1024)), 552, "5.3.4")
            expect(c.cmd("MAIL FROM:<a@example.test> BODY=BINARYMIME SMTPUTF8"), 250, "2.1.0")
            expect(c.cmd("RSET"), 250, "2.0.0")
            # syntax errors in values are 501, not 555
            r = c.cmd("MAIL FROM:<a@example.test> SIZE=abc")
            expect(r, 501)
            expect_enhanced(r)
            r = c.cmd("MAIL FROM:<a@example.test> BODY=9BIT")
            expect(r, 501)
            expect_enhanced(r)


def test_addresses():
    with Lmtpgw(routes=[("*@example.test", ["local"]), ("postmaster", ["local"])]) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<not an address>"), 501, "5.1.7")
            expect(c.cmd("MAIL FROM:<a@@example.test>"), 501, "5.1.7")
            expect(c.cmd("MAIL FROM:a@example.test"), 501)
            expect(c.cmd("MAIL FROM:<>"), 250, "2.1.0")            # null sender
            expect(c.cmd("RCPT TO:<bad address@example.test>"), 501, "5.1.3")
            expect(c.cmd("RCPT TO:<a@@example.test>"), 501, "5.1.3")
            expect(c.cmd("RCPT TO:<>"), 501, "5.1.3")
            expect(c.cmd("RCPT TO:<postmaster>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<Postmaster>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<user@nowhere.test>"), 550, "5.1.1")
            expect(c.cmd("RCPT TO:<Alice@EXAMPLE.TEST>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: null sender\r\n\r\nhello\r\n.\r\n")
            for r in c.replies(3):
                expect(r, 250, "2.0.0")
            expect(c.cmd("QUIT"), 221, "2.0.0")
        # lowercase_local_part (default true) and domains lower-cased
        body = gw.only_message("alice")
        assert body.startswith(b"Return-Path: <>\r\n"), body[:80]


def test_no_route_is_550_at_rcpt():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<a@example.test>"), 250, "2.1.0")
            r = expect(c.cmd("RCPT TO:<someone@unrouted.test>"), 550, "5.1.1")
            assert "someone@unrouted.test" in str(r), r
            expect(c.cmd("RCPT TO:<postmaster>"), 550, "5.1.1")   # no postmaster route here


def test_small_commands():
    with Lmtpgw() as gw:
        with gw.client() as c:
            expect(c.cmd("NOOP"), 250, "2.0.0")          # allowed before LHLO
            expect(c.cmd("RSET"), 250, "2.0.0")
            c.lhlo()
            expect(c.cmd("NOOP"), 250, "2.0.0")
            expect(c.cmd("NOOP anything"), 250, "2.0.0")
            expect(c.cmd("VRFY alice@example.test"), 252)
            r = c.cmd("VRFY alice@example.test")
            expect_enhanced(r)
            assert r.enhanced.startswith("2."), r
            expect(c.cmd("VRFY"), 501, "5.5.4")
            r = c.cmd("HELP")
            assert r.code in (214, 211), r
            expect_enhanced(r)
            expect(c.cmd("RSET extra"), 501, "5.5.4")
            expect(c.cmd("DATA extra"), 503, "5.5.1")     # order is checked first
            expect(c.cmd("MAIL FROM:<a@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<b@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA extra"), 501, "5.5.4")
            expect(c.cmd("rset"), 250, "2.0.0")          # verbs are case-insensitive
            expect(c.cmd("quit"), 221, "2.0.0")
            c.expect_closed()


def test_oversized_command_line_keeps_session():
    with Lmtpgw() as gw:
        with gw.session() as c:
            # one write
            c.send(b"NOOP " + b"x" * 10000 + b"\r\nNOOP\r\n")
            expect(c.reply(), 500, "5.5.2")
            expect(c.reply(), 250, "2.0.0")
            # in pieces, the line end arriving much later
            c.send(b"MAIL FROM:<" + b"a" * 6000)
            c.send(b"b" * 6000)
            c.send(b"@example.test>\r\n")
            expect(c.reply(), 500, "5.5.2")
            expect(c.cmd("NOOP"), 250, "2.0.0")
            # inside a transaction: the transaction survives
            expect(c.cmd("MAIL FROM:<a@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<" + "r" * 10000 + "@example.test>"), 500, "5.5.2")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: after long lines\r\n\r\nbody\r\n.\r\n")
            expect(c.reply(), 250, "2.0.0")
            assert c.pending() == b"", "unexpected extra replies: %r" % c.pending()
        assert len(gw.messages("bob")) == 1


def test_nul_in_command():
    with Lmtpgw() as gw:
        with gw.session() as c:
            c.send(b"NOOP\x00x\r\n")
            r = c.reply()
            expect(r, 500, "5.5.2")
            expect(c.cmd("NOOP"), 250, "2.0.0")


def test_bare_lf_command_lines():
    # Bare LF as command terminator: accepted or refused, the session must stay in sync.
    with Lmtpgw() as gw:
        with gw.session() as c:
            c.send(b"NOOP\nNOOP\r\n")
            a, b = c.replies(2)
            expect_enhanced(a)
            expect(b, 250, "2.0.0")
