"""DATA content: dot-stuffing, SMTP-smuggling shapes, 8-bit bytes, trace headers, a client that
hangs up mid-DATA."""
import re
import socket

from harness import Lmtpgw, expect, dot_stuff, dot_unstuff, send_message, split_trace

SMUGGLING_SHAPES = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"]


def test_dot_unstuffing():
    content = (b"Subject: dots\r\n\r\n"
               b".x leading dot\r\n"
               b"..two dots\r\n"
               b".\r\n"                      # a content line that is only a dot
               b"mid.dle . dots .\r\n"
               b"...\r\n"
               b"last\r\n")
    wire = dot_stuff(content)
    assert b"\r\n..x leading" in wire and b"\r\n...two" in wire and b"\r\n..\r\n" in wire
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test"], wire, stuffed=True):
                expect(r, 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)


def test_dot_stuffed_first_line():
    content = b".starts with a dot\r\nSubject: x\r\n\r\nbody\r\n"
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test"], content):
                expect(r, 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)


def test_smuggling_shapes_do_not_end_data():
    """Each shape, sent raw (not stuffed), followed by what would be a smuggled transaction:
    none may end DATA; only the later CRLF.CRLF does; the stored bytes are the wire bytes
    unstuffed per RFC 5321 4.5.2 (CRLF lines only)."""
    with Lmtpgw() as gw:
        with gw.session() as c:
            for i, shape in enumerate(SMUGGLING_SHAPES):
                user = "shape%d" % i
                smuggled = (b"MAIL FROM:<evil@example.test>\r\nRCPT TO:<victim@example.test>\r\n"
                            b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n")
                wire = (b"Subject: shape %d\r\n\r\nbefore" % i + shape + smuggled
                        + b"after\r\n")
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                expect(c.cmd("RCPT TO:<%s@example.test>" % user), 250, "2.1.5")
                expect(c.cmd("DATA"), 354)
                c.send(wire + b".\r\nHELP\r\n")
                expect(c.reply(), 250, "2.0.0")
                r = c.reply()
                assert r.code == 214, "shape %r ended DATA early; next reply %s" % (shape, r)
                split_trace(gw.only_message(user), dot_unstuff(wire))
        assert gw.messages("victim") == [], "a smuggled message was delivered"
        assert not gw.grep(r"evil@example.test"), "the smuggled MAIL was seen as a command"


def test_smuggling_shapes_stuffed_are_byte_exact():
    # What a correct client sends for content containing these shapes: stored byte for byte.
    content = b"Subject: shapes\r\n\r\n" + b"x".join(SMUGGLING_SHAPES) + b"\r\n.\r\nend\r\n"
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test"], content):
                expect(r, 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)


def test_end_of_data_split_across_writes():
    # CRLF.CRLF arriving one byte per write must still end DATA, and only it
    content = b"Subject: split\r\n\r\nline\r\n.. dot line\r\nlast"
    with Lmtpgw() as gw:
        with gw.session() as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            for b in content + b"\r\n.\r\n":
                c.send(bytes([b]))
            expect(c.reply(), 250, "2.0.0")
            expect(c.cmd("NOOP"), 250, "2.0.0")
        split_trace(gw.only_message("alice"), dot_unstuff(content + b"\r\n"))


def test_8bit_bytes_byte_exact():
    high = bytes(range(0x80, 0x100))
    content = (b"Subject: =?utf-8?q?8bit?=\r\nContent-Type: text/plain; charset=latin1\r\n\r\n"
               + high + b"\r\n" + "h\u00e9llo w\u00f6rld \u2603 \U0001f600".encode() + b"\r\n"
               + b"\x7f\x01\x02\x1b[31m ctrl\r\n" + b"\xff\xfe\xfd\r\n")
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test"], content,
                                  params=" BODY=8BITMIME"):
                expect(r, 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)


def test_bare_cr_and_lf_in_data_kept():
    # the documented policy (data.c): only CRLF ends a line; bare CR / LF are content
    content = b"Subject: bare\r\n\r\nbare LF\nhere\rand bare CR\r\n\n\r\r\n"
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test"], content):
                expect(r, 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)


def test_empty_message():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b".\r\n")
            expect(c.reply(), 250, "2.0.0")
        split_trace(gw.only_message("alice"), b"")


def test_trace_headers():
    content = b"Subject: trace\r\nMessage-ID: <m1@example.test>\r\n\r\nbody\r\n"
    with Lmtpgw() as gw:
        with gw.client() as c:
            c.lhlo("client.example.test")
            for r in send_message(c, "sender@example.test", ["alice@example.test", "bob@example.test"],
                                  content):
                expect(r, 250, "2.0.0")
            expect(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<carol@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(content + b".\r\n")
            expect(c.reply(), 250, "2.0.0")
        for who in ("alice", "bob"):
            stored = gw.only_message(who)
            trace = split_trace(stored, content)
            assert trace.startswith(b"Return-Path: <sender@example.test>\r\nReceived: "), trace
            assert b"Delivered-To:" not in trace, "delivered_to is off by default: %r" % trace
            rec = trace[trace.index(b"Received: "):]
            assert re.search(rb"Received: from client\.example\.test \(\[127\.0\.0\.1\]\)", rec), rec
            assert b"by mx.lmtpgw.test" in rec, rec
            assert re.search(rb"with LMTP id \S+;", rec), rec
            # RFC 5322 date at the end of the Received header
            assert re.search(rb";\r\n\t\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n$", rec), rec
        assert gw.only_message("carol").startswith(b"Return-Path: <>\r\n")


def test_delivered_to():
    content = b"Subject: dt\r\n\r\nbody\r\n"
    with Lmtpgw(config={"delivered_to": True}) as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test", "Bob+Tag@Example.Test"],
                                  content):
                expect(r, 250, "2.0.0")
        a = split_trace(gw.only_message("alice"), content)
        b = split_trace(gw.only_message("bob"), content)
        assert re.search(rb"(^|\r\n)Delivered-To: alice@example\.test\r\n", a), a
        assert re.search(rb"(^|\r\n)Delivered-To: bob\+tag@example\.test\r\n", b), b
        assert a.count(b"Delivered-To:") == 1 and b.count(b"Delivered-To:") == 1


def test_connection_dropped_mid_data_stores_nothing():
    with Lmtpgw(config={"spool_memory_max": "16K"}) as gw:
        for size in (100, 200 * 1024):           # in memory, and past the spool's file threshold
            with gw.session() as c:
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
                expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
                expect(c.cmd("DATA"), 354)
                c.send(b"Subject: dropped\r\n\r\n" + b"z" * size + b"\r\n")   # no final dot
            # wait for the server to notice (a sync point, not the assertion)
        gw.wait_log(r"event=lost_during_data", count=2)
        # BDAT too
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<carol@example.test>"), 250, "2.1.5")
            c.send(b"BDAT 1000 LAST\r\n" + b"q" * 500)
        gw.wait_log(r"event=lost_during_data", count=3)
        # the daemon is still fine and delivers
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["dave@example.test"], b"Subject: ok\r\n\r\nok\r\n"):
                expect(r, 250, "2.0.0")
        files = gw.all_files()
        assert files == gw.messages("dave"), "partial messages stored (new/ or tmp/): %s" % files
        assert len(files) == 1
