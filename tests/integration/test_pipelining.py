"""RFC 2920 pipelining over raw sockets, RFC 2033 per-recipient replies: order, duplicates,
mixed accepted and rejected recipients."""
import re

from harness import Lmtpgw, expect, split_trace


def rcpt_in(reply):
    m = re.search(r"<([^>]*)>", " ".join(reply.lines))
    return m.group(1) if m else None


def test_pipelined_transaction_in_two_writes():
    with Lmtpgw() as gw:
        with gw.client() as c:
            c.send(b"LHLO pipe.test\r\nMAIL FROM:<s@example.test>\r\n"
                   b"RCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
                   b"RCPT TO:<carol@example.test>\r\nDATA\r\n")
            expect(c.reply(), 250)                     # LHLO
            expect(c.reply(), 250, "2.1.0")            # MAIL
            for who in ("alice", "bob", "carol"):
                r = expect(c.reply(), 250, "2.1.5")
                assert rcpt_in(r) == who + "@example.test", r
            expect(c.reply(), 354)
            content = b"Subject: pipelined\r\n\r\nbody line\r\n"
            c.send(content + b".\r\nQUIT\r\n")
            for who in ("alice", "bob", "carol"):
                r = expect(c.reply(), 250, "2.0.0")
                assert rcpt_in(r) == who + "@example.test", "reply out of RCPT order: %s" % r
            expect(c.reply(), 221, "2.0.0")
            c.expect_closed()
        for who in ("alice", "bob", "carol"):
            split_trace(gw.only_message(who), content)


def test_whole_session_in_one_write():
    with Lmtpgw() as gw:
        with gw.client() as c:
            content = b"Subject: one write\r\n\r\nx\r\n"
            c.send(b"LHLO pipe.test\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
                   b"DATA\r\n" + content + b".\r\n"
                   b"MAIL FROM:<s2@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                   + content + b".\r\nNOOP\r\nQUIT\r\n")
            expect(c.reply(), 250)
            for _ in range(2):
                expect(c.reply(), 250, "2.1.0")
                expect(c.reply(), 250, "2.1.5")
                expect(c.reply(), 354)
                expect(c.reply(), 250, "2.0.0")
            expect(c.reply(), 250, "2.0.0")            # NOOP
            expect(c.reply(), 221, "2.0.0")
            c.expect_closed()
        assert b"Return-Path: <s@example.test>" in gw.only_message("alice")
        assert b"Return-Path: <s2@example.test>" in gw.only_message("bob")


def test_duplicate_recipient_gets_two_replies_and_two_files():
    with Lmtpgw() as gw:
        with gw.session() as c:
            c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
                   b"RCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
            expect(c.reply(), 250, "2.1.0")
            for _ in range(3):
                expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 354)
            c.send(b"Subject: dup\r\n\r\nbody\r\n.\r\nHELP\r\n")
            got = [rcpt_in(expect(c.reply(), 250, "2.0.0")) for _ in range(3)]
            assert got == ["alice@example.test", "alice@example.test", "bob@example.test"], got
            r = c.reply()
            assert r.code == 214, "expected exactly 3 post-DATA replies, then HELP's: %s" % r
        assert len(gw.messages("alice")) == 2, gw.messages("alice")
        assert len(gw.messages("bob")) == 1


def test_mixed_accepted_and_rejected_recipients():
    with Lmtpgw() as gw:
        with gw.session() as c:
            c.send(b"MAIL FROM:<s@example.test>\r\n"
                   b"RCPT TO:<alice@example.test>\r\n"
                   b"RCPT TO:<nobody@unrouted.test>\r\n"
                   b"RCPT TO:<bad address>\r\n"
                   b"RCPT TO:<bob@example.test>\r\n"
                   b"RCPT TO:<x@example.test> FOO=1\r\n"
                   b"RCPT TO:<carol@example.test>\r\n"
                   b"DATA\r\n")
            expect(c.reply(), 250, "2.1.0")
            expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 550, "5.1.1")
            expect(c.reply(), 501, "5.1.3")
            expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 555, "5.5.4")
            expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 354)
            c.send(b"Subject: mixed\r\n\r\nbody\r\n.\r\nHELP\r\n")
            got = [rcpt_in(expect(c.reply(), 250, "2.0.0")) for _ in range(3)]
            assert got == ["alice@example.test", "bob@example.test", "carol@example.test"], got
            r = c.reply()
            assert r.code == 214, "rejected recipients must get no post-DATA reply; got %s" % r
        assert len(gw.all_files()) == 3, gw.all_files()
        assert gw.messages("x") == []


def test_many_recipients_pipelined():
    n = 120
    with Lmtpgw() as gw:
        with gw.session() as c:
            cmds = b"MAIL FROM:<s@example.test>\r\n"
            cmds += b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(n))
            cmds += b"DATA\r\n"
            c.send(cmds)
            expect(c.reply(), 250, "2.1.0")
            for i in range(n):
                expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 354)
            c.send(b"Subject: many\r\n\r\n" + b"y" * 5000 + b"\r\n.\r\nQUIT\r\n")
            got = [rcpt_in(expect(c.reply(), 250, "2.0.0")) for _ in range(n)]
            assert got == ["u%d@example.test" % i for i in range(n)], "replies out of RCPT order"
            expect(c.reply(), 221, "2.0.0")
        for i in range(n):
            assert len(gw.messages("u%d" % i)) == 1


def test_post_data_replies_leave_in_one_write():
    """The replies of a transaction's recipients, known at once (one Maildir job for all of
    them), leave in one write: the client's first read after the final dot holds all of them.
    (Written one by one, the second waited behind Nagle for the client's delayed ACK.)"""
    rcpts = ["alice", "bob", "carol", "dave", "erin"]
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            for who in rcpts:
                expect(c.cmd("RCPT TO:<%s@example.test>" % who), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            assert c.buf == b""
            c.send(b"Subject: one write\r\n\r\nx\r\n.\r\n")
            first = c.sock.recv(65536)
            lines = first.split(b"\r\n")[:-1]
            assert len(lines) == len(rcpts) and all(l.startswith(b"250 2.0.0 ") for l in lines), (
                "first read after the dot: %r" % first)
