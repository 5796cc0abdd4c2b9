"""Edge cases: boundaries, path safety, SMTPUTF8, reload during a transaction, clients that
vanish during delivery, many connections, spool clean-up."""
import os
import signal
import socket
import struct

from harness import Lmtpgw, conf_value, expect, expect_enhanced, send_message, split_trace

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
    """A client that sends the final dot and hangs up (FIN or RST) while the backends are still
    storing (docs/architecture.md: "from here the dispatch owns them"): the delivery goes on to
    the end (the MTA, without replies, will retry: a duplicate, never a loss).
    Each message is stored exactly once per recipient and whole, in the Maildir and at the
    webhook (answering after 1 s, so the hang-up surely falls inside the delivery), every
    recipient's result is logged as 250, nothing stays in tmp/, and the server serves on."""
    import re
    from webhook_receiver import Receiver

    def content(i):
        return b"Subject: edge\r\nX-Edge-Id: gone-%d\r\n\r\nbody %d\r\n" % (i, i)

    n = 5
    with Receiver(rule=lambda req: {"status": 200, "delay": 1.0}) as hook:
        backend = ('hook: { driver = "webhook"; url = %s; allow_http = true; format = "raw"; '
                   'timeout = 30; };' % conf_value(hook.url))
        with Lmtpgw(backends=backend,
                    routes=[("*@example.test", ["local", "hook"])]) as gw:
            for i in range(n):
                c = gw.session()
                c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
                       b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
                for r in c.replies(4):
                    expect(r, "2" if r.code != 354 else 354)
                c.send(content(i) + b".\r\n")
                if i % 2:                              # half of them reset, half close
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()                              # hang up before the replies
                # The hang-up came while the backends worked: message i is not logged yet
                # (the webhook answers 1 s after it has the whole message).
                done = gw.grep(r"event=delivery .*rcpt=<alice@example.test>")
                assert len(done) <= i, "message %d was delivered before the hang-up" % i
            gw.wait_log(r"event=delivery .*rcpt=<(alice|bob)@example.test>", count=2 * n,
                        timeout=15)
            lines = gw.grep(r"event=delivery .*rcpt=<(alice|bob)@example.test>")
            assert len(lines) == 2 * n, lines
            assert all('reply="250 ' in l for l in lines), "\n".join(lines)
            # Each hang-up is logged once, as it came (test_logs.py checks the ids too).
            gw.wait_log(r"session=\S+ event=disconnect messages=1", count=n, timeout=5)
            gone = gw.grep(r"event=client_gone_during_delivery")
            assert len(gone) == n, gone
            assert sorted(l.split(" how=")[1] for l in gone) == sorted(
                "reset" if i % 2 else "eof" for i in range(n)), gone
            with gw.session() as c:
                for r in send_message(c, "s@example.test", ["carol@example.test"], CONTENT):
                    expect(r, 250, "2.0.0")
            split_trace(gw.only_message("carol"), CONTENT)
            # Exactly once and whole, per recipient, in the Maildir.
            for u in ("alice", "bob"):
                assert gw.messages(u, sub="tmp") == [], gw.messages(u, sub="tmp")
                files = gw.messages(u)
                assert len(files) == n, "%s: %d copies for %d messages: %s" % (u, len(files), n, files)
                seen = sorted(int(re.search(rb"X-Edge-Id: gone-(\d+)", gw.read(f)).group(1))
                              for f in files)
                assert seen == list(range(n)), (u, seen)
                for f in files:
                    i = int(re.search(rb"X-Edge-Id: gone-(\d+)", gw.read(f)).group(1))
                    split_trace(gw.read(f), content(i))
        # Exactly once and whole at the webhook (one request per message for both recipients).
        gone = [q for q in hook.requests if "carol" not in q.headers["X-Lmtpgw-Recipients"]]
        assert len(gone) == len(hook.requests) - 1, [q.headers.items() for q in hook.requests]
        ids = sorted(int(re.search(rb"X-Edge-Id: gone-(\d+)", q.body).group(1))
                     for q in gone)
        assert ids == list(range(n)), ids
        for q in gone:
            i = int(re.search(rb"X-Edge-Id: gone-(\d+)", q.body).group(1))
            split_trace(q.body, content(i))


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
