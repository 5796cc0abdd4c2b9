"""
TLS on the LMTP side: STARTTLS (RFC 3207) and lmtps: listeners with certificates made by the
openssl CLI, verified by Python's ssl module; tls_required; client certificates; the client
allow-list; refusing to serve as root.
"""
import os
import socket
import ssl
import subprocess
import tempfile

from harness import Lmtpgw, Client, Skip, expect, free_port, binary


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_pki():
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in a temp dir."""
    d = tempfile.mkdtemp(prefix="lmtpgw-tls-")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=lmtpgw test CA",
            cwd=d)
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:mta.test")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name + ".test",
                cwd=d)
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\n" % san)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", name + ".ext",
                cwd=d)
        os.chmod(os.path.join(d, name + ".key"), 0o600)
    return d


def tls_config(pki, **extra):
    cfg = {"tls_cert_file": os.path.join(pki, "server.crt"),
           "tls_key_file": os.path.join(pki, "server.key")}
    cfg.update(extra)
    return cfg


def client_context(pki, cert=False):
    ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
    if cert:
        ctx.load_cert_chain(os.path.join(pki, "client.crt"), os.path.join(pki, "client.key"))
    return ctx


def starttls(c, pki, cert=False):
    expect(c.cmd("STARTTLS"), 220, "2.0.0")
    c.sock = client_context(pki, cert).wrap_socket(c.sock, server_hostname="127.0.0.1")
    c.buf = b""


def deliver(c, rcpt="alice@example.test"):
    expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: tls\r\n\r\nsecret stuff\r\n.\r\n")
    expect(c.reply(), 250, "2.0.0")


def test_starttls_upgrades_and_starts_over():
    pki = make_pki()
    with Lmtpgw(config=tls_config(pki)) as gw:
        with gw.client() as c:
            lhlo = c.cmd("LHLO mta.test")
            assert "STARTTLS" in str(lhlo), lhlo
            starttls(c, pki)
            assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
            # RFC 3207: after TLS the client must send LHLO again; STARTTLS is not offered twice.
            expect(c.cmd("MAIL FROM:<s@example.test>"), 503, "5.5.1")
            lhlo = c.cmd("LHLO mta.test")
            assert "STARTTLS" not in str(lhlo), lhlo
            deliver(c)
            expect(c.cmd("STARTTLS"), 503, "5.5.1")
            # The last reply must come through the TLS layer before the close.
            expect(c.cmd("QUIT"), 221, "2.0.0")
        stored = open(gw.messages("alice")[0], "rb").read()
        assert b"with LMTPS id" in stored, stored[:400]
        assert gw.grep(r"event=tls protocol=\"TLSv1\.[23] "), gw.log()


def test_starttls_drops_pipelined_plaintext():
    pki = make_pki()
    with Lmtpgw(config=tls_config(pki)) as gw:
        with gw.client() as c:
            c.lhlo()
            # A man in the middle appends a command to STARTTLS: it must not be executed.
            c.send(b"STARTTLS\r\nMAIL FROM:<injected@example.test>\r\n")
            expect(c.reply(), 220, "2.0.0")
            c.sock = client_context(pki).wrap_socket(c.sock, server_hostname="127.0.0.1")
            c.buf = b""
            c.lhlo()
            # Had the injected MAIL run, this would be a nested MAIL (503).
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RSET"), 250, "2.0.0")


def test_tls_required_before_mail():
    pki = make_pki()
    with Lmtpgw(config=tls_config(pki, tls_required=True)) as gw:
        with gw.client() as c:
            c.lhlo()
            expect(c.cmd("MAIL FROM:<s@example.test>"), 530, "5.7.0")
            starttls(c, pki)
            c.lhlo()
            deliver(c)


def test_lmtps_listener_and_client_certificates():
    pki = make_pki()
    plain, tls_port = free_port(), free_port()
    cfg = tls_config(pki, tls_client_ca_file=os.path.join(pki, "ca.crt"),
                     tls_require_client_cert=True,
                     listen=["127.0.0.1:%d" % plain, "lmtps:127.0.0.1:%d" % tls_port])
    with Lmtpgw(config=cfg) as gw:
        # With a client certificate: TLS from the first byte, then a normal session.
        raw = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
        s = client_context(pki, cert=True).wrap_socket(raw, server_hostname="127.0.0.1")
        c = Client(s)
        c.read_greeting()
        c.lhlo()
        deliver(c)
        c.close()
        assert gw.grep(r"client_cn=client\.test"), gw.log()
        # Without one: the handshake is refused.
        raw = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
        try:
            s = client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
            data = s.recv(100)  # TLS 1.3 reports the refusal on first read
            assert not data.startswith(b"220"), "served a client without a certificate"
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass
        finally:
            raw.close()


def test_allow_clients_refuses_other_networks():
    # The harness's start probe is refused too (it only waits for the port); check directly.
    gw = Lmtpgw(config={"allow_clients": ["10.0.0.0/8", "192.0.2.1"]})
    try:
        gw.start()
    except AssertionError:
        pass
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    data = s.recv(200)
    s.close()
    assert data.startswith(b"554 5.7.1"), data
    assert gw.grep(r"event=connection_refused client=\S+ reason=allow_clients"), gw.log()
    gw.stop(expect_clean=False)
    with Lmtpgw(config={"allow_clients": ["127.0.0.0/8", "::1"]}) as ok:
        with ok.session() as c:
            deliver(c)


def test_refuses_to_serve_as_root_without_user():
    if os.geteuid() != 0:
        raise Skip("only as root: lmtpgw refuses root, and this run is not root")
    gw = Lmtpgw()
    text = open(gw.conf_path).read().replace("run_as_root = true;", "")
    with open(gw.conf_path, "w") as f:
        f.write(text)
    p = subprocess.run([binary(), "-f", "-c", gw.conf_path, "--listen", "127.0.0.1:%d" % free_port()],
                       capture_output=True, timeout=20)
    assert p.returncode != 0
    assert b"refusing to serve as root" in p.stderr, p.stderr


def test_bad_tls_settings_refused_at_load():
    pki = make_pki()
    os.chmod(os.path.join(pki, "server.key"), 0o644)
    gw = Lmtpgw(config=tls_config(pki))
    p = subprocess.run([binary(), "-c", gw.conf_path, "check"], capture_output=True, timeout=20)
    assert p.returncode != 0 and b"must not be readable by others" in p.stderr, p.stderr
    gw2 = Lmtpgw(config={"tls_required": True})
    p = subprocess.run([binary(), "-c", gw2.conf_path, "check"], capture_output=True, timeout=20)
    assert p.returncode != 0 and b"tls_required" in p.stderr, p.stderr
