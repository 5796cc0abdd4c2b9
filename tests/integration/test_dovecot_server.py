"""
test_dovecot_server - the Dovecot launcher (dovecot.py) itself: it starts a real Dovecot 2.3 on
loopback, TLS verifies against its test CA, users and the master user log in, APPEND and FETCH
are byte-exact, the small quota bites, and stop() leaves no process behind.

These tests also pin the exact Dovecot responses the IMAP backend's status mapping relies on.
Run: python3 tests/run-tests.py -k dovecot
"""
import imaplib
import os
import socket
import ssl
import time

import harness
from dovecot import DovecotServer, DovecotError, find_dovecot

# Exact response texts of Dovecot 2.3.19 (Debian 12), as checked by the tests below. Dovecot
# appends timing "(0.001 + 0.000 secs)." to tagged OK/NO of mailbox commands: compare prefixes.
OVERQUOTA = b"[OVERQUOTA] Quota exceeded (mailbox for user is full)"
TRYCREATE = b"[TRYCREATE] Mailbox doesn't exist: "
AUTHENTICATIONFAILED = "[AUTHENTICATIONFAILED] Authentication failed."
AUTHORIZATIONFAILED = "[AUTHORIZATIONFAILED] Authorization failed"


def _all_processes_mentioning(*needles):
    """PIDs whose command line mentions any needle: an oracle independent of dovecot.py."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if any(n.encode() in cmd for n in needles):
            found.append((int(p), cmd.replace(b"\0", b" ").decode("utf-8", "replace")))
    return found


def _login_error(fn):
    """Run a login that must fail; returns (Dovecot's text, seconds it took)."""
    t0 = time.monotonic()
    try:
        fn()
    except imaplib.IMAP4.error as e:
        text = e.args[0]
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return text, time.monotonic() - t0
    raise AssertionError("login unexpectedly succeeded")


def test_dovecot_start_stop_leaves_nothing():
    find_dovecot()                         # a clear DovecotError when Dovecot is missing
    t0 = time.monotonic()
    dc = DovecotServer()
    with dc:
        took = time.monotonic() - t0
        assert took < 2.0, "start took %.2f s" % took
        assert dc.greeting.startswith("* OK") and "STARTTLS" in dc.greeting, dc.greeting
        assert os.path.isfile(dc.ca_file) and os.path.isfile(dc.conf_path)
        with open(dc.conf_path) as f:
            active = [ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        bad = [ln for ln in active if "/etc/" in ln or "!include" in ln]
        assert not bad, "config must be standalone: %s" % bad
        # an open session: its imap process is the kind that outlives the master
        c = dc.login("alice")
        c.select("INBOX")
        assert dc.session_pids(user="alice"), dc.processes()
        running = _all_processes_mentioning(dc.tmpdir, dc.instance_name)
        assert len(running) >= 5, running
        t1 = time.monotonic()
    stop_took = time.monotonic() - t1
    assert stop_took < 5.0, "stop took %.2f s" % stop_took
    left = _all_processes_mentioning(dc.tmpdir, dc.instance_name)
    assert not left, "dovecot processes left after stop(): %s" % left
    assert not os.path.exists(dc.tmpdir), "temp dir %s not removed" % dc.tmpdir
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", dc.imap_port)) != 0, "imap port still accepts"


def test_dovecot_starttls_login_verified_by_test_ca():
    with DovecotServer() as dc:
        # plain connection: STARTTLS offered, plaintext auth allowed (explicit loopback tests)
        c = dc.connect("plain")
        assert "STARTTLS" in c.capabilities and "LOGINDISABLED" not in c.capabilities, \
            c.capabilities
        c.logout()
        for tls, host in (("starttls", "127.0.0.1"), ("starttls", "localhost"),
                          ("imaps", "127.0.0.1")):
            c = dc.connect(tls, host=host)     # ssl.create_default_context(cafile=ca_file)
            peer = c.sock.getpeercert()
            assert ("IP Address", "127.0.0.1") in peer["subjectAltName"], peer
            assert ("DNS", "localhost") in peer["subjectAltName"], peer
            typ, data = c.login("alice", dc.users["alice"])
            assert typ == "OK", (typ, data)
            typ, data = c.select("INBOX")
            assert typ == "OK", (typ, data)
            c.logout()
        # the system trust store alone does not know the test CA
        ctx = ssl.create_default_context()
        c = imaplib.IMAP4("127.0.0.1", dc.imap_port, timeout=10)
        try:
            c.starttls(ssl_context=ctx)
            raise AssertionError("STARTTLS verified without the test CA")
        except ssl.SSLCertVerificationError:
            pass
        finally:
            c.sock.close()


def test_dovecot_untrusted_and_wrong_name_certs_are_refused():
    with DovecotServer(untrusted_cert=True) as dc:
        for tls in ("starttls", "imaps"):
            try:
                dc.connect(tls)
                raise AssertionError("%s: certificate of an untrusted CA was accepted" % tls)
            except ssl.SSLCertVerificationError as e:
                assert "unable to get local issuer certificate" in str(e), str(e)
        # the same server with the rogue CA trusted: the refusal above was about trust only
        c = imaplib.IMAP4_SSL("127.0.0.1", dc.imaps_port, timeout=10,
                              ssl_context=ssl.create_default_context(cafile=dc.untrusted_ca_file))
        c.logout()
    with DovecotServer(cert_san="DNS:wrong.test") as dc:
        try:
            dc.connect("starttls")
            raise AssertionError("certificate for wrong.test accepted for 127.0.0.1")
        except ssl.SSLCertVerificationError as e:
            assert "mismatch" in str(e), str(e)


def test_dovecot_master_user_both_ways_and_auth_failures():
    with DovecotServer() as dc:
        raw = b"Subject: for alice\r\n\r\nonly alice has this\r\n"
        c = dc.login("alice")                  # the user's own password
        typ, data = c.append("INBOX", None, None, raw)
        assert typ == "OK", (typ, data)
        c.logout()
        for how in ("plain", "login"):
            c = dc.login_master("alice", how=how)
            typ, data = c.select("INBOX")
            assert typ == "OK" and data == [b"1"], (how, typ, data)
            typ, data = c.fetch("1", "(BODY.PEEK[])")
            assert data[0][1] == raw, (how, data)
            c.logout()
        # the master's session is alice's: bob's mailbox stays empty
        assert dc.count("bob") == 0

        mu, mp = dc.master
        cases = [
            ("wrong master password, PLAIN", AUTHENTICATIONFAILED,
             lambda c: c.authenticate("PLAIN", lambda _: b"alice\0" + mu.encode() + b"\0wrong")),
            ("wrong master password, user*master", AUTHENTICATIONFAILED,
             lambda c: c.login("alice*" + mu, "wrong")),
            ("unknown user, valid master, PLAIN", AUTHORIZATIONFAILED,
             lambda c: c.authenticate("PLAIN", lambda _: ("nosuch\0%s\0%s" % (mu, mp)).encode())),
            ("unknown user, valid master, user*master", AUTHORIZATIONFAILED,
             lambda c: c.login("nosuch*" + mu, mp)),
            ("unknown master", AUTHENTICATIONFAILED,
             lambda c: c.authenticate("PLAIN", lambda _: b"alice\0nomaster\0" + mp.encode())),
            ("user's wrong password", AUTHENTICATIONFAILED,
             lambda c: c.login("alice", "wrong")),
            ("unknown user", AUTHENTICATIONFAILED,
             lambda c: c.login("nosuch", "x")),
        ]
        for what, expected, fn in cases:
            c = dc.connect()
            try:
                text, took = _login_error(lambda: fn(c))
            finally:
                c.shutdown()
            assert text == expected, "%s: Dovecot said %r, expected %r" % (what, text, expected)
            # failures are answered on Dovecot's 0.5 s timer, with no growing per-IP penalty
            assert took < 1.5, "%s took %.2f s (auth penalty not disabled?)" % (what, took)
        # and a good login right after all those failures is immediate
        t0 = time.monotonic()
        dc.login_master("bob").logout()
        assert time.monotonic() - t0 < 1.0


def test_dovecot_append_fetch_byte_exact():
    with DovecotServer() as dc:
        raw = (b"From: Sender <s@example.test>\r\nTo: alice@example.test\r\n"
               b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
               b"\r\n8-bit body: caf\xc3\xa9 \xe2\x82\xac\r\n.leading dot\r\n\r\n"
               + b"x" * 990 + b"\r\nend\r\n")
        typ, data = dc.append("alice", raw, flags=r"(\Seen $Forwarded)",
                              date='"01-Feb-2021 10:20:30 +0100"')
        assert typ == "OK" and data[0].startswith(b"[APPENDUID "), (typ, data)
        uid = int(data[0].split()[2].rstrip(b"]"))
        m = dc.fetch("alice", uid=uid)
        assert m is not None and m.raw == raw, "fetched %r" % (m and m.raw[:200])
        assert set(m.flags) == {"\\Seen", "$Forwarded"}, m.flags
        # Maildir keeps INTERNALDATE as the file's mtime: the instant survives, the zone does not
        assert m.internaldate.timestamp() == 1612171230, m.internaldate_text
        assert dc.count("alice") == 1 and dc.count("alice", "Nope") is None
        new = os.listdir(os.path.join(dc.maildir("alice"), "cur"))
        assert len(new) == 1, new


def test_dovecot_overquota_and_trycreate_responses():
    with DovecotServer() as dc:
        big = b"Subject: big\r\n\r\n" + (b"y" * 98 + b"\r\n") * 1024        # ~100 KB
        c = dc.login_master("carol")
        typ, data = c.append("INBOX", None, None, big)
        assert typ == "NO" and data[0].startswith(OVERQUOTA), \
            "APPEND of %d bytes for carol (64K quota): %s %r" % (len(big), typ, data)
        typ, data = c.append("INBOX", None, None, b"Subject: small\r\n\r\nfits\r\n")
        assert typ == "OK", (typ, data)
        # a missing folder: TRYCREATE, then CREATE + APPEND works
        typ, data = c.append('"Lists.dev"', None, None, b"Subject: l\r\n\r\nl\r\n")
        assert typ == "NO" and data[0].startswith(TRYCREATE + b"Lists.dev"), (typ, data)
        typ, data = c.create('"Lists.dev"')
        assert typ == "OK", (typ, data)
        typ, data = c.append('"Lists.dev"', None, None, b"Subject: l\r\n\r\nl\r\n")
        assert typ == "OK", (typ, data)
        c.logout()
        assert dc.count("carol") == 1, "over-quota APPEND left a message"
        assert dc.count("carol", "Lists.dev") == 1
        assert set(dc.list_mailboxes("carol")) >= {"INBOX", "Lists", "Lists.dev"}, \
            dc.list_mailboxes("carol")
        # everyone else has room for it
        typ, data = dc.append("bob", big)
        assert typ == "OK", (typ, data)
        assert dc.fetch("bob").raw == big


def test_dovecot_helpers_leave_no_login_lines():
    """The helpers must not look like the client under test in Dovecot's log."""
    with DovecotServer() as dc:
        dc.append("alice", b"Subject: h\r\n\r\nh\r\n")
        assert dc.count("alice") == 1 and dc.count("carol") == 0
        dc.messages("alice"), dc.fetch("bob"), dc.list_mailboxes("carol")
        time.sleep(0.3)                        # the log process writes asynchronously
        log = dc.log()
        assert "imapcheck-login: Info: Login: user=<alice>" in log, log
        bad = [ln for ln in log.splitlines()
               if "imap-login: Info: Login:" in ln or "Master user" in ln]
        assert not bad, "helper logins look like client logins:\n" + "\n".join(bad)
        dc.login_master("carol").logout()
        time.sleep(0.3)
        log = dc.log()
        assert "imap-login: Info: Login: user=<carol>, method=PLAIN" in log, log
        assert "auth: Info: Master user logging in as carol" in log, log


def test_dovecot_lmtp_peer_delivers_into_the_same_maildirs():
    harness.require_dovecot(lmtp=True)
    with DovecotServer(lmtp=True) as dc:
        assert os.path.exists(dc.lmtp_socket) and dc.lmtp_port
        for addr in (dc.lmtp_socket, ("127.0.0.1", dc.lmtp_port)):
            fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(addr)
                f = s.makefile("rwb")

                def reply():
                    lines = []
                    while True:
                        line = f.readline()
                        lines.append(line.decode().rstrip())
                        if line[3:4] != b"-":
                            return lines

                def cmd(c):
                    f.write(c.encode() + b"\r\n")
                    f.flush()
                    return reply()
                assert reply()[0].startswith("220")
                assert cmd("LHLO t.test")[-1].startswith("250")
                assert cmd("MAIL FROM:<s@example.test>")[0].startswith("250")
                assert cmd("RCPT TO:<alice@example.test>")[0].startswith("250")
                r = cmd("RCPT TO:<nosuch@example.test>")
                assert r[0].startswith("550 5.1.1"), r
                assert cmd("DATA")[0].startswith("354")
                f.write(b"Subject: lmtp\r\n\r\nvia dovecot lmtp\r\n.\r\n")
                f.flush()
                r = reply()
                assert r[0].startswith("250 2.0.0 <alice@example.test>"), r
                cmd("QUIT")
        assert dc.count("alice") == 2
        # Dovecot's LMTP prepends Return-Path, Delivered-To and Received
        raw = dc.fetch("alice").raw
        assert raw.startswith(b"Return-Path: <s@example.test>\r\n"), raw
        assert b"\r\nDelivered-To: alice@example.test\r\n" in raw, raw
        assert raw.endswith(b"Subject: lmtp\r\n\r\nvia dovecot lmtp\r\n"), raw


def test_dovecot_session_kill_and_missing_binary_message():
    with DovecotServer() as dc:
        c = dc.login_master("bob")
        c.select("INBOX")
        pids = dc.session_pids(user="bob")
        assert len(pids) == 1, pids
        os.kill(pids[0], 9)
        try:
            c.noop()
            raise AssertionError("session survived SIGKILL of its imap process")
        except (imaplib.IMAP4.abort, OSError):
            pass
        dc.login_master("bob").logout()        # the server itself carries on
    # the error a machine without Dovecot gets
    try:
        DovecotServer(dovecot="/nonexistent/sbin/dovecot")
        raise AssertionError("no error without a dovecot binary")
    except DovecotError as e:
        assert "dovecot is not installed" in str(e) and "apt-get install" in str(e), str(e)
