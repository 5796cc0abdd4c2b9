"""CHUNKING / BINARYMIME (RFC 3030) with LMTP's per-recipient replies (RFC 2033 4.3)."""
import re

from harness import Lmtpgw, expect, split_trace


def rcpt_in(reply):
    m = re.search(r"<([^>]*)>", " ".join(reply.lines))
    return m.group(1) if m else None


def bdat(c, data, last=False):
    c.send(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data)


def test_bdat_chunks_and_last():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            parts = [b"Subject: chunks\r\n", b"\r\nfirst part ", b"second part\r\n.\r\n", b"end\r\n"]
            for p in parts[:-1]:
                bdat(c, p)
                expect(c.reply(), 250, "2.0.0")
            bdat(c, parts[-1], last=True)
            got = [rcpt_in(expect(c.reply(), 250, "2.0.0")) for _ in range(2)]
            assert got == ["alice@example.test", "bob@example.test"], got
            expect(c.cmd("NOOP"), 250, "2.0.0")
        content = b"".join(parts)
        split_trace(gw.only_message("alice"), content)
        split_trace(gw.only_message("bob"), content)


def test_bdat_zero_last_and_pipelined():
    with Lmtpgw() as gw:
        with gw.session() as c:
            content = b"Subject: zero last\r\n\r\nbody\r\n"
            c.send(b"MAIL FROM:<s@example.test> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\n"
                   + b"BDAT %d\r\n" % len(content) + content + b"BDAT 0 LAST\r\nHELP\r\n")
            expect(c.reply(), 250, "2.1.0")
            expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 250, "2.0.0")       # the chunk
            r = expect(c.reply(), 250, "2.0.0")   # the recipient
            assert rcpt_in(r) == "alice@example.test", r
            assert c.reply().code == 214
            # a message made only of BDAT 0 LAST is empty but valid
            c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<bob@example.test>\r\nBDAT 0 LAST\r\n")
            expect(c.reply(), 250, "2.1.0")
            expect(c.reply(), 250, "2.1.5")
            expect(c.reply(), 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)
        split_trace(gw.only_message("bob"), b"")


def test_binarymime_needs_bdat_and_no_data_after_bdat():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test> BODY=BINARYMIME"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 503, "5.5.1")
            # the transaction is still there: BDAT works
            bdat(c, b"x\r\n", last=True)
            expect(c.reply(), 250, "2.0.0")
            # DATA after a BDAT chunk in the same transaction
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            bdat(c, b"part\r\n")
            expect(c.reply(), 250, "2.0.0")
            expect(c.cmd("DATA"), 503, "5.5.1")
            expect(c.cmd("RSET"), 250, "2.0.0")
        assert len(gw.messages("alice")) == 1
        assert gw.messages("bob") == []


def test_bdat_last_without_valid_recipient_gets_zero_replies():
    with Lmtpgw() as gw:
        with gw.session() as c:
            c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<nobody@unrouted.test>\r\n"
                   b"BDAT 7 LAST\r\nhello\r\nHELP\r\n")
            expect(c.reply(), 250, "2.1.0")
            expect(c.reply(), 550, "5.1.1")
            r = c.reply()
            assert r.code == 214, "BDAT LAST with no valid RCPT must get zero replies (RFC 2033 4.3): %s" % r
            # the transaction is over: a new MAIL is accepted
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
        assert gw.all_files() == []


def test_bdat_without_mail_stays_in_sync():
    with Lmtpgw() as gw:
        with gw.session() as c:
            c.send(b"BDAT 12\r\nNOOP\r\nNOOP\r\nNOOP\r\n")    # 12 bytes of chunk that look like commands
            expect(c.reply(), 503, "5.5.1")
            r = c.reply()
            expect(r, 250, "2.0.0")       # only the last NOOP is a command
            assert c.pending() == b"", "chunk content was executed as commands: %r" % c.pending()


def test_bdat_binary_bytes_stored_exactly():
    content = (b"Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n"
               + bytes(range(256)) * 4
               + b"\r\n.\r\n" + b"\n.\n" + b"\r.\r" + b"\x00\x00\r\r\n\n" + b".\r\n" + b"..\r\n"
               + bytes(range(255, -1, -1)) + b"no final newline")
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test> BODY=BINARYMIME"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            # uneven chunks, split in the middle of CRLF and of "\r\n.\r\n"
            cuts = [0, 7, 300, 1029, 1030, 1033, len(content)]
            for a, b in zip(cuts, cuts[1:-1] + [None]):
                chunk = content[a:b]
                bdat(c, chunk, last=b is None)
                expect(c.reply(), 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)


def test_bdat_large_message_through_file_spool():
    # over spool_memory_max the spool moves to a file: content must not change
    content = b"Subject: big\r\n\r\n" + bytes((i * 7 + 3) % 256 for i in range(3 * 1024 * 1024))
    with Lmtpgw(config={"spool_memory_max": "64K"}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test> BODY=BINARYMIME SIZE=%d" % len(content)), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            step = 1000003
            for off in range(0, len(content), step):
                bdat(c, content[off:off + step])
                expect(c.reply(), 250, "2.0.0")
            bdat(c, b"", last=True)
            expect(c.reply(), 250, "2.0.0")
            expect(c.reply(), 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)
        split_trace(gw.only_message("bob"), content)


def test_bdat_over_size_limit():
    with Lmtpgw(config={"max_message_size": "4K"}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            bdat(c, b"a" * 3000)
            expect(c.reply(), 250, "2.0.0")
            bdat(c, b"b" * 3000, last=True)
            expect(c.reply(), 552, "5.3.4")
            expect(c.reply(), 552, "5.3.4")
            expect(c.cmd("NOOP"), 250, "2.0.0")
            # a chunk that alone passes the limit, not the last one
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            bdat(c, b"c" * 5000)
            expect(c.reply(), 552, "5.3.4")
            bdat(c, b"d" * 10, last=True)
            r = c.reply()
            assert r.code in (552, 503, 554) and r.enhanced and r.enhanced[0] == "5", r
            expect(c.cmd("NOOP"), 250, "2.0.0")
        assert gw.all_files() == [], gw.all_files()


def test_bdat_over_size_limit_soft_bounce():
    """soft_bounce = true: a message too big is refused with 452 4.3.4 whichever way it comes —
    DATA, a BDAT chunk that is not the last (the case that once got 552 5.3.4), the chunks after
    it, and BDAT LAST — and MAIL SIZE= too big gets 452 as well. Nothing is stored."""
    with Lmtpgw(config={"max_message_size": "4K", "soft_bounce": True}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test> SIZE=9999"), 452, "4.3.4")
            # DATA: the reference behaviour
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n.\r\n")
            expect(c.reply(), 452, "4.3.4")
            # BDAT: a chunk that alone passes the limit, not the last one
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            bdat(c, b"c" * 5000)
            expect(c.reply(), 452, "4.3.4")
            bdat(c, b"d" * 10)                 # the client goes on regardless
            expect(c.reply(), 452, "4.3.4")
            bdat(c, b"e" * 10, last=True)
            expect(c.reply(), 452, "4.3.4")
            expect(c.cmd("NOOP"), 250, "2.0.0")
        assert gw.all_files() == [], gw.all_files()
