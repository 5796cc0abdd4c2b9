"""The s3 backend against npm s3rver behind our strict front (tests/integration/s3server.py).

The front verifies SigV4 with npm aws4 (independent of our signer), the payload hash, the
checksums and If-None-Match before s3rver stores anything; objects are then read back from
s3rver directly and compared byte for byte with what was sent over LMTP.
"""
import hashlib
import json
import os
import socket
import threading
import time

from harness import Lmtpgw, Skip, conf_value, dot_stuff, expect, free_port, split_trace

from s3server import S3Server, S3Unavailable

DOMAIN = "example.test"
SENDER = "sender@remote.test"


# --- helpers ---------------------------------------------------------------------------------

def s3server(**kw):
    s = S3Server(**kw)
    try:
        return s.start()
    except S3Unavailable as e:
        raise Skip(str(e))


def creds_file(s3, secret=None, mode=0o600):
    path = os.path.join(s3.dir, "creds-%d" % time.monotonic_ns())
    with open(path, "w") as f:
        f.write("%s\n%s\n" % (s3.access_key, s3.secret_key if secret is None else secret))
    os.chmod(path, mode)
    return path


def s3_backend(s3, name="archive", secret=None, endpoint=None, **opts):
    settings = {"driver": "s3", "endpoint": endpoint or s3.endpoint, "allow_http": True,
                "bucket": s3.bucket, "credentials_file": creds_file(s3, secret),
                "timeout": "20s", "connect_timeout": "2s"}
    settings.update(opts)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v))
                                          for k, v in settings.items()))


def gateway(s3, routes=None, extra="", **opts):
    return Lmtpgw(backends=s3_backend(s3, **opts) + extra,
                  routes=routes or [("*@" + DOMAIN, ["archive"])])


def transaction(c, rcpts, content, sender=SENDER):
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


def objects(s3):
    keys = s3.keys()
    return [k for k in keys if not k.endswith(".json")], [k for k in keys if k.endswith(".json")]


def no_secret_in_log(gw, s3):
    log = gw.log()
    assert s3.secret_key not in log, "the secret key appears in lmtpgw's log"


# --- tests -----------------------------------------------------------------------------------

def test_object_is_the_stored_message_and_manifest_is_complete():
    with s3server() as s3, gateway(s3) as gw:
        content = message("first", b"line one\r\n.dot line\r\n\xc3\xa9 8bit\r\n")
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<%s> BODY=8BITMIME RET=HDRS ENVID=env42" % SENDER), 250)
            expect(c.cmd("RCPT TO:<alice@%s> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@%s"
                         % (DOMAIN, DOMAIN)), 250)
            expect(c.cmd("RCPT TO:<bcc-bob@%s>" % DOMAIN), 250)
            expect(c.cmd("DATA"), 354)
            c.send(dot_stuff(content) + b".\r\n")
            for r in c.replies(2):
                expect(r, 250, "2.0.0")
        objs, manifests = objects(s3)
        assert len(objs) == 1 and manifests == [objs[0] + ".json"], s3.keys()
        key = objs[0]
        sha = hashlib.sha256(content).hexdigest()
        assert key.endswith("/%s.eml" % sha), key
        stored = s3.get(key)
        split_trace(stored, content)
        m = json.loads(s3.get(manifests[0]))
        assert m["sha256"] == sha and m["size"] == len(content), m
        assert m["mail_from"]["address"] == SENDER and m["mail_from"]["envid"] == "env42", m
        assert m["mail_from"]["ret"] == "HDRS" and m["mail_from"]["body"] == "8BITMIME", m
        addrs = [r["address"] for r in m["recipients"]]
        assert addrs == ["alice@%s" % DOMAIN, "bcc-bob@%s" % DOMAIN], m
        assert m["recipients"][0]["orcpt"] == "rfc822;alice@%s" % DOMAIN, m
        assert m["recipients"][0]["notify"] == ["SUCCESS", "FAILURE"], m
        assert m["client"]["lhlo"] == "client.test", m
        assert m["object"]["key"] == key and m["object"]["size"] == len(stored), m
        assert m["object"]["sha256"] == hashlib.sha256(stored).hexdigest(), m
        h = s3.head(key)
        assert h.get("x-amz-meta-sender") == SENDER, h
        assert h.get("x-amz-meta-recipient-count") == "2", h
        assert h.get("x-amz-meta-sha256") == sha, h
        # the front saw a signed, checksummed, conditional PUT
        puts = [r for r in s3.requests() if r["method"] == "PUT" and r["url"].endswith(".eml")]
        assert puts and puts[0]["headers"].get("if-none-match") == "*", puts
        assert puts[0]["headers"].get("x-amz-checksum-sha256"), puts
        lines = gw.grep(r"event=delivery .*rcpt=<alice@")
        assert lines and "key=" in lines[0] and "etag=" in lines[0], lines
        no_secret_in_log(gw, s3)
