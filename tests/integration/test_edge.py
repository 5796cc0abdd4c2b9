"""Edge cases: boundaries, path safety, SMTPUTF8, reload during a transaction, clients that
vanish during delivery, many connections, spool clean-up."""
import os
import signal

from harness import Lmtpgw, expect, expect_enhanced, send_message, split_trace

CONTENT = b"Subject: edge\r\n\r\nbody\r\n"


def test_command_line_length_boundary():
    # max_command_line: "longest command line in octets, CRLF included"
    with Lmtpgw(config={"max_command_line": 512}) as gw:
        with gw.session() as c:
            line = b"NOOP " + b"x" * (512 - 5 - 2)
            assert len(line + b"\r\n") == 512
            c.send(line + b"\r\n")
            expect(c.reply(), 250, "2.0.0")
            c.send(line + b"y\r\n")                     # 513 octets with CRLF
            expect(c.reply(), 500, "5.5.2")
            expect(c.cmd("NOOP"), 250, "2.0.0")


def test_path_traversal_stays_inside_maildir_root():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            accepted = 0
            for rcpt in ('"../../escape"@example.test', "a/../../escape2@example.test",
                         '"/abs/escape3"@example.test', '".."@example.test', '"a\\/b"@example.test'):
                r = c.cmd("RCPT TO:<%s>" % rcpt)
                expect_enhanced(r)
                if r.code == 250:
                    accepted += 1
            if accepted:
                expect(c.cmd("DATA"), 354)
                c.send(CONTENT + b".\r\n")
                for r in c.replies(accepted):
                    expect_enhanced(r)
            expect(c.cmd("QUIT"), 221, "2.0.0")
        root = os.path.realpath(gw.maildir_root) + os.sep
        for dirpath, dirs, files in os.walk(gw.dir):
            for f in files:
                p = os.path.realpath(os.path.join(dirpath, f))
                if p.startswith(root) or os.path.dirname(p) == os.path.realpath(gw.dir):
                    continue
                assert False, "file written outside the mail root: %s" % p
        assert not os.path.exists("/abs/escape3"), "absolute path used"
        for dirpath, dirs, files in os.walk(gw.maildir_root):
            for d in dirs:
                assert d not in ("..", "."), dirpath


def test_smtputf8():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            r = c.cmd("RCPT TO:<j\u00f6rg@example.test>")
            assert r.code in (553, 501, 555) and r.enhanced and r.enhanced[0] == "5", \
                "UTF-8 address without SMTPUTF8 must be refused: %s" % r
            expect(c.cmd("RSET"), 250, "2.0.0")
            expect(c.cmd("MAIL FROM:<s\u00e9@example.test> SMTPUTF8"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<j\u00f6rg@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            content = "Subject: \u00fcnicode\r\n\r\nb\u00f6dy\r\n".encode()
            c.send(content + b".\r\n")
            expect(c.reply(), 250, "2.0.0")
        trace = split_trace(gw.only_message("j\u00f6rg"), content)
        assert "Return-Path: <s\u00e9@example.test>".encode() in trace, trace
        assert b"with UTF8LMTP id" in trace, trace


def test_loop_guard_header_name_case_and_folding():
    rec = b"".join(b"RECEIVED: from h%d\r\n\tby x; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i for i in range(3))
    rec += b"received: from lower\r\n"
    with Lmtpgw(config={"max_received_headers": 3}) as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test"], rec + CONTENT):
                expect(r, 554, "5.4.6")
        assert gw.all_files() == []


def test_very_long_data_line():
    content = b"Subject: long line\r\n\r\n" + b"L" * (1024 * 1024) + b"\r\nend\r\n"
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test"], content):
                expect(r, 250, "2.0.0")
        split_trace(gw.only_message("alice"), content)


def test_reload_during_transaction_keeps_its_config():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            # the new configuration no longer routes example.test
            gw.routes = [("*@other.test", ["local"])]
            gw.write_config()
            gw.signal(signal.SIGHUP)
            gw.wait_log(r"event=reloaded")
            expect(c.cmd("DATA"), 354)
            c.send(CONTENT + b".\r\n")
            expect(c.reply(), 250, "2.0.0")
            # the next transaction uses the new configuration
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 550, "5.1.1")
            expect(c.cmd("RCPT TO:<bob@other.test>"), 250, "2.1.5")
        split_trace(gw.only_message("alice"), CONTENT)


def test_reload_changes_limits_for_new_sessions():
    with Lmtpgw(config={"max_message_size": "1M"}) as gw:
        with gw.session() as c:
            pass
        gw.config["max_message_size"] = "2M"
        gw.write_config()
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"event=reloaded")
        with gw.client() as c:
            r = c.lhlo()
            assert "SIZE %d" % (2 * 1024 * 1024) in r.lines, r


def test_client_gone_during_delivery():
    with Lmtpgw() as gw:
        for i in range(5):
            c = gw.session()
            c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
                   b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
            c.replies(4)
            c.send(CONTENT + b".\r\n")
            c.close()                                  # hang up before the replies
        gw.wait_log(r"event=disconnect", count=6)      # + the start-up probe
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["carol@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        # whatever was stored is whole: no partial files, nothing left in tmp/
        for u in ("alice", "bob"):
            assert gw.messages(u, sub="tmp") == []
            for f in gw.messages(u):
                split_trace(gw.read(f), CONTENT)


def test_many_idle_connections():
    n = 300
    # From one address: over max_connections_per_client unless trusted (the MTA's address).
    with Lmtpgw(config={"trusted_networks": ["127.0.0.1"]}) as gw:
        clients = []
        try:
            for _ in range(n):
                clients.append(gw.client())
            for c in clients:
                c.send(b"NOOP\r\n")
            for c in clients:
                expect(c.reply(), 250, "2.0.0")
        finally:
            for c in clients:
                c.close()


def test_spool_files_do_not_remain():
    big = b"Subject: big\r\n\r\n" + (b"s" * 1000 + b"\r\n") * 300
    with Lmtpgw(config={"spool_memory_max": "8K"}) as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test", "bob@example.test"], big):
                expect(r, 250, "2.0.0")
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<carol@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(big)
        gw.wait_log(r"event=lost_during_data")
        assert os.listdir(gw.spool) == [], "spool files left: %s" % os.listdir(gw.spool)
        split_trace(gw.only_message("alice"), big)


def test_rset_during_bdat_transaction():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            c.send(b"BDAT 5\r\nhello")
            expect(c.reply(), 250, "2.0.0")
            expect(c.cmd("RSET"), 250, "2.0.0")
            c.send(b"BDAT 5 LAST\r\nworld")
            expect(c.reply(), 503, "5.5.1")
            expect(c.cmd("NOOP"), 250, "2.0.0")
        assert gw.all_files() == []


def test_bdat_syntax_error_closes():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            r = c.cmd("BDAT abc")
            expect(r, 501, "5.5.4")
            c.expect_closed()
        assert gw.all_files() == []


def test_lhlo_address_literal():
    with Lmtpgw() as gw:
        with gw.client() as c:
            expect(c.cmd("LHLO [127.0.0.1]"), 250)
            for r in send_message(c, "s@example.test", ["alice@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        assert b"Received: from [127.0.0.1] ([127.0.0.1])" in gw.only_message("alice")


def test_quoted_local_part_is_the_same_mailbox():
    # RFC 5321 4.1.2/2.4: "alice"@d and alice@d are the same mailbox (a quoted string holding
    # only atext is just another spelling); they must not land in two different Maildirs.
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ['"alice"@example.test', "alice@example.test"],
                                  CONTENT):
                expect(r, 250, "2.0.0")
        assert len(gw.messages("alice")) == 2, \
            "quoted and unquoted spellings went to different Maildirs: %s" % gw.all_files()
