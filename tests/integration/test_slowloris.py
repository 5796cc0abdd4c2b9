"""
Slow clients cannot hold a connection (docs/reliability.md, "The second attack", case 3): a command line must be complete
within timeout_command of the previous line or reply however its bytes trickle in; a DATA or
BDAT phase has a deadline that data extends only at min_data_rate; and one client address can
hold at most max_connections_per_client connections, except trusted_networks and unix sockets.

Two loopback addresses play two clients: 127.0.0.1 and 127.0.0.2 (Linux routes all of
127.0.0.0/8 to lo, so a client socket bound to 127.0.0.2 connects to a 127.0.0.1 listener).
"""
import itertools
import os
import re
import socket
import time

from harness import SLOW, Client, Lmtpgw, expect


def answered(c, wait):
    """Read what the server sent within wait seconds into c.buf; true once it said something or
    closed (a reset after its last words counts as closed)."""
    c.sock.settimeout(wait)
    try:
        while True:
            chunk = c.sock.recv(65536)
            if not chunk:
                return True
            c.buf += chunk
    except socket.timeout:
        return bool(c.buf)
    except OSError:
        return True
    finally:
        c.sock.settimeout(10 * SLOW)


def send_until_answered(c, chunks, interval, limit):
    """Send the next of chunks every interval seconds (once they run out, only wait) until the
    server answers or closes, or limit seconds pass. Returns (reply or None, seconds)."""
    t0 = time.time()
    chunks = iter(chunks)
    while time.time() - t0 < limit:
        chunk = next(chunks, None)
        if chunk is not None:
            try:
                c.send(chunk)
            except OSError:
                break                             # closed under our feet: read what it said
        if answered(c, interval):
            break
    elapsed = time.time() - t0
    if not c.buf:
        return None, elapsed
    return c.reply(), elapsed


def drip(c, data, interval, limit):
    """Send data one byte every interval seconds (never a newline unless data has one) until the
    server answers or closes, or limit seconds pass. Returns (reply or None, seconds)."""
    return send_until_answered(c, (data[i:i + 1] for i in range(len(data))), interval, limit)


def connect_from(gw, source, greeting=True):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10 * SLOW)
    s.bind((source, 0))
    s.connect((gw.host, gw.port))
    c = Client(s)
    if greeting:
        expect(c.read_greeting(), 220)
    return c


def test_slow_drip_command_line_closed_at_timeout_command():
    """One byte a second after LHLO, never a newline: 421 4.4.2 and closed about timeout_command
    after the LHLO reply. (It used to live on: every byte reset an idle timer.)"""
    with Lmtpgw(config={"timeout_command": "2s", "timeout_greeting": "2s"}) as gw:
        with gw.session() as c:
            r, elapsed = drip(c, b"MAIL FROM:<slow@example.test>" * 10, 0.4, 12 * SLOW)
            assert r is not None, "still connected after %.1f s of drip" % elapsed
            expect(r, 421, "4.4.2")
            c.expect_closed()
            assert 1.5 <= elapsed <= 2.0 + 1.5 * SLOW, elapsed
        gw.wait_log(r"event=timeout phase=command")
        # before LHLO the same holds with timeout_greeting
        with gw.client() as c:
            r, elapsed = drip(c, b"LHLO slow.example.test" * 10, 0.4, 12 * SLOW)
            assert r is not None, "still connected after %.1f s of drip" % elapsed
            expect(r, 421, "4.4.2")
            assert 1.5 <= elapsed <= 2.0 + 1.5 * SLOW, elapsed
        gw.wait_log(r"event=timeout phase=greeting")


def test_over_long_line_drip_closed():
    """Skipping an over-long line does not reset the deadline either."""
    with Lmtpgw(config={"timeout_command": "2s", "max_command_line": 512}) as gw:
        with gw.session() as c:
            c.send(b"NOOP " + b"x" * 600)          # over the limit: the server skips to LF
            r, elapsed = drip(c, b"y" * 100, 0.3, 12 * SLOW)
            assert r is not None, "still connected after %.1f s of drip" % elapsed
            expect(r, 421, "4.4.2")
            assert elapsed <= 2.0 + 1.5 * SLOW, elapsed


def test_commands_in_time_keep_the_session():
    """Complete commands within timeout_command each: the session lives on past it."""
    with Lmtpgw(config={"timeout_command": "2s"}) as gw:
        with gw.session() as c:
            for _ in range(4):                     # 3.6 s in all
                time.sleep(0.9)
                expect(c.cmd("NOOP"), 250, "2.0.0")


def test_slow_data_below_min_rate_closed_nothing_stored():
    """DATA at 200 B/s with min_data_rate = 1000 B/s and timeout_data = 2s: the deadline grows
    by 0.2 s a second, so the server closes with 421 4.4.2 after about 2.5 s and stores nothing.
    (It used to wait as long as each block came within timeout_data.)"""
    with Lmtpgw(config={"timeout_data": "2s", "min_data_rate": 1000}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            line = b"X-Slow: " + b"z" * 90 + b"\r\n"              # 100 bytes
            r, elapsed = send_until_answered(c, itertools.repeat(line), 0.5, 15 * SLOW)
            assert r is not None, "still connected after %.1f s of slow DATA" % elapsed
            expect(r, 421, "4.4.2")
            assert 2.0 <= elapsed <= 2.5 + 2 * SLOW, elapsed
        gw.wait_log(r"event=timeout phase=data .*min_data_rate=1000 stored=none")
        assert gw.all_files() == [], gw.all_files()


def test_slow_bdat_chunk_closed_nothing_stored():
    """The same deadline holds for a BDAT chunk."""
    with Lmtpgw(config={"timeout_data": "2s", "min_data_rate": 1000}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            c.send(b"BDAT 100000 LAST\r\n")
            r, elapsed = send_until_answered(c, itertools.repeat(b"b" * 100), 0.5, 15 * SLOW)
            assert r is not None, "still connected after %.1f s of slow BDAT" % elapsed
            expect(r, 421, "4.4.2")
            assert elapsed <= 2.5 + 2 * SLOW, elapsed
        assert gw.all_files() == [], gw.all_files()


def test_data_above_min_rate_outlives_timeout_data():
    """A client above min_data_rate may take longer than timeout_data in all: each block
    extends the deadline (it is not one timer for the whole message)."""
    with Lmtpgw(config={"timeout_data": "1s", "min_data_rate": 1000}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: steady\r\n\r\n")
            for _ in range(12):                    # 3 s at about 4000 B/s
                time.sleep(0.25)
                c.send((b"y" * 998 + b"\r\n"))
            c.send(b".\r\n")
            expect(c.reply(), 250, "2.0.0")
        assert len(gw.messages("alice")) == 1


def test_connections_per_client_capped_trusted_exempt():
    """max_connections_per_client = 3: the 4th connection from 127.0.0.1 gets 421 4.7.0 and is
    closed (and logged), while 127.0.0.2, in trusted_networks, opens more; once one of
    127.0.0.1's closes, it may connect again."""
    with Lmtpgw(config={"max_connections_per_client": 3,
                        "trusted_networks": ["127.0.0.2"]}) as gw:
        held = [connect_from(gw, "127.0.0.1") for _ in range(3)]
        try:
            c = connect_from(gw, "127.0.0.1", greeting=False)
            expect(c.reply(), 421, "4.7.0")
            c.expect_closed()
            c.close()
            gw.wait_log(r"event=connection_refused client=\[127\.0\.0\.1\]:\d+ "
                        r"reason=max_connections_per_client limit=3")
            trusted = [connect_from(gw, "127.0.0.2") for _ in range(5)]
            for t in trusted:
                expect(t.cmd("NOOP"), 250, "2.0.0")
                t.close()
            for h in held:
                expect(h.cmd("NOOP"), 250, "2.0.0")
            sid = re.search(r"\(session (\w+)\)", str(held[0].greeting)).group(1)
            expect(held[0].cmd("QUIT"), 221, "2.0.0")
            held[0].close()
            gw.wait_log(r"session=%s event=disconnect" % sid)
            with connect_from(gw, "127.0.0.1") as again:
                expect(again.cmd("NOOP"), 250, "2.0.0")
        finally:
            for h in held:
                h.close()


def test_connections_per_client_unix_socket_exempt():
    """Unix socket peers are the local MTA: not capped."""
    gw = Lmtpgw(config={"max_connections_per_client": 1})
    gw.listen_arg = "unix:" + os.path.join(gw.dir, "lmtp.sock")
    with gw:
        clients = [gw.client() for _ in range(3)]
        try:
            for c in clients:
                expect(c.cmd("NOOP"), 250, "2.0.0")
        finally:
            for c in clients:
                c.close()
