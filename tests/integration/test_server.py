"""Listeners (unix, IPv6, several at once) and signals (SIGHUP reload, SIGTERM shutdown)."""
import os
import signal
import socket
import stat
import subprocess

from harness import (Lmtpgw, Skip, SLOW, expect, free_port, have_ipv6_loopback, send_message,
                     split_trace)

CONTENT = b"Subject: listener\r\n\r\nbody\r\n"


def test_unix_socket_listener():
    gw = Lmtpgw()
    path = os.path.join(gw.dir, "sock", "lmtp.sock")
    os.makedirs(os.path.dirname(path))
    gw.listen_arg = "unix:" + path
    with gw:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode), "not a socket: %s" % path
        assert stat.S_IMODE(st.st_mode) == 0o660, "socket mode %o, default should be 0660" % stat.S_IMODE(st.st_mode)
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test", "bob@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        trace = split_trace(gw.only_message("alice"), CONTENT)
        assert b"unix" in trace, "Received should say the mail came over a unix socket: %r" % trace
        # a real client over the unix socket
        p = subprocess.run(["smtp-source", "-L", "-m", "5", "-t", "carol@example.test",
                            "-f", "s@example.test", "unix:" + path],
                           capture_output=True, timeout=60 * SLOW)
        assert p.returncode == 0, p
        assert len(gw.messages("carol")) == 5
    assert not os.path.exists(path), "unix socket not removed at exit"


def test_unix_socket_mode_from_config():
    gw = Lmtpgw(config={"unix_socket_mode": "0600"})
    path = os.path.join(gw.dir, "lmtp.sock")
    gw.listen_arg = "unix:" + path
    with gw:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with gw.session() as c:
            expect(c.cmd("NOOP"), 250, "2.0.0")


def test_ipv6_listener():
    if not have_ipv6_loopback():
        raise Skip("no IPv6 loopback (::1) on this machine")
    port = free_port(socket.AF_INET6, "::1")
    with Lmtpgw(listen="[::1]:%d" % port) as gw:
        with gw.client() as c:
            assert c.sock.family == socket.AF_INET6
            c.lhlo()
            for r in send_message(c, "s@example.test", ["alice@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        trace = split_trace(gw.only_message("alice"), CONTENT)
        assert b"[IPv6:::1]" in trace, trace


def test_several_listeners_from_config():
    port = free_port()
    gw = Lmtpgw()
    path = os.path.join(gw.dir, "lmtp.sock")
    listen = ["127.0.0.1:%d" % port, "unix:" + path]
    if have_ipv6_loopback():
        listen.append("[::1]:%d" % free_port(socket.AF_INET6, "::1"))
    gw.config["listen"] = listen
    gw.write_config()
    with gw:
        for i, addr in enumerate(listen):
            if addr.startswith("unix:"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
            elif addr.startswith("["):
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.connect(("::1", int(addr.rsplit(":", 1)[1])))
            else:
                s = socket.create_connection(("127.0.0.1", port))
            from harness import Client
            c = Client(s)
            expect(c.read_greeting(), 220)
            c.lhlo()
            for r in send_message(c, "s@example.test", ["u%d@example.test" % i], CONTENT):
                expect(r, 250, "2.0.0")
            c.close()
            assert len(gw.messages("u%d" % i)) == 1, addr


def test_sighup_reload_new_route():
    with Lmtpgw() as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@other.test>"), 550, "5.1.1")
        gw.routes = gw.routes + [("*@other.test", ["local"])]
        gw.write_config()
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"event=reloaded")
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@other.test", "bob@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        split_trace(gw.only_message("alice", domain="other.test"), CONTENT)
        assert len(gw.messages("bob")) == 1


def test_sighup_broken_config_keeps_old():
    with Lmtpgw(routes=[("*@example.test", ["local"]), ("*@other.test", ["local"])]) as gw:
        good = open(gw.conf_path).read()
        for broken in ("this is ; not libconfig {{{\n",
                       good + "unknown_key_xyz = 1;\n",
                       good.replace('deliver = [ "local" ]', 'deliver = [ "nosuchbackend" ]', 1)):
            n = len(gw.grep(r"reload_failed"))
            gw.write_config(broken)
            gw.signal(signal.SIGHUP)
            gw.wait_log(r"reload_failed", count=n + 1)
            assert gw.proc.poll() is None, "lmtpgw died on a broken config"
            with gw.session() as c:
                for r in send_message(c, "s@example.test", ["alice@other.test"], CONTENT):
                    expect(r, 250, "2.0.0")
        line = gw.grep(r"reload_failed")[0]
        assert "lmtpgw.conf:" in line, "reload error should name file:line: %s" % line
        assert len(gw.messages("alice", domain="other.test")) == 3
        gw.write_config(good)              # so a stray reload cannot matter


def test_sigterm_idle_session_gets_421():
    with Lmtpgw() as gw:
        fresh = gw.client()                # before LHLO
        idle = gw.session()                # after LHLO, no transaction
        gw.signal(signal.SIGTERM)
        for c in (fresh, idle):
            expect(c.reply(), 421, "4.3.2")
            c.expect_closed()
            c.close()
        rc = gw.proc.wait(timeout=10 * SLOW)
        assert rc == 0, "exit status %d after SIGTERM" % rc
        gw.stop()                          # also checks valgrind's verdict


def test_sigterm_finishes_transaction_in_flight():
    with Lmtpgw() as gw:
        c = gw.session()
        expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        gw.signal(signal.SIGTERM)
        gw.wait_log(r"signal=TERM")
        # new connections are not accepted any more
        try:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=2)
            data = s.recv(100)
            s.close()
            assert not data.startswith(b"220"), "a new session was greeted after SIGTERM"
        except OSError:
            pass
        assert gw.proc.poll() is None, "exited with a transaction in flight"
        c.send(b"second half\r\n.\r\n")
        expect(c.reply(), 250, "2.0.0")
        expect(c.reply(), 250, "2.0.0")
        # after the transaction: the next command gets 421 (or the server closes with 421)
        try:
            c.send(b"MAIL FROM:<s@example.test>\r\n")
        except OSError:
            pass
        r = c.reply()
        expect(r, 421, "4.3.2")
        c.expect_closed()
        c.close()
        rc = gw.proc.wait(timeout=10 * SLOW)
        assert rc == 0, "exit status %d after SIGTERM" % rc
        gw.stop()
        content = b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"
        split_trace(gw.only_message("alice"), content)
        split_trace(gw.only_message("bob"), content)
