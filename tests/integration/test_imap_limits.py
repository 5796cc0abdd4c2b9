"""The imap backend's time budget against servers that drip bytes, and the replies to a login
refused for a temporary reason (docs/backends/imap.md, docs/status-codes.md).

A delivery attempt has one budget, `timeout`, whatever the server does: under TLS OpenSSL reads
one TLS record with many read(2) calls, so a budget checked per read let a server that sends
one byte of the record every (timeout - epsilon) hold a worker for a timeout per byte. The
servers here are fakes on purpose (the fault is the point): they greet, read the first command
and then send their answer one byte at a time -- under TLS the bytes of the encrypted record.
"""
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time

from harness import conf_value, expect

from dovecot import make_ca, make_server_cert
from test_imap import DOMAIN, dovecot, gateway, imap_backend, message, transaction

TIMEOUT_S = 3
DRIP_S = 2.5         # below the timeout: each byte comes before a per-read timeout would fire


class DripServer:
    """A fake IMAP server on 127.0.0.1: greets (whole), reads one command line, then sends an
    endless untagged line one byte every DRIP_S. tls: implicit TLS with a certificate of the
    test CA, the record bytes dripped at the TCP level (a memory-BIO TLS session)."""

    def __init__(self, tls, tls_dir=None):
        self.tls = tls
        self.stop_event = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.conns = []
        self.dripped = 0
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(os.path.join(tls_dir, "server.crt"),
                                     os.path.join(tls_dir, "server.key"))
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop_event.is_set():
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        s.settimeout(30)
        try:
            if self.tls:
                self._serve_tls(s)
            else:
                self._serve_plain(s)
        except (OSError, ssl.SSLError):
            pass

    def _drip(self, s, data):
        """The first byte at once (so that even a slow lmtpgw, under valgrind, gets some),
        then one every DRIP_S."""
        for i in range(len(data)):
            if i > 0 and self.stop_event.wait(DRIP_S):
                return
            s.sendall(data[i:i + 1])
            self.dripped += 1

    def _serve_plain(self, s):
        s.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] drip ready\r\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return
            buf += chunk
        self._drip(s, b"* OK " + b"x" * 200)

    def _serve_tls(self, s):
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ctx.wrap_bio(inc, out, server_side=True)

        def flush():
            data = out.read()
            if data:
                s.sendall(data)

        def feed():
            data = s.recv(65536)
            if not data:
                raise OSError("closed")
            inc.write(data)

        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                feed()
        flush()
        obj.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] drip ready\r\n")
        flush()
        buf = b""
        while b"\n" not in buf:
            try:
                buf += obj.read(4096)
            except ssl.SSLWantReadError:
                flush()
                feed()
        flush()
        obj.write(b"* OK " + b"x" * 200)  # one record, never a line end
        self._drip(s, out.read())

    def close(self):
        self.stop_event.set()
        self.listener.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def _drip_backend(url, tls_dir, pw_file, **opts):
    settings = {"driver": "imap", "url": url, "ca_file": os.path.join(tls_dir, "test-ca.crt"),
                "login": "master", "password_file": pw_file, "timeout": "%ds" % TIMEOUT_S}
    settings.update(opts)
    return "inbox: { %s };" % " ".join("%s = %s;" % (k, conf_value(v))
                                      for k, v in settings.items())


def _drip_case(tls):
    d = tempfile.mkdtemp(prefix="lmtpgw-drip-")
    make_ca(d, "test", "lmtpgw test CA")
    make_server_cert(d, "test", "IP:127.0.0.1,DNS:localhost")
    pw = os.path.join(d, "master.pw")
    with open(pw, "w") as f:
        f.write("secret\n")
    os.chmod(pw, 0o600)
    srv = DripServer(tls, d)
    try:
        url = ("imaps://127.0.0.1:%d" if tls else "imap://127.0.0.1:%d") % srv.port
        opts = {} if tls else {"allow_plaintext": True}
        with gateway(_drip_backend(url, d, pw, **opts)) as gw:
            c = gw.session()
            c.settimeout(TIMEOUT_S + 30)
            t0 = time.monotonic()
            r = transaction(c, ["alice@" + DOMAIN], message("drip"))[0]
            took = time.monotonic() - t0
            expect(r, 451, "4.4.2")
            assert took < TIMEOUT_S + 1.0, \
                "a dripping server held the delivery %.1f s for timeout = %d s" % (took, TIMEOUT_S)
            assert srv.dripped >= 1, "the server never got to drip: the test tests nothing"
    finally:
        srv.close()
        shutil.rmtree(d, ignore_errors=True)


def test_imap_tls_dripping_server_costs_one_timeout():
    """imaps:// server that dribbles its TLS record one byte every 2.5 s (timeout 3 s): 451
    4.4.2 within about one timeout (before the fix: one timeout per byte, minutes)."""
    _drip_case(tls=True)


def test_imap_plaintext_dripping_server_costs_one_timeout():
    """The same server in plain text (allow_plaintext on loopback): one timeout too."""
    _drip_case(tls=False)


def test_imap_login_limit_is_temporary_resource_not_credentials():
    """Dovecot with mail_max_userip_connections = 1: while alice holds an IMAP connection from
    127.0.0.1, lmtpgw's login as alice gets NO [LIMIT]. That is a temporary resource limit,
    451 4.3.2 (before the fix: 451 4.7.0, "login failed", a credential failure). Once the other
    connection closes, the next delivery is stored."""
    with dovecot(max_userip_connections=1) as dc:
        with gateway(imap_backend(dc, timeout="%ds" % TIMEOUT_S)) as gw:
            c = gw.session()
            held = dc.login("alice")
            try:
                r = transaction(c, ["alice@" + DOMAIN], message("limited"))[0]
            finally:
                held.logout()
            expect(r, 451, "4.3.2")
            assert "[LIMIT]" in gw.log(), "the refusal was not [LIMIT]: the test tests nothing"
            time.sleep(0.5)
            expect(transaction(c, ["alice@" + DOMAIN], message("after"))[0], 250, "2.0.0")
        assert dc.count("alice") == 1
