"""The interop matrix of docs/interop.md: every LMTP client x every store, end to end.

Each test starts the four stores -- a real Dovecot 2.3 (IMAP, master login), a real Cyrus IMAP
3.6.1 (IMAP, proxy authorization), the S3 test server (s3rver behind the strict SigV4 front) and
an HTTP webhook receiver -- and one lmtpgw that routes alice@dovecot.test, alice@cyrus.test,
alice@s3.test and alice@http.test to them, then has ONE client (Postfix, Exim, OpenSMTPD,
swaks, smtp-source) deliver a message to the four recipients, and checks that each store holds
it exactly once, byte for byte after the trace headers (smtp-source: its generated body).
"""
import contextlib
import os
import re
import subprocess

from harness import RealServerMissing, Lmtpgw, SLOW, conf_value, split_trace

import debpkg
from cyrus import CyrusServer
from dovecot import DovecotError, DovecotServer, find_dovecot
from s3server import S3Server, S3Unavailable
from webhook_receiver import Receiver

STORES = ("dovecot", "cyrus", "s3", "http")
RCPTS = ["alice@%s.test" % s for s in STORES]
SENDER = "sender@client.test"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _settings(name, settings):
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v))
                                          for k, v in settings.items()))


def _secret(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


@contextlib.contextmanager
def stores():
    """The four stores, started; yields (backends text, routes, check(content_or_None))."""
    try:
        find_dovecot()
    except DovecotError as e:
        raise RealServerMissing("dovecot", str(e))
    with contextlib.ExitStack() as stack:
        dc = stack.enter_context(DovecotServer())
        try:
            cy = CyrusServer().start()
        except debpkg.Unavailable as e:
            raise RealServerMissing("cyrus", str(e))
        stack.callback(cy.stop)
        try:
            s3 = S3Server().start()
        except S3Unavailable as e:
            raise RealServerMissing("s3", str(e))
        stack.callback(s3.stop)
        hook = stack.enter_context(Receiver())
        backends = " ".join([
            _settings("dovecot", {"driver": "imap", "url": "imap://127.0.0.1:%d" % dc.imap_port,
                                  "ca_file": dc.ca_file, "login": dc.master[0],
                                  "password_file": _secret(dc.tmpdir, "m.pw", dc.master[1]),
                                  "master_format": "dovecot"}),
            _settings("cyrus", {"driver": "imap", "url": "imap://127.0.0.1:%d" % cy.imap_port,
                                "ca_file": cy.ca_file, "login": cy.master[0],
                                "password_file": _secret(cy.tmpdir, "m.pw", cy.master[1]),
                                "master_format": "sasl"}),
            _settings("s3", {"driver": "s3", "endpoint": s3.endpoint, "allow_http": True,
                             "bucket": s3.bucket,
                             "credentials_file": _secret(s3.dir, "creds", "%s\n%s" % (
                                 s3.access_key, s3.secret_key))}),
            _settings("http", {"driver": "webhook", "url": hook.url, "allow_http": True,
                               "format": "raw", "timeout": 10}),
        ])
        routes = [("*@%s.test" % s, [s]) for s in STORES]

        def stored():
            """{store: [stored message bytes]}"""
            eml = [k for k in s3.keys() if k.endswith(".eml")]
            return {"dovecot": [m.raw for m in dc.messages("alice")],
                    "cyrus": [raw for _uid, raw in cy.messages("alice")],
                    "s3": [s3.get(k) for k in eml],
                    "http": [r.body for r in hook.requests]}

        def check(content, body_len=None):
            """Each store holds exactly one message: content after the trace headers, or (for
            smtp-source) a body of body_len octets."""
            got = stored()
            for store in STORES:
                assert len(got[store]) == 1, (store, [m[:200] for m in got[store]])
                raw = got[store][0]
                if content is not None:
                    split_trace(raw, content)
                else:
                    body = raw[raw.index(b"\r\n\r\n") + 4:]
                    assert len(body) == body_len, (store, len(body), raw[:400])
            return got

        yield backends, routes, check


def gateway(backends, routes, socket_group=None):
    """lmtpgw on 127.0.0.1:<random> and, with socket_group, a unix socket of that group."""
    gw = Lmtpgw(backends=backends, routes=routes)
    if socket_group is not None:
        os.chmod(gw.dir, 0o755)
        gw.sock = os.path.join(gw.dir, "lmtp.sock")
        port = __import__("harness").free_port()
        gw.config.update({"listen": ["127.0.0.1:%d" % port, "unix:" + gw.sock],
                          "unix_socket_group": socket_group, "unix_socket_mode": "0660"})
        gw.write_config()
    return gw


def message(client):
    """8-bit text, a dot line and a 1500-octet line, complete headers (an MTA adds only its
    Received:)."""
    return (b"From: <%s>\r\nTo: <alice@dovecot.test>\r\nSubject: matrix %s\r\n"
            b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <matrix-%s@client.test>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            % (SENDER.encode(), client.encode(), client.encode())
            + b"caf\xc3\xa9 \xe2\x82\xac\r\n.dot line\r\n" + b"m" * 1500 + b"\r\nend\r\n")


def wait(predicate, what, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout * SLOW
    while True:
        try:
            return predicate()
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s" % what)
            time.sleep(0.1)


def test_matrix_postfix():
    from postfix import PostfixError, PostfixServer, find_postfix
    from test_postfix_e2e import recommended, recommended_args
    try:
        find_postfix()
    except PostfixError as e:
        raise RealServerMissing("postfix", str(e))
    with stores() as (backends, routes, check):
        gw = gateway(backends, routes)
        with gw, PostfixServer({"%s.test" % s: "lmtp:inet:127.0.0.1:%d" % gw.port
                                for s in STORES}, main=recommended(),
                               lmtp_args=recommended_args()) as pf:
            content = message("postfix")
            assert pf.send(SENDER, RCPTS, content, mail_options=["BODY=8BITMIME"]) == {}
            pf.wait_queue_empty()
            for r in RCPTS:
                assert pf.statuses(r) == ["sent"], pf.log()[-3000:]
            wait(lambda: check(content), "every store")


def test_matrix_exim():
    from exim import EximInstance
    from test_exim import contrib_parts, crlf, exim_user
    exim_user()
    with stores() as (backends, routes, check):
        gw = gateway(backends, routes, socket_group="Debian-exim")
        with gw:
            main, routers, transports = contrib_parts(gw.sock, gw.port)
            main = main.replace("example.test", " : ".join("%s.test" % s for s in STORES))
            try:
                ex = EximInstance(main, routers, transports)
            except debpkg.Unavailable as e:
                raise RealServerMissing("exim", str(e))
            with ex:
                lf = message("exim").replace(b"\r\n", b"\n")
                ex.send(SENDER, RCPTS, lf)
                for r in RCPTS:
                    assert ex.results(r) in (["=>"], ["->"]), ex.log()
                assert ex.queue() == {}
                check(crlf(lf))


def test_matrix_opensmtpd():
    from opensmtpd import OpenSmtpd
    from test_opensmtpd import CLIENT_USER, CONTRIB as OSMTPD_CONTRIB
    try:
        debpkg.system_user(CLIENT_USER, user_group=True)
    except debpkg.Unavailable as e:
        raise RealServerMissing("opensmtpd", str(e))
    with stores() as (backends, routes, check):
        gw = gateway(backends, routes, socket_group=CLIENT_USER)
        with gw:
            with open(OSMTPD_CONTRIB) as f:
                conf = f.read().replace("/run/lmtpgw/lmtp.sock", gw.sock)
            conf = conf.replace('"@example.com" = "%s"' % CLIENT_USER, ", ".join(
                '"@%s.test" = "%s"' % (s, CLIENT_USER) for s in STORES))
            conf = conf.replace('domain "example.com"', "domain { %s }" % ", ".join(
                '"%s.test"' % s for s in STORES))
            assert "example.com" not in re.sub(r"(?m)^#.*$", "", conf), conf
            od = OpenSmtpd("listen on 127.0.0.1 port @PORT@\n" + conf)
            try:
                od.__enter__()
            except debpkg.Unavailable as e:
                raise RealServerMissing("opensmtpd", str(e))
            try:
                content = message("opensmtpd")
                assert od.send(SENDER, RCPTS, content) == {}
                wait(lambda: check(content), "every store")
                od.wait(lambda: od.queue() == [], "an empty queue")
            finally:
                od.stop()


def test_matrix_swaks():
    from test_clients import need
    swaks = need("swaks")
    with stores() as (backends, routes, check):
        gw = gateway(backends, routes)
        with gw:
            content = message("swaks")         # swaks dot-stuffs the file itself
            path = os.path.join(gw.dir, "swaks.eml")
            with open(path, "wb") as f:
                f.write(content[:-2])          # swaks adds the CRLF before the final dot
            p = subprocess.run([swaks, "--protocol", "LMTP", "--pipeline", "--server",
                                "127.0.0.1", "--port", str(gw.port), "--helo", "swaks.test",
                                "--from", SENDER, "--to", ",".join(RCPTS), "--data", path,
                                "--timeout", "30"], capture_output=True, timeout=60 * SLOW)
            out = (p.stdout + p.stderr).decode("utf-8", "replace")
            assert p.returncode == 0, out[-3000:]
            assert out.count("<-  250 2.0.0") == len(RCPTS), out[-3000:]
            check(content)


def test_matrix_smtp_source():
    from test_clients import need
    src = need("smtp-source")
    with stores() as (backends, routes, check):
        gw = gateway(backends, routes)
        with gw:
            for r in RCPTS:
                p = subprocess.run([src, "-L", "-m", "1", "-t", r, "-f", SENDER, "-l", "2048",
                                    "127.0.0.1:%d" % gw.port], capture_output=True,
                                   timeout=60 * SLOW)
                assert p.returncode == 0, (p.stdout, p.stderr)
            wait(lambda: check(None, body_len=2048 + 2), "every store")


def test_interop_doc_names_existing_tests():
    """Every test named in docs/interop.md exists (a cell cannot point at nothing), and every
    matrix cell names a test."""
    import ast
    with open(os.path.join(ROOT, "docs", "interop.md")) as f:
        doc = f.read()
    defined = set()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in os.listdir(here):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(here, name)) as f:
                tree = ast.parse(f.read())
            defined |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", doc))
    assert named, "docs/interop.md names no test"
    missing = sorted(n for n in named if n not in defined)
    assert not missing, "docs/interop.md names tests that do not exist: %s" % missing
    matrix = doc.split("## The matrix")[1].split("\n## ")[0]
    rows = [l for l in matrix.splitlines() if l.startswith("| ") and "---" not in l][1:]
    assert len(rows) == 5, rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert len(cells) == len(STORES) and all(re.fullmatch(r"`test_\w+`", c)
                                                  for c in cells), row
