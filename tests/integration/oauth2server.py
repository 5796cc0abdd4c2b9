"""
oauth2server - start the OAuth2 authorization server of the tests (npm oauth2-mock-server behind
contrib/test-servers/oauth2/server.mjs) over TLS on loopback, a random port.

    with OAuth2Server(ca_dir=dc.dir + "/tls") as az:   # certificate from that test CA (or its own)
        az.token_url                     # https://127.0.0.1:<port>/token
        az.introspect_url, az.introspect_app_url
        az.ca_file                       # PEM of the CA that signed the server certificate
        az.clients                       # {"lmtpgw-app": "app-secret", ...}
        az.refresh_token                 # one refresh token of ("lmtpgw-app", REFRESH_USER)
        az.service_account_file          # a Google-style JSON key (client_email, private_key, ...)
        az.client_cert_file, az.client_key_file   # certificate credentials of CERT_CLIENT_ID
        az.other_cert_file, az.other_key_file     # a certificate not registered anywhere
        az.stats()                       # {"token": {grant: {"ok": n, "failed": m}}, ...}
        az.stats()["tokens"]             # the last 100 access tokens issued
        az.token_requests(grant=None)    # ok + failed token requests (of one grant)
        az.set(mode="down"|"refuse"|"hang"|"ok", lifetime=s, delay_ms=ms, revoke_new=bool,
               rotate_refresh=bool)             # rotate: a used refresh token is revoked
        az.revoke_all()                  # every token issued so far becomes inactive
    # leaving the block stops node by PID and removes the temp dir

Clients: "lmtpgw-app" (secret "app-secret"), granted IMAP.AccessAsApp on the mailboxes of
APP_DOMAIN. Needs node and contrib/test-servers/oauth2/node_modules (setup.sh runs `npm ci`);
raises OAuth2Unavailable otherwise. python3 stdlib + python3-cryptography (service account key).
"""
import http.client
import json
import os
import select
import shutil
import signal
import ssl
import subprocess
import tempfile
import time

import servers
from dovecot import free_port, make_ca, make_server_cert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER_DIR = os.path.join(ROOT, "contrib", "test-servers", "oauth2")

CLIENT_ID = "lmtpgw-app"
CLIENT_SECRET = "app-secret-0123456789"
CERT_CLIENT_ID = "lmtpgw-cert-app"        # authenticates with a certificate (client assertion)
APP_DOMAIN = "example.test"
REFRESH_USER = "alice@example.test"
SERVICE_ACCOUNT = "lmtpgw@project.iam.example"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_live = servers.Running()
kill_all = _live.stop_all


class OAuth2Unavailable(Exception):
    """node or the npm modules are missing."""


def _service_account_key(path, client_email, token_uri):
    """Write a Google-style service account JSON key; return the public key PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    doc = {"type": "service_account", "project_id": "lmtpgw-test",
           "private_key_id": "k1", "private_key": private_pem, "client_email": client_email,
           "client_id": "1234567890", "token_uri": token_uri}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    return public_pem


def client_certificate(dirname, name):
    """A self-signed RSA certificate and its key (mode 600) as Azure's "certificates &
    secrets" takes them: (certificate path, key path, certificate PEM)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_path = os.path.join(dirname, name + ".crt")
    key_path = os.path.join(dirname, name + ".key")
    with open(cert_path, "w") as f:
        f.write(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return cert_path, key_path, cert_pem


class OAuth2Server:
    def __init__(self, ca_dir=None, ca_name="test", lifetime=3600, port=None):
        self.ca_dir = ca_dir          # a directory holding <ca_name>-ca.{crt,key} (dovecot's tls/)
        self.ca_name = ca_name
        self.lifetime = lifetime
        self.port = port
        self.dir = None
        self.proc = None
        self.clients = {CLIENT_ID: CLIENT_SECRET}
        self.refresh_token = "rt-" + os.urandom(12).hex()

    @property
    def base(self):
        return "https://127.0.0.1:%d" % self.port

    @property
    def token_url(self):
        return self.base + "/token"

    @property
    def introspect_url(self):
        return self.base + "/introspect"

    @property
    def introspect_app_url(self):
        return self.base + "/introspect/app"

    def start(self):
        node = shutil.which("node") or shutil.which("nodejs")
        if node is None:
            raise OAuth2Unavailable("node is not installed (apt-get install nodejs)")
        if not os.path.isdir(os.path.join(SERVER_DIR, "node_modules", "oauth2-mock-server")):
            raise OAuth2Unavailable("npm modules missing: sh contrib/test-servers/setup.sh")
        self.dir = tempfile.mkdtemp(prefix="lmtpgw-oauth2-")
        tls = os.path.join(self.dir, "tls")
        os.mkdir(tls)
        if self.ca_dir is None:
            make_ca(tls, self.ca_name, "lmtpgw oauth2 test CA")
        else:
            for ext in ("crt", "key"):
                shutil.copy(os.path.join(self.ca_dir, "%s-ca.%s" % (self.ca_name, ext)), tls)
        make_server_cert(tls, self.ca_name, "DNS:localhost,IP:127.0.0.1", out="oauth2")
        self.ca_file = os.path.join(tls, "%s-ca.crt" % self.ca_name)
        if self.port is None:
            self.port = free_port()
        self.service_account_file = os.path.join(self.dir, "service-account.json")
        public_pem = _service_account_key(self.service_account_file, SERVICE_ACCOUNT,
                                          self.token_url)
        # certificate credentials of CERT_CLIENT_ID (registered), and one never registered
        self.client_cert_file, self.client_key_file, cert_pem = \
            client_certificate(self.dir, "client-cert")
        self.other_cert_file, self.other_key_file, _ = client_certificate(self.dir, "other-cert")
        config = {"clients": self.clients, "lifetime": self.lifetime,
                  "refresh_tokens": {self.refresh_token: {"client_id": CLIENT_ID,
                                                          "user": REFRESH_USER}},
                  "service_accounts": {SERVICE_ACCOUNT: {"public_key": public_pem,
                                                         "key_id": "k1"}},
                  "certificate_clients": {CERT_CLIENT_ID: cert_pem},
                  "app_domains": {CLIENT_ID: APP_DOMAIN, CERT_CLIENT_ID: APP_DOMAIN}}
        self.config_file = os.path.join(self.dir, "config.json")
        with open(self.config_file, "w") as f:
            json.dump(config, f)
        self._launch(node)
        _live.append(self)
        return self

    def _launch(self, node=None):
        node = node or shutil.which("node") or shutil.which("nodejs")
        self.log_path = os.path.join(self.dir, "server.log")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [node, os.path.join(SERVER_DIR, "server.mjs"), "--port", str(self.port),
             "--cert", os.path.join(self.dir, "tls", "oauth2.crt"),
             "--key", os.path.join(self.dir, "tls", "oauth2.key"), "--config", self.config_file],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True)
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                if line.startswith(b"listening"):
                    return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise OAuth2Unavailable("oauth2 server did not start: %r %s" % (line, self.log()))

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self):
        """Stop the process only (the port and the state directory stay): the endpoint is down."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc.stdout.close()
            self.proc.stdin.close()
            self._log.close()
            self.proc = None

    def restart(self):
        """After kill(): the same port, certificate, clients and keys (new signing key)."""
        self._launch()

    def stop(self):
        self.kill()
        _live.discard(self)
        if self.dir and os.environ.get("LMTPGW_KEEP_TMP") is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # --- test controls ---
    def _request(self, method, path, body=None):
        ctx = ssl.create_default_context(cafile=self.ca_file)
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)
        try:
            c.request(method, path, body=None if body is None else json.dumps(body),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return json.loads(r.read() or b"{}")
        finally:
            c.close()

    def stats(self):
        return self._request("GET", "/_test/stats")

    def token_requests(self, grant=None, result=None):
        counts = self.stats()["token"]
        total = 0
        for g, c in counts.items():
            if grant is None or g == grant:
                total += sum(v for k, v in c.items() if result is None or k == result)
        return total

    def set(self, **kw):
        return self._request("POST", "/_test/set", kw)

    def revoke_all(self):
        return self._request("POST", "/_test/revoke", {})

    def reset_counts(self):
        return self._request("POST", "/_test/reset", {})
