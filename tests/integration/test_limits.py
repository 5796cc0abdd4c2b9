"""Limits and their replies: message size, recipients, connections, timeouts, errors, loops."""
import time

from harness import Lmtpgw, SLOW, expect, send_message, split_trace


def test_size_at_mail_and_lhlo():
    with Lmtpgw(config={"max_message_size": "8K"}) as gw:
        with gw.client() as c:
            r = c.lhlo()
            assert "SIZE 8192" in r.lines, r
            expect(c.cmd("MAIL FROM:<s@example.test> SIZE=8193"), 552, "5.3.4")
            expect(c.cmd("MAIL FROM:<s@example.test> SIZE=99999999999999999999"), "5")
            expect(c.cmd("MAIL FROM:<s@example.test> SIZE=8192"), 250, "2.1.0")


def test_message_over_limit_during_data():
    with Lmtpgw(config={"max_message_size": "8K"}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<nobody@unrouted.test>"), 550, "5.1.1")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            # the server reads to the end, then answers once per accepted recipient
            c.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 40 + b".\r\nHELP\r\n")
            expect(c.reply(), 552, "5.3.4")
            expect(c.reply(), 552, "5.3.4")
            r = c.reply()
            assert r.code == 214, "expected 2 replies after the dot, then HELP's; got %s" % r
            # the session goes on: a message within the limit is stored
            for r in send_message(c, "s@example.test", ["alice@example.test"], b"Subject: small\r\n\r\nok\r\n"):
                expect(r, 250, "2.0.0")
        assert len(gw.all_files()) == 1, gw.all_files()


def test_message_just_under_limit_accepted():
    limit = 8192
    with Lmtpgw(config={"max_message_size": limit}) as gw:
        with gw.session() as c:
            content = b"Subject: fits\r\n\r\n"
            content += b"y" * (limit - len(content) - 2) + b"\r\n"
            assert len(content) == limit
            for r in send_message(c, "s@example.test", ["alice@example.test"], content):
                expect(r, 250, "2.0.0")
            over = content + b"z\r\n"
            for r in send_message(c, "s@example.test", ["bob@example.test"], over):
                expect(r, 552, "5.3.4")
        split_trace(gw.only_message("alice"), content)
        assert gw.messages("bob") == []


def test_too_many_recipients():
    with Lmtpgw(config={"max_recipients": 2}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<a1@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<a2@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<a3@example.test>"), 452, "4.5.3")
            expect(c.cmd("RCPT TO:<a4@example.test>"), 452, "4.5.3")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: two\r\n\r\nbody\r\n.\r\nHELP\r\n")
            expect(c.reply(), 250, "2.0.0")
            expect(c.reply(), 250, "2.0.0")
            assert c.reply().code == 214
        assert len(gw.all_files()) == 2
        assert gw.messages("a3") == []


def test_too_many_connections():
    with Lmtpgw(config={"max_connections": 2}) as gw:
        disconnects = len(gw.grep(r"event=disconnect"))
        a = gw.client()
        b = gw.client()
        try:
            c = gw.client(greeting=False)
            r = c.reply()
            expect(r, 421, "4.3.2")
            c.expect_closed()
            c.close()
            # the first two still work
            expect(a.cmd("NOOP"), 250, "2.0.0")
            expect(b.cmd("NOOP"), 250, "2.0.0")
            expect(a.cmd("QUIT"), 221, "2.0.0")
            a.expect_closed()
        finally:
            a.close()
        gw.wait_log(r"event=disconnect", count=disconnects + 1)
        # a slot is free again
        with gw.client() as d:
            expect(d.cmd("NOOP"), 250, "2.0.0")
        b.close()


def test_command_timeout():
    with Lmtpgw(config={"timeout_command": "1s", "timeout_greeting": "1s"}) as gw:
        with gw.session() as c:
            t0 = time.time()
            r = c.reply()                     # we send nothing: the server must give up
            elapsed = time.time() - t0
            expect(r, 421, "4.4.2")
            c.expect_closed()
            assert elapsed >= 0.8, "timed out after %.2f s, configured 1 s" % elapsed
            assert elapsed < 5 * SLOW, "timed out after %.2f s, configured 1 s" % elapsed
        with gw.client() as c:                # before LHLO: timeout_greeting
            t0 = time.time()
            expect(c.reply(), 421, "4.4.2")
            c.expect_closed()
            assert 0.8 <= time.time() - t0 < 5 * SLOW


def test_data_timeout_drops_transaction():
    with Lmtpgw(config={"timeout_data": "1s"}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: stalled\r\n\r\npartial\r\n")
            expect(c.reply(), 421, "4.4.2")
            c.expect_closed()
        assert gw.all_files() == []


def test_too_many_errors():
    with Lmtpgw(config={"max_errors": 3}) as gw:
        with gw.session() as c:
            c.send(b"BOGUS1\r\nBOGUS2\r\nBOGUS3\r\nBOGUS4\r\nBOGUS5\r\nNOOP\r\n")
            codes = []
            while True:
                r = c.reply()
                codes.append(r.code)
                if r.code != 500:
                    break
                expect(r, 500, "5.5.2")
            expect(r, 421)
            assert r.enhanced and r.enhanced.startswith("4."), r
            # 3 errors allowed; the 4th (or at the latest the 5th) closes
            assert codes.count(500) in (3, 4), codes
            c.expect_closed()


def test_loop_guard_received_headers():
    received = b"".join(b"Received: from hop%d.example.test by x; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i
                        for i in range(6))
    with Lmtpgw(config={"max_received_headers": 5}) as gw:
        with gw.session() as c:
            content = received + b"Subject: loop\r\n\r\nbody\r\n"
            for r in send_message(c, "s@example.test", ["alice@example.test", "bob@example.test"], content):
                expect(r, 554, "5.4.6")
            # exactly at the limit: accepted
            content = received[received.index(b"Received:", 1):] + b"Subject: ok\r\n\r\nbody\r\n"
            assert content.count(b"Received:") == 5
            for r in send_message(c, "s@example.test", ["carol@example.test"], content):
                expect(r, 250, "2.0.0")
            # "Received:" in the body does not count
            content = b"Subject: body\r\n\r\n" + received * 2
            for r in send_message(c, "s@example.test", ["dave@example.test"], content):
                expect(r, 250, "2.0.0")
        assert gw.messages("alice") == [] and gw.messages("bob") == []
        assert len(gw.messages("carol")) == 1 and len(gw.messages("dave")) == 1


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_pipelined_commands_never_read_keep_memory_bounded():
    """A client that pipelines commands and never reads its replies: lmtpgw stops taking
    commands once 256 KiB of replies wait (then its input backs up and the kernel stops the
    client), instead of queueing replies without limit until the write timeout."""
    import socket
    from harness import MEMORY_FIGURES_MEAN_SOMETHING
    with Lmtpgw() as gw:
        rss_before = _rss_kb(gw.proc.pid)
        c = socket.create_connection(("127.0.0.1", gw.port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(3 * SLOW)
        chunk = b"NOOP\r\n" * 100000          # 600 kB of commands, 1.4 MB of replies
        sent = 0
        try:
            while sent < 200 * 1024 * 1024:
                c.sendall(chunk)
                sent += len(chunk)
        except socket.timeout:
            pass  # the kernel stopped us: lmtpgw no longer reads
        rss_after = _rss_kb(gw.proc.pid)
        c.close()
        # Before the bound, all 200 MB went through at loopback speed and RSS grew by GBs.
        assert sent < 32 * 1024 * 1024, "lmtpgw kept reading: %d bytes of commands taken" % sent
        if MEMORY_FIGURES_MEAN_SOMETHING:
            assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)
        # and it still serves others
        with gw.session() as c2:
            expect(c2.cmd("NOOP"), 250)


def test_client_that_never_reads_is_disconnected():
    """A client that stops reading its replies does not keep its connection slot: a timeout
    (the command deadline or the write timeout) ends it and the session is freed."""
    import socket
    with Lmtpgw(config={"timeout_command": "1s"}) as gw:
        c = socket.create_connection(("127.0.0.1", gw.port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(3 * SLOW)
        try:
            c.sendall(b"LHLO x\r\n")  # past the greeting phase: timeout_command applies
            for _ in range(400):
                c.sendall(b"NOOP\r\n" * 100000)
        except (socket.timeout, OSError):
            pass
        gw.wait_log(r"event=timeout phase=", timeout=10)  # the command deadline or the write one
        gw.wait_log(r"event=disconnect", timeout=10)
        c.close()
