"""The imap backend against a real Dovecot 2.3 on loopback (tests/integration/dovecot.py).

Every test starts its own Dovecot (passwd-file users alice/bob/carol, a master user, maildir,
carol with a 64 KiB quota, a test CA) and its own lmtpgw, talks LMTP to lmtpgw and then checks
what Dovecot really stored, over IMAP, and what Dovecot logged (logins, auth attempts).
"""
import datetime
import os
import re
import signal
import socket
import threading
import time

from harness import Lmtpgw, require_dovecot, cstr, conf_value, dot_stuff, expect, free_port, split_trace

from dovecot import DovecotServer

DOMAIN = "example.test"
SENDER = "sender@remote.test"
LOGIN_RE = r"imap-login: Info: Login: user=<%s>"


# --- helpers ---------------------------------------------------------------------------------

def dovecot(**kw):
    """A DovecotServer (not started), or RealServerMissing when Dovecot is not installed here."""
    require_dovecot()
    return DovecotServer(**kw)


def secret_file(dc, name, text, mode=0o600):
    """A secret file in Dovecot's temp dir (removed with it), mode 600 unless told."""
    path = os.path.join(dc.tmpdir, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def master_pw(dc, password=None):
    return secret_file(dc, "master.pw", (dc.master[1] if password is None else password) + "\n")


def imap_backend(dc, name="inbox", url=None, tls="starttls", password_file=None, **opts):
    """libconfig text of an imap backend: master login, the test CA, plus opts."""
    if url is None:
        url = ("imaps://127.0.0.1:%d" % dc.imaps_port if tls == "imaps"
               else "imap://127.0.0.1:%d" % dc.imap_port)
    settings = {"driver": "imap", "url": url, "ca_file": dc.ca_file}
    if opts.get("login_mode", "master") == "master":
        settings["login"] = dc.master[0]
        settings["password_file"] = password_file or master_pw(dc)
    elif password_file is not None:
        settings["password_file"] = password_file
    settings.update(opts)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v))
                                          for k, v in settings.items()))


def gateway(backends, routes=None):
    return Lmtpgw(backends=backends, routes=routes or [("*@" + DOMAIN, ["inbox"])])


def transaction(c, rcpts, content, sender=SENDER):
    """MAIL, every RCPT (each must be accepted), DATA; the post-DATA replies in RCPT order."""
    expect(c.cmd("MAIL FROM:<%s>" % sender), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd("RCPT TO:<%s>" % r), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    wire = dot_stuff(content)
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    c.send(wire + b".\r\n")
    return c.replies(len(rcpts))


def message(subject="test", body=b"hello\r\n", size=None):
    head = b"From: <%s>\r\nTo: <x@%s>\r\nSubject: %s\r\nMessage-ID: <%s@t>\r\n\r\n" % (
        SENDER.encode(), DOMAIN.encode(), subject.encode(), subject.encode())
    if size is not None:
        line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
        body = line * (max(0, size - len(head)) // len(line) + 1)
    return head + body


def dovecot_log(dc, settle=0.3):
    """Dovecot's log after its log process had a moment to write what it was sent."""
    time.sleep(settle)
    return dc.log()


def logins(log, user):
    """Dovecot's "Login: user=<user>" lines in log (a snapshot taken before the test's own IMAP
    checks, which log in too)."""
    return [l for l in log.splitlines() if re.search(LOGIN_RE % re.escape(user), l)]


def files_on_disk(dc, user):
    """Every message file of user's Maildir (all folders, new/ and cur/): no IMAP needed."""
    out = []
    for dirpath, _dirs, files in os.walk(dc.maildir(user)):
        if os.path.basename(dirpath) in ("new", "cur"):
            out += [os.path.join(dirpath, f) for f in files]
    return out


def no_secrets_in(gw, *secrets):
    log = gw.log()
    for s in secrets:
        assert s not in log, "a secret appears in lmtpgw's log"


class CutProxy:
    """A TCP relay on 127.0.0.1 (fault injection): forwards bytes both ways to (host, port) and
    closes both sockets of a connection once cut_after bytes went from client to server
    (cut_after None: never). delay: seconds each server-to-client chunk is held (a slow
    server)."""

    def __init__(self, port, cut_after=None, delay=0):
        self.target = ("127.0.0.1", port)
        self.cut_after = cut_after
        self.delay = delay
        self.cuts = 0
        self.connections = 0
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.stopped = False
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self.connections += 1
            self.socks += [client, server]
            state = {"up": 0, "cut_after": self.cut_after, "closed": False}
            threading.Thread(target=self._pump, args=(client, server, state, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, False),
                             daemon=True).start()

    def _close(self, a, b, state):
        if not state["closed"]:
            state["closed"] = True
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _pump(self, src, dst, state, upstream):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not upstream and self.delay:
                    time.sleep(self.delay)
                if upstream and state["cut_after"] is not None:
                    room = state["cut_after"] - state["up"]
                    if len(data) >= room:
                        dst.sendall(data[:room])
                        state["up"] += room
                        self.cuts += 1
                        break
                    state["up"] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst, state)

    def stop(self):
        self.stopped = True
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


# --- delivery, content, flags, INTERNALDATE --------------------------------------------------

def _content():
    """Headers + a body with 8-bit bytes, a 998-octet line, dot lines, trailing spaces."""
    long_line = b"L" * 998
    body = (b"caf\xc3\xa9 na\xefve \xff\xfe raw 8-bit\r\n"
            b".a line that starts with a dot\r\n"
            b"..two dots\r\n"
            b"trailing spaces   \r\n"
            b"\ttab\r\n"
            + long_line + b"\r\n"
            b"\r\n"
            b"last line\r\n")
    return (b"From: Sender <%s>\r\nTo: <alice@%s>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
            b"Message-ID: <byte-exact@t>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            b"\r\n" % (SENDER.encode(), DOMAIN.encode())) + body


def _check_stored(dc, user, content, flags=None):
    m = dc.fetch(user)
    assert m is not None, "nothing in %s's INBOX" % user
    trace = split_trace(m.raw, content)
    assert trace.startswith(b"Return-Path: <%s>\r\n" % SENDER.encode()), trace
    now = datetime.datetime.now(datetime.timezone.utc)
    skew = abs((now - m.internaldate).total_seconds())
    assert skew < 10, "INTERNALDATE %s is %.0f s from now" % (m.internaldate_text, skew)
    if flags is not None:
        assert set(m.flags) == set(flags), "flags %s, expected %s" % (m.flags, flags)
    return m


def test_imap_starttls_delivery_byte_exact_flags_internaldate():
    content = _content()
    with dovecot() as dc:
        be = imap_backend(dc, flags=["\\Seen", "$Gateway"])
        with gateway(be) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN], content)
            expect(r[0], 250, "2.0.0")
            c.cmd("QUIT")
            no_secrets_in(gw, dc.master[1])
            assert re.search(r"uid=\d+/\d+", gw.log()), "no APPENDUID in the delivery log line"
            log = dovecot_log(dc)
        _check_stored(dc, "alice", content, flags=("\\Seen", "$Gateway"))
        assert dc.count("alice") == 1
        line = logins(log, "alice")
        assert len(line) == 1, log
        assert ", TLS," in line[0], "login not over TLS (STARTTLS): %s" % line[0]


def test_imap_imaps_delivery_byte_exact_no_flags():
    content = _content()
    with dovecot() as dc:
        with gateway(imap_backend(dc, tls="imaps")) as gw:
            c = gw.session()
            r = transaction(c, ["bob@" + DOMAIN], content)
            expect(r[0], 250, "2.0.0")
            log = dovecot_log(dc)
        _check_stored(dc, "bob", content, flags=())
        line = logins(log, "bob")
        assert len(line) == 1 and ", TLS," in line[0], line


# --- +detail folders ---------------------------------------------------------------------------

def test_imap_detail_folder_created_subscribed_and_reused():
    with dovecot() as dc:
        with gateway(imap_backend(dc, folder_from_detail=True)) as gw:
            c = gw.session()
            m1, m2 = message("first"), message("second")
            expect(transaction(c, ["bob+lists@" + DOMAIN], m1)[0], 250, "2.0.0")
            expect(transaction(c, ["bob+lists@" + DOMAIN], m2)[0], 250, "2.0.0")
        assert "lists" in dc.list_mailboxes("bob"), dc.list_mailboxes("bob")
        conn = dc.login_master("bob")
        try:
            typ, data = conn.lsub('""', "*")
            assert typ == "OK", data
            assert any(re.search(rb'"?lists"?$', d or b"") for d in data), \
                "lists not subscribed: %r" % data
        finally:
            conn.logout()
        msgs = dc.messages("bob", "lists")
        assert len(msgs) == 2, msgs
        split_trace(msgs[0].raw, m1)
        split_trace(msgs[1].raw, m2)
        assert dc.count("bob") == 0, "the +detail message also went into INBOX"


# --- several recipients, quota -----------------------------------------------------------------

def test_imap_several_users_one_reply_each_over_quota():
    big = message("big", size=100 * 1024)
    with dovecot() as dc:
        be = (imap_backend(dc, "inbox") + " " +
              imap_backend(dc, "perm", overquota_permanent=True))
        routes = [("*@" + DOMAIN, ["inbox"]), ("*@perm.test", ["perm"])]
        with gateway(be, routes) as gw:
            c = gw.session()
            rcpts = ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN, "alice@" + DOMAIN]
            r = transaction(c, rcpts, big)
            expect(r[0], 250, "2.0.0")
            expect(r[1], 250, "2.0.0")
            expect(r[2], 452, "4.2.2")
            expect(r[3], 250, "2.0.0")
            # overquota_permanent: the same over-quota recipient is a bounce
            r = transaction(c, ["carol@perm.test", "bob@perm.test"], big)
            expect(r[0], 552, "5.2.2")
            expect(r[1], 250, "2.0.0")
            text = gw.log()
        assert dc.count("alice") == 2, "alice was given twice: two copies expected"
        assert dc.count("bob") == 2
        assert dc.count("carol") == 0
        for m in dc.messages("alice") + dc.messages("bob"):
            split_trace(m.raw, big)
        assert "OVERQUOTA" in text, text[-2000:]


# --- unknown user --------------------------------------------------------------------------------

def test_imap_unknown_user_default_and_permanent():
    with dovecot() as dc:
        be = (imap_backend(dc, "inbox") + " " +
              imap_backend(dc, "perm", unknown_user_permanent=True))
        routes = [("*@" + DOMAIN, ["inbox"]), ("*@perm.test", ["perm"])]
        with gateway(be, routes) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN, "nobody@" + DOMAIN, "bob@" + DOMAIN],
                            message("unknown-default"))
            expect(r[0], 250, "2.0.0")
            expect(r[1], 451, "4.7.0")
            expect(r[2], 250, "2.0.0")
            r = transaction(c, ["nobody@perm.test", "alice@perm.test"], message("unknown-perm"))
            expect(r[0], 550, "5.1.1")
            expect(r[1], 250, "2.0.0")
            no_secrets_in(gw, dc.master[1])
        assert dc.count("alice") == 2
        assert dc.count("bob") == 1
        log = dovecot_log(dc)
        assert "unknown user" in log, log


# --- gateway credential wrong --------------------------------------------------------------------

def test_imap_wrong_master_password():
    with dovecot() as dc:
        pw = master_pw(dc, "not-the-master-secret")
        with gateway(imap_backend(dc, password_file=pw)) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN, "bob@" + DOMAIN], message("wrongpw"))
            expect(r[0], 451, "4.7.0")
            expect(r[1], 451, "4.7.0")
            no_secrets_in(gw, "not-the-master-secret")
        assert dc.count("alice") == 0
        assert dc.count("bob") == 0


# --- server not running --------------------------------------------------------------------------

def test_imap_server_not_running():
    with dovecot() as dc:          # only for the CA and the password file
        port = free_port()
        be = (imap_backend(dc, url="imap://127.0.0.1:%d" % port) + " " +
              imap_backend(dc, "tls", url="imaps://127.0.0.1:%d" % port))
        routes = [("*@" + DOMAIN, ["inbox"]), ("*@imaps.test", ["tls"])]
        with gateway(be, routes) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN, "bob@" + DOMAIN], message("down"))
            expect(r[0], 451, "4.4.1")
            expect(r[1], 451, "4.4.1")
            # imaps:// too, and the session stays usable
            r = transaction(c, ["carol@imaps.test"], message("down2"))
            expect(r[0], 451, "4.4.1")


# --- TLS verification -----------------------------------------------------------------------------

def _assert_no_auth(dc):
    log = dovecot_log(dc)
    bad = [l for l in log.splitlines() if "imapcheck-login:" not in l and
           ("Login:" in l or "auth:" in l or "Master user" in l or "method=" in l)]
    assert not bad, "credentials reached Dovecot:\n" + "\n".join(bad)
    return log


def test_imap_untrusted_certificate_no_credentials_sent():
    with dovecot(untrusted_cert=True) as dc:
        be = imap_backend(dc, "inbox") + " " + imap_backend(dc, "tls", tls="imaps")
        routes = [("*@" + DOMAIN, ["inbox"]), ("*@imaps.test", ["tls"])]
        with gateway(be, routes) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN, "bob@imaps.test"], message("untrusted"))
            expect(r[0], 451, "4.7.5")
            expect(r[1], 451, "4.7.5")
        log = _assert_no_auth(dc)
        assert "no auth attempts" in log, log
        assert not files_on_disk(dc, "alice") and not files_on_disk(dc, "bob")


def test_imap_certificate_host_name_mismatch():
    with dovecot(cert_san="DNS:wrong.test") as dc:
        be = (imap_backend(dc, "byip") + " " +
              imap_backend(dc, "byname", url="imaps://localhost:%d" % dc.imaps_port) + " " +
              imap_backend(dc, "starttlsname", url="imap://localhost:%d" % dc.imap_port))
        routes = [("*@ip.test", ["byip"]), ("*@name.test", ["byname"]),
                  ("*@st.test", ["starttlsname"])]
        with gateway(be, routes) as gw:
            c = gw.session()
            r = transaction(c, ["alice@ip.test", "alice@name.test", "alice@st.test"],
                            message("mismatch"))
            for x in r:
                expect(x, 451, "4.7.5")
        _assert_no_auth(dc)
        assert not files_on_disk(dc, "alice")


# --- connection cut in the middle of APPEND ------------------------------------------------------

def test_imap_connection_cut_mid_append_no_partial_message():
    with dovecot() as dc:
        proxy = CutProxy(dc.imaps_port, cut_after=200 * 1024)
        try:
            be = imap_backend(dc, url="imaps://127.0.0.1:%d" % proxy.port)
            with gateway(be) as gw:
                c = gw.session()
                big = message("huge", size=2 * 1024 * 1024)
                r = transaction(c, ["alice@" + DOMAIN], big)
                expect(r[0], 451, "4.4.2")
                assert proxy.cuts == 1, "the proxy never cut (cuts=%d)" % proxy.cuts
                time.sleep(0.3)
                assert dc.count("alice") == 0, "a partial message was stored"
                # the proxy now relays everything: the same LMTP session delivers
                proxy.cut_after = None
                small = message("after-cut")
                r = transaction(c, ["alice@" + DOMAIN], small)
                expect(r[0], 250, "2.0.0")
        finally:
            proxy.stop()
        msgs = dc.messages("alice")
        assert len(msgs) == 1, "expected only the small message, found %d" % len(msgs)
        split_trace(msgs[0].raw, small)
        tmp = os.path.join(dc.maildir("alice"), "tmp")
        left = os.listdir(tmp) if os.path.isdir(tmp) else []
        assert not left, "partial files left in Maildir/tmp: %s" % left


# --- the connection pool -----------------------------------------------------------------------------

def test_imap_pool_one_login_for_many_messages():
    with dovecot() as dc:
        be = imap_backend(dc) + " " + imap_backend(dc, "seq", concurrency=1)
        routes = [("*@" + DOMAIN, ["inbox"]), ("*@seq.test", ["seq"])]
        with gateway(be, routes) as gw:
            c = gw.session()
            for i in range(5):
                expect(transaction(c, ["alice@" + DOMAIN], message("pool%d" % i))[0], 250, "2.0.0")
            c.cmd("QUIT")
            c2 = gw.session()
            for i in range(5, 7):
                expect(transaction(c2, ["alice@" + DOMAIN], message("pool%d" % i))[0], 250,
                       "2.0.0")
            c2.cmd("QUIT")
            # still connected while lmtpgw runs: exactly one login
            found = logins(dovecot_log(dc), "alice")
            assert len(found) == 1, "expected 1 login for alice, got %d:\n%s" % (
                len(found), "\n".join(found))
            # one backend delivering one target at a time: the recipients of the same user in
            # one transaction share the connection too
            c3 = gw.session()
            for i in range(2):
                r = transaction(c3, ["bob@seq.test"] * 3, message("seq%d" % i))
                for x in r:
                    expect(x, 250, "2.0.0")
            c3.cmd("QUIT")
            found = logins(dovecot_log(dc), "bob")
            assert len(found) == 1, "expected 1 login for bob, got %d:\n%s" % (
                len(found), "\n".join(found))
        assert dc.count("alice") == 7
        assert dc.count("bob") == 6


# --- login modes --------------------------------------------------------------------------------------

def test_imap_login_mode_user():
    with dovecot() as dc:
        pwf = secret_file(dc, "users.pw", "# users\nalice:alice-pw\nbob:bob-pw\n")
        with gateway(imap_backend(dc, login_mode="user", passwords_file=pwf)) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN, "carol@" + DOMAIN, "bob@" + DOMAIN],
                            message("usermode"))
            expect(r[0], 250, "2.0.0")
            expect(r[1], 451, "4.7.0")
            expect(r[2], 250, "2.0.0")
            no_secrets_in(gw, "alice-pw", "bob-pw")
            log = dovecot_log(dc)
        assert dc.count("alice") == 1 and dc.count("bob") == 1 and dc.count("carol") == 0
        assert "Master user" not in log, "user mode used the master user:\n" + log
        assert len(logins(log, "alice")) == 1 and len(logins(log, "bob")) == 1, log
        assert not logins(log, "carol"), "a login for carol without a password"


def test_imap_login_mode_shared():
    with dovecot() as dc:
        pw = secret_file(dc, "alice.pw", "alice-pw\n")
        be = imap_backend(dc, login_mode="shared", login="alice", password_file=pw,
                          folder="INBOX")
        with gateway(be) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN],
                            message("shared"))
            for x in r:
                expect(x, 250, "2.0.0")
            # the three targets are delivered concurrently: up to three connections, all as
            # alice; a second transaction reuses them (no new login)
            first = len(logins(dovecot_log(dc), "alice"))
            r = transaction(c, ["carol@" + DOMAIN, "bob@" + DOMAIN, "x@" + DOMAIN],
                            message("shared2"))
            for x in r:
                expect(x, 250, "2.0.0")
            log = dovecot_log(dc)
        assert dc.count("alice") == 6
        assert dc.count("bob") == 0 and dc.count("carol") == 0
        assert 1 <= first <= 3, log
        assert len(logins(log, "alice")) == first, "pooled connections not reused:\n" + log
        assert not logins(log, "bob") and not logins(log, "carol"), log
        assert "Master user" not in log, log


def test_imap_allow_plaintext_loopback():
    with dovecot() as dc:
        with gateway(imap_backend(dc, allow_plaintext=True)) as gw:
            c = gw.session()
            expect(transaction(c, ["alice@" + DOMAIN], message("plain"))[0], 250, "2.0.0")
            log = dovecot_log(dc)
        assert dc.count("alice") == 1
        line = logins(log, "alice")
        assert len(line) == 1 and ", TLS," not in line[0], line


# --- configuration errors (lmtpgw check) ---------------------------------------------------------

def _check(dc, backend_text):
    gw = Lmtpgw(backends=backend_text, routes=[("*@" + DOMAIN, ["inbox"])])
    rc, out, err = gw.run_cli("check")
    return rc, out + err


def test_imap_config_errors():
    with dovecot() as dc:
        # the good one passes
        rc, out = _check(dc, imap_backend(dc))
        assert rc == 0, out
        # plain text to a non-loopback host
        rc, out = _check(dc, imap_backend(dc, url="imap://192.0.2.10", allow_plaintext=True))
        assert rc != 0, out
        assert "allow_plaintext" in out and "loopback" in out, out
        # a password file others can read
        open_pw = secret_file(dc, "open.pw", dc.master[1] + "\n", mode=0o644)
        rc, out = _check(dc, imap_backend(dc, password_file=open_pw))
        assert rc != 0, out
        assert open_pw in out, out
        assert dc.master[1] not in out, "the secret is printed"
        # a passwords file (login_mode user) others can read
        open_users = secret_file(dc, "open-users.pw", "alice:alice-pw\n", mode=0o640)
        rc, out = _check(dc, imap_backend(dc, login_mode="user", passwords_file=open_users))
        assert rc != 0 and open_users in out, out
        assert "alice-pw" not in out, out
        # no url
        text = imap_backend(dc).replace("url = %s;" % cstr("imap://127.0.0.1:%d" % dc.imap_port), "")
        assert "url" not in text.split("driver")[1].split("ca_file")[0]
        rc, out = _check(dc, text)
        assert rc != 0, out
        assert "url" in out, out


# --- the pool after the server dropped a connection ---------------------------------------------

def test_imap_pool_reconnects_after_server_closed_connection():
    """A pooled connection the server has since closed (BYE on shutdown of its imap process) is
    not used for the next APPEND: lmtpgw reconnects and the delivery succeeds."""
    with dovecot() as dc:
        with gateway(imap_backend(dc)) as gw:
            c = gw.session()
            expect(transaction(c, ["alice@" + DOMAIN], message("before"))[0], 250, "2.0.0")
            time.sleep(0.2)
            pids = dc.session_pids("imap", "alice")
            assert len(pids) == 1, "expected one imap process for alice: %s" % pids
            os.kill(pids[0], signal.SIGTERM)
            deadline = time.time() + 5
            while dc.session_pids("imap", "alice") and time.time() < deadline:
                time.sleep(0.02)
            r = transaction(c, ["alice@" + DOMAIN], message("after"))
            expect(r[0], 250, "2.0.0")
            log = dovecot_log(dc)
        assert dc.count("alice") == 2
        assert len(logins(log, "alice")) == 2, log


def test_imap_verify_recipients_refuses_unknown_user_at_rcpt():
    """verify_recipients: an unknown user is refused at RCPT (550 5.1.1 with
    unknown_user_permanent), known ones are accepted, pipelined replies stay in order, and the
    login made at RCPT serves the delivery (one login per user)."""
    with DovecotServer() as dc:
        gw = _gw_verify(dc)
        with gw:
            with gw.session() as c:
                # Everything in one write: the RCPT replies must come back in order.
                c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
                       b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
                expect(c.reply(), 250, "2.1.0")
                expect(c.reply(), 250, "2.1.5")
                rep = c.reply()
                expect(rep, 550, "5.1.1")
                assert "nobody@example.test" in str(rep), rep
                expect(c.reply(), 250, "2.1.5")
                expect(c.reply(), 354)
                c.send(b"Subject: verified\r\n\r\nhi\r\n.\r\n")
                expect(c.reply(), 250, "2.0.0")
                expect(c.reply(), 250, "2.0.0")
                # Cached: a second transaction refuses nobody again without a new login.
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                expect(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")
                expect(c.cmd("RSET"), 250, "2.0.0")
        assert dc.count("alice") == 1 and dc.count("bob") == 1
        logins = [l for l in dc.log().splitlines() if "imap-login: Info: Login: user=<alice>" in l]
        assert len(logins) == 1, logins


def _gw_verify(dc):
    import os as _os
    gw = Lmtpgw(routes=[("*@example.test", ["inbox"])])
    pw = _os.path.join(gw.dir, "master.pw")
    with open(pw, "w") as f:
        f.write(dc.master[1] + "\n")
    _os.chmod(pw, 0o600)
    gw.backends = ('inbox: { driver = "imap"; url = %s; ca_file = %s; login = %s; '
                   'password_file = %s; verify_recipients = true; unknown_user_permanent = true; };'
                   % (cstr("imap://127.0.0.1:%d" % dc.imap_port), cstr(dc.ca_file),
                      cstr(dc.master[0]), cstr(pw)))
    gw.write_config()
    return gw


class SwallowReplyProxy:
    """Fault injection: relays both ways until the client has sent swallow_after bytes, then
    stops relaying the server's answers and closes both sides a moment later — the server
    stored the message, the client never hears the OK (an APPEND of unknown outcome)."""

    def __init__(self, port, swallow_after):
        self.target = ("127.0.0.1", port)
        self.swallow_after = swallow_after
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.swallowed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=10)
            state = {"up": 0, "swallow": False}
            threading.Thread(target=self._up, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, state), daemon=True).start()

    def _up(self, client, server, state):
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                server.sendall(data)
                state["up"] += len(data)
                if self.swallow_after is not None and state["up"] >= self.swallow_after:
                    state["swallow"] = True
        except OSError:
            pass

    def _down(self, server, client, state):
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                if state["swallow"]:
                    # The server's answer to the APPEND: drop it, then hang up on both sides.
                    self.swallowed += 1
                    time.sleep(0.5)
                    for s in (client, server):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    return
                client.sendall(data)
        except OSError:
            pass

    def stop(self):
        self.lsock.close()


def test_imap_dedupe_after_lost_append_reply():
    """dedupe = true: an APPEND whose OK was lost is looked up (UID SEARCH HEADER X-Lmtpgw-Id)
    when the MTA retries, and not stored a second time."""
    with dovecot() as dc:
        proxy = SwallowReplyProxy(dc.imaps_port, swallow_after=1024 * 1024)
        try:
            be = imap_backend(dc, url="imaps://127.0.0.1:%d" % proxy.port, dedupe=True)
            with gateway(be) as gw:
                c = gw.session()
                big = message("dedupe", size=2 * 1024 * 1024)
                r = transaction(c, ["alice@" + DOMAIN], big)
                expect(r[0], 451, "4.4.2")
                assert proxy.swallowed >= 1
                time.sleep(0.3)
                assert dc.count("alice") == 1, "the server should have stored the first attempt"
                # The MTA retries the same message: found, not stored again.
                proxy.swallow_after = None
                r = transaction(c, ["alice@" + DOMAIN], big)
                expect(r[0], 250, "2.0.0")
                assert "already stored" in str(r[0]), r[0]
                assert dc.count("alice") == 1, "stored twice"
                # A different message is appended normally.
                expect(transaction(c, ["alice@" + DOMAIN], message("other"))[0], 250, "2.0.0")
                assert dc.count("alice") == 2
        finally:
            proxy.stop()
        stored = dc.messages("alice")[0].raw
        assert re.search(rb"^X-Lmtpgw-Id: [0-9a-f]{64}\r$", stored, re.M), stored[:500]


def test_imap_expired_pool_connections_closed_safely_under_concurrency():
    """Pooled connections past idle_timeout are closed while other workers take and give
    connections (the benchmark found a use-after-free here): two bursts of concurrent
    deliveries with an idle gap longer than idle_timeout, all delivered, no crash."""
    with dovecot() as dc:
        be = imap_backend(dc, idle_timeout="1s", concurrency=8)
        with gateway(be) as gw:
            def burst(tag):
                sessions = [gw.session() for _ in range(6)]
                for i, c in enumerate(sessions):
                    rcpts = ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN]
                    for r in transaction(c, rcpts, message("%s-%d" % (tag, i))):
                        expect(r, 250, "2.0.0")
                for c in sessions:
                    c.cmd("QUIT")
            burst("first")
            time.sleep(2.5)
            burst("second")
            burst("third")
        assert dc.count("alice") == 18 and dc.count("bob") == 18, (dc.count("alice"), dc.count("bob"))
