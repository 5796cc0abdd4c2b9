"""
webhook_receiver - a real HTTP(S) receiver for the webhook backend tests (python3 stdlib only).

    with Receiver(secrets=[b"key"]) as r:          # 127.0.0.1, random port, threaded, HTTP/1.1
        r.url                                        # "http://127.0.0.1:PORT/hook"
        r.rule = lambda req: {"status": 200}         # how to answer (see Receiver.answer)
        ...
        r.requests                                   # every request received, in order

Each recorded request is a Request: method, path, headers (a case-insensitive Message), body
(bytes), and `signature_ok` — the Standard Webhooks signature checked here with hmac/hashlib,
independently of lmtpgw's code: HMAC-SHA256(key, id "." timestamp "." body), base64, against
every "v1,..." entry of webhook-signature, for every secret the receiver knows (None when it
knows no secret). `sig_matches` lists which of the receiver's secrets matched.

Ed25519 (Standard Webhooks "v1a,"): Receiver(public_keys=[...]) with Ed25519 public keys (PEM
bytes or `cryptography` key objects) checks every "v1a,..." entry with Python's `cryptography`
package (OpenSSL underneath, but none of lmtpgw's code): `ed_sig_matches` lists which public
keys verified a signature over id "." timestamp "." body, `ed_signature_ok` whether any did
(None when the receiver knows no public key). `ed25519_public_key(private_pem_path)` derives
the public key of a private key file.

A rule (called once per request, with the whole body) returns a dict:
    status        HTTP status (default 200)
    json          an object sent as application/json
    text          a string sent as text/plain
    body, content_type   raw bytes and their type
    headers       extra response headers {name: value}
    delay         seconds to sleep before answering (after the body was read)
An early_rule (called with the headers only, body b"") may return instead:
    reset_after   read this many body bytes, then reset the connection (RST, no answer)
    refuse_early  answer (status etc. as above) before reading the body, and close

TLS: Receiver(tls=TestCA(dir)) serves https with a certificate for 127.0.0.1/localhost signed
by a throw-away CA made with the openssl CLI (TestCA.ca_file is what lmtpgw's ca_file needs);
client_ca= requires a client certificate signed by that CA (mutual TLS).
"""
import base64
import email.parser
import hashlib
import hmac
import http.server
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def decode_secret(text):
    """The key bytes of a Standard Webhooks secret: "whsec_" + base64, or the raw text."""
    text = text.strip()
    if text.startswith("whsec_"):
        return base64.b64decode(text[6:])
    return text.encode()


def sign(key, msg_id, timestamp, body):
    mac = hmac.new(key, ("%s.%s." % (msg_id, timestamp)).encode() + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def ed25519_public_key(private_pem_path):
    """The Ed25519 public key of a PEM private key file (with `cryptography`)."""
    with open(private_pem_path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None).public_key()


def _ed25519_key(k):
    if isinstance(k, Ed25519PublicKey):
        return k
    key = serialization.load_pem_public_key(k)
    assert isinstance(key, Ed25519PublicKey), key
    return key


class Request:
    def __init__(self, method, path, headers, body, keys, public_keys=()):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.time = time.time()
        self.sig_matches = []
        self.signature_ok = None
        if keys:
            self.signature_ok = False
            sigs = (headers.get("webhook-signature") or "").split()
            msg_id = headers.get("webhook-id") or ""
            ts = headers.get("webhook-timestamp") or ""
            for i, key in enumerate(keys):
                expected = "v1," + sign(key, msg_id, ts, body)
                if any(hmac.compare_digest(expected, s) for s in sigs):
                    self.sig_matches.append(i)
            self.signature_ok = bool(self.sig_matches)
        self.ed_sig_matches = []
        self.ed_signature_ok = None
        if public_keys:
            sigs = [s[4:] for s in (headers.get("webhook-signature") or "").split()
                    if s.startswith("v1a,")]
            signed = ("%s.%s." % (headers.get("webhook-id") or "",
                                  headers.get("webhook-timestamp") or "")).encode() + body
            for i, key in enumerate(public_keys):
                for s in sigs:
                    try:
                        key.verify(base64.b64decode(s), signed)
                    except (InvalidSignature, ValueError):
                        continue
                    self.ed_sig_matches.append(i)
                    break
            self.ed_signature_ok = bool(self.ed_sig_matches)

    def json(self):
        return json.loads(self.body)

    def multipart(self):
        """{name: (headers, bytes)} of a multipart/form-data body (strict about the framing)."""
        ctype = self.headers.get("content-type", "")
        assert ctype.startswith("multipart/form-data; boundary="), ctype
        boundary = ctype.split("boundary=", 1)[1].encode()
        body = self.body
        assert body.startswith(b"--" + boundary + b"\r\n"), body[:100]
        assert body.endswith(b"\r\n--" + boundary + b"--\r\n"), body[-100:]
        inner = body[len(boundary) + 4:-(len(boundary) + 8)]
        parts = {}
        for chunk in inner.split(b"\r\n--" + boundary + b"\r\n"):
            head, _, content = chunk.partition(b"\r\n\r\n")
            h = email.parser.BytesParser().parsebytes(head + b"\r\n\r\n", headersonly=True)
            disp = h.get("content-disposition", "")
            name = disp.split('name="', 1)[1].split('"', 1)[0]
            parts[name] = (h, content)
        return parts


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "webhook-receiver"

    def log_message(self, fmt, *args):   # quiet
        pass

    def _early(self):
        if not hasattr(self, "_early_answer"):
            recv = self.server.receiver
            self._early_answer = {}
            if recv.early_rule is not None:
                self._early_answer = recv.early_rule(
                    Request(self.command, self.path, self.headers, b"", [])) or {}
        return self._early_answer

    def handle_expect_100(self):
        # A receiver that refuses on the headers answers instead of "100 Continue".
        rule = self._early()
        if rule.get("refuse_early"):
            self.server.receiver.refused += 1
            self._respond(rule, close=True)
            return False
        return super().handle_expect_100()

    def do_POST(self):
        recv = self.server.receiver
        length = int(self.headers.get("content-length") or 0)
        rule = self._early()
        if rule.get("refuse_early"):
            recv.refused += 1
            self._respond(rule, close=True)
            return
        if "reset_after" in rule:
            got = 0
            while got < min(rule["reset_after"], length):
                chunk = self.rfile.read(min(65536, rule["reset_after"] - got))
                if not chunk:
                    break
                got += len(chunk)
            recv.resets += 1
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        body = bytearray()
        while len(body) < length:
            chunk = self.rfile.read(min(1 << 20, length - len(body)))
            if not chunk:
                break
            body += chunk
        req = Request(self.command, self.path, self.headers, bytes(body), recv.keys,
                      recv.public_keys)
        with recv.lock:
            recv.requests.append(req)
        rule = recv.answer(req) or {}
        if rule.get("delay"):
            time.sleep(rule["delay"])
        try:
            self._respond(rule)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _respond(self, rule, close=False):
        status = rule.get("status", 200)
        headers = dict(rule.get("headers") or {})
        if "json" in rule:
            data = json.dumps(rule["json"]).encode()
            ctype = "application/json"
        elif "text" in rule:
            data = rule["text"].encode()
            ctype = "text/plain; charset=utf-8"
        else:
            data = rule.get("body", b"")
            ctype = rule.get("content_type")
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):   # TLS refusals etc.: recorded, not printed
        self.receiver.errors += 1


class TestCA:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost, a client certificate and
    an unrelated self-signed certificate, made with the openssl CLI in dir."""

    def __init__(self, dir):
        self.dir = dir
        os.makedirs(dir, exist_ok=True)
        p = lambda n: os.path.join(dir, n)
        self.ca_file, self.ca_key = p("ca.pem"), p("ca.key")
        self.cert, self.key = p("server.pem"), p("server.key")
        self.client_cert, self.client_key = p("client.pem"), p("client.key")
        self.rogue_cert, self.rogue_key = p("rogue.pem"), p("rogue.key")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *a: subprocess.run(["openssl"] + list(a), check=True, capture_output=True)
        run("req", "-x509", *ec, "-keyout", self.ca_key, "-out", self.ca_file, "-days", "2",
            "-subj", "/CN=lmtpgw test CA")
        ext = p("san.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        for cert, key, cn in ((self.cert, self.key, "localhost"),
                              (self.client_cert, self.client_key, "lmtpgw client")):
            csr = cert + ".csr"
            run("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=" + cn)
            run("x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", self.ca_key,
                "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
            os.chmod(key, 0o600)
        run("req", "-x509", *ec, "-keyout", self.rogue_key, "-out", self.rogue_cert, "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")


class Receiver:
    def __init__(self, secrets=(), tls=None, rogue=False, client_ca=False, rule=None,
                 early_rule=None, public_keys=()):
        self.keys = [decode_secret(s) if isinstance(s, str) else s for s in secrets]
        self.public_keys = [_ed25519_key(k) for k in public_keys]
        self.requests = []
        self.lock = threading.Lock()
        self.rule = rule
        self.early_rule = early_rule
        self.resets = 0
        self.refused = 0
        self.errors = 0
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.receiver = self
        self.port = self.server.server_address[1]
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            if rogue:
                ctx.load_cert_chain(tls.rogue_cert, tls.rogue_key)
            else:
                ctx.load_cert_chain(tls.cert, tls.key)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(tls.ca_file)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = None

    @property
    def url(self):
        return "%s://127.0.0.1:%d/hook" % (self.scheme, self.port)

    @property
    def base(self):
        """scheme://host:port, for other paths (a verify_url)."""
        return "%s://127.0.0.1:%d" % (self.scheme, self.port)

    def paths(self, path):
        """The requests received on path (e.g. "/verify"), in order."""
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def answer(self, req):
        if self.rule is None:
            return {"status": 200}
        return self.rule(req)

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def wait_requests(self, n, timeout=10.0):
        deadline = time.time() + timeout
        while len(self.requests) < n:
            if time.time() > deadline:
                raise AssertionError("receiver got %d requests, expected %d" % (len(self.requests), n))
            time.sleep(0.02)
        return self.requests
