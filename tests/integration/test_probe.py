"""
`lmtpgw check --probe` reaches every backend; `lmtpgw route` explains where each backend would
deliver an address.
"""
import os
import subprocess

from harness import Lmtpgw, binary, cstr, free_port
from dovecot import DovecotServer


def run(conf, *args):
    return subprocess.run([binary(), "-c", conf] + list(args), capture_output=True, text=True,
                          timeout=60)


def imap_backend(url, dc_or_none, pwfile, extra=""):
    ca = 'ca_file = %s; ' % cstr(dc_or_none.ca_file) if dc_or_none else ""
    return ('inbox: { driver = "imap"; url = %s; %slogin = "master"; password_file = %s; '
            'folder_from_detail = true; detail_folder = "INBOX.%%{detail}"; %s };'
            % (cstr(url), ca, cstr(pwfile), extra))


def private_file(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def test_probe_reports_each_backend():
    with DovecotServer() as dc:
        gw = Lmtpgw(routes=[("*@example.test", ["inbox", "local"])])
        pw = private_file(os.path.join(gw.dir, "pw"), dc.master[1] + "\n")
        gw.backends = imap_backend("imap://127.0.0.1:%d" % dc.imap_port, dc, pw)
        gw.write_config()
        p = run(gw.conf_path, "check", "--probe")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "ok   inbox (imap): 127.0.0.1:%d reachable, TLS verified" % dc.imap_port in p.stdout, p.stdout
        assert "ok   local (maildir):" in p.stdout, p.stdout
        # The same backend against a port where nothing listens: FAIL and exit 1.
        gw.backends = imap_backend("imap://127.0.0.1:%d" % free_port(), dc, pw)
        gw.write_config()
        p = run(gw.conf_path, "check", "--probe")
        assert p.returncode == 1, p.stdout + p.stderr
        assert "FAIL inbox (imap): 451 4.4.1" in p.stdout, p.stdout
        # An untrusted certificate fails the probe too (and no credentials are sent).
        gw.backends = imap_backend("imaps://127.0.0.1:%d" % dc.imaps_port, None, pw,
                                   'ca_file = %s;' % cstr(gw.dir + "/none.pem"))
        gw.write_config()
        p = run(gw.conf_path, "check")
        assert p.returncode != 0  # the CA file does not exist: refused at load


def test_route_explains_targets():
    gw = Lmtpgw(routes=[("*@example.test", ["inbox", "local"]), ("*@other.test", ["local"])])
    pw = private_file(os.path.join(gw.dir, "pw"), "x\n")
    gw.backends = imap_backend("imaps://127.0.0.1:%d" % free_port(), None, pw)
    gw.write_config()
    p = run(gw.conf_path, "route", "Bob+Lists@Example.TEST", "x@nowhere.test")
    assert p.returncode == 1, p.stdout  # one address has no route
    out = p.stdout
    assert 'bob+lists@example.test: route #1 "*@example.test" local="bob" detail="lists"' in out, out
    assert "-> inbox (driver imap): imap 127.0.0.1:" in out and "user=bob folder=INBOX.lists login=master" in out, out
    assert "-> local (driver maildir): maildir %s/mail/example.test/bob/new/" % gw.dir in out, out
    assert "x@nowhere.test: no route (550 5.1.1 at RCPT)" in out, out
    p = run(gw.conf_path, "check", "--bogus")
    assert p.returncode == 64


def test_webhook_probe_and_route():
    from webhook_receiver import Receiver
    with Receiver() as r:
        gw = Lmtpgw(routes=[("*@example.test", ["hook"])])
        gw.backends = ('hook: { driver = "webhook"; url = %s; allow_http = true; };'
                       % cstr(r.url + "/%{domain}/%{local}"))
        gw.write_config()
        p = run(gw.conf_path, "check", "--probe")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "ok   hook (webhook): %s/ reachable (HEAD answered" % r.url in p.stdout, p.stdout
        p = run(gw.conf_path, "route", "Bob@Example.test")
        assert "-> hook (driver webhook): POST %s/example.test/bob (format json, mode message)" % r.url in p.stdout, p.stdout
    # The receiver is gone: the probe fails with the transport status.
    p = run(gw.conf_path, "check", "--probe")
    assert p.returncode == 1 and "FAIL hook (webhook): 451 4.4.1" in p.stdout, p.stdout


def test_s3_probe_and_route():
    from test_s3 import s3server, s3_backend
    s3 = s3server()
    try:
        gw = Lmtpgw(backends=s3_backend(s3), routes=[("*@example.test", ["archive"])])
        p = run(gw.conf_path, "check", "--probe")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "ok   archive (s3): bucket %s at " % s3.bucket in p.stdout, p.stdout
        p = run(gw.conf_path, "route", "bob@example.test")
        assert "-> archive (driver s3): s3://%s/" % s3.bucket in p.stdout, p.stdout
        assert "%3Csha256%3E" in p.stdout or "<sha256>" in p.stdout, p.stdout
        # A wrong secret: the signed HEAD is refused.
        gw.backends = s3_backend(s3, secret="wrong-secret-0123456789")
        gw.write_config()
        p = run(gw.conf_path, "check", "--probe")
        assert p.returncode == 1 and "FAIL archive (s3): bucket %s: HTTP 403 -> 451 4.7.0" % s3.bucket in p.stdout, p.stdout
    finally:
        s3.stop()
