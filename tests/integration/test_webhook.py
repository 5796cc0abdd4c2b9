"""The webhook backend against a real HTTP(S) receiver of ours (webhook_receiver.py): every body
format round-trips the message bytes and the whole envelope, signatures verify independently,
answers map to LMTP replies per design.md, transport failures are 4xx, big messages stream with
bounded memory, TLS verifies against a test CA."""
import base64
import hashlib
import json
import os
import socket
import tempfile
import threading
import time

from harness import MEMORY_FIGURES_MEAN_SOMETHING, VALGRIND, Lmtpgw, conf_value, expect, free_port, send_message, split_trace
from webhook_receiver import Receiver, TestCA

SECRET1 = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET2 = "whsec_" + base64.b64encode(b"the next secret, rotated in").decode()
CONTENT = b"From: s@example.test\r\nTo: alice@example.test\r\nSubject: hook\r\n\r\nbody line\r\n.dot\r\n"


def secret_file(dir, name, text, mode=0o600):
    path = os.path.join(dir, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


def backend(url, name="hook", **kw):
    settings = {"driver": "webhook", "url": url, "allow_http": url.startswith("http:"),
                "timeout": 10}
    settings.update(kw)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v))
                                           for k, v in settings.items()))


def gateway(recv_url, routes=None, config=None, **kw):
    return Lmtpgw(backends=backend(recv_url, **kw), config=config,
                  routes=routes or [("*@example.test", ["hook"])])


def deliver(gw, rcpts, content=CONTENT, sender="s@example.test"):
    with gw.session() as c:
        return send_message(c, sender, rcpts, content)


def check_common(req, rcpts, secrets_known=True):
    h = req.headers
    assert req.method == "POST" and req.path == "/hook", (req.method, req.path)
    assert h["webhook-id"].startswith("msg_") and len(h["webhook-id"]) == 68, h["webhook-id"]
    assert h["Idempotency-Key"] == h["webhook-id"]
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 60
    if secrets_known:
        assert req.signature_ok, "signature did not verify: %s" % h.get("webhook-signature")
    assert h["X-Lmtpgw-Recipients"].split(", ") == rcpts, h["X-Lmtpgw-Recipients"]


def check_envelope(env, rcpts_all, targets):
    assert env["version"] == 1
    assert env["mail_from"]["address"] == "s@example.test", env
    assert [r["address"] for r in env["recipients"]] == rcpts_all, env["recipients"]
    assert env["targets"] == targets, env["targets"]
    assert env["size"] > 0 and len(env["sha256"]) == 64
    assert env["client"]["address"] == "127.0.0.1" and env["client"]["lhlo"] == "client.test"


# --- formats ---------------------------------------------------------------------------------

def test_raw_round_trip():
    d = tempfile.mkdtemp(prefix="hook-")
    with Receiver(secrets=[SECRET1]) as r:
        s1 = secret_file(d, "s1", SECRET1)
        with gateway(r.url, format="raw", secret_files=[s1]) as gw:
            rcpts = ["alice@example.test", "bcc-only@example.test"]
            for rep in deliver(gw, rcpts):
                expect(rep, 250, "2.0.0")
        req = r.wait_requests(1)[0]
        assert len(r.requests) == 1, "batch mode: one request for both recipients"
        check_common(req, rcpts)
        assert req.headers["Content-Type"] == "message/rfc822"
        assert req.headers["X-Lmtpgw-Sender"] == "s@example.test"
        assert req.headers["X-Lmtpgw-Sha256"] == hashlib.sha256(CONTENT).hexdigest()
        assert int(req.headers["Content-Length"]) == len(req.body)
        split_trace(req.body, CONTENT)


def test_json_round_trip_with_bcc_and_envelope():
    with Receiver() as r:
        with gateway(r.url, format="json") as gw:
            rcpts = ["alice@example.test", "hidden@example.test"]
            with gw.session() as c:
                expect(c.cmd("MAIL FROM:<s@example.test> BODY=8BITMIME ENVID=abc"), 250)
                expect(c.cmd("RCPT TO:<alice@example.test> NOTIFY=FAILURE ORCPT=rfc822;alice@example.test"), 250)
                expect(c.cmd("RCPT TO:<hidden@example.test>"), 250)
                expect(c.cmd("DATA"), 354)
                c.send(CONTENT.replace(b"\r\n.", b"\r\n..") + b".\r\n")
                for rep in c.replies(2):
                    expect(rep, 250, "2.0.0")
        req = r.wait_requests(1)[0]
        check_common(req, rcpts, secrets_known=False)
        assert "webhook-signature" not in req.headers
        assert req.headers["Content-Type"] == "application/json"
        j = req.json()
        check_envelope(j["envelope"], rcpts, rcpts)
        assert j["envelope"]["mail_from"]["body"] == "8BITMIME"
        assert j["envelope"]["mail_from"]["envid"] == "abc"
        assert j["envelope"]["recipients"][0]["orcpt"] == "rfc822;alice@example.test"
        assert j["envelope"]["recipients"][0]["notify"] == ["FAILURE"]
        split_trace(base64.b64decode(j["message"]), CONTENT)


def test_multipart_round_trip():
    with Receiver(secrets=[SECRET1]) as r:
        d = tempfile.mkdtemp(prefix="hook-")
        with gateway(r.url, format="multipart", secret_files=[secret_file(d, "s", SECRET1)]) as gw:
            rcpts = ["alice@example.test", "bob@example.test"]
            for rep in deliver(gw, rcpts):
                expect(rep, 250, "2.0.0")
        req = r.wait_requests(1)[0]
        check_common(req, rcpts)
        parts = req.multipart()
        assert set(parts) == {"envelope", "message"}, parts.keys()
        h, env = parts["envelope"]
        assert h["content-type"] == "application/json"
        check_envelope(json.loads(env), rcpts, rcpts)
        h, msg = parts["message"]
        assert h["content-type"] == "message/rfc822"
        assert 'filename="message.eml"' in h["content-disposition"]
        split_trace(msg, CONTENT)


PARSED = (
    b"From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: =?ISO-8859-1?Q?R=E9sum=E9?= and \xc3\xa9t\xc3\xa9\r\n"
    b"X-Raw-Latin1: caf\xe9\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"OUTER\"\r\n"
    b"\r\n"
    b"--OUTER\r\n"
    b"Content-Type: multipart/alternative; boundary=\"ALT\"\r\n"
    b"\r\n"
    b"--ALT\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=FC=DFe\r\n"
    b"--ALT\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"<p>Gr\xc3\xbc\xc3\x9fe</p>\r\n"
    b"--ALT--\r\n"
    b"--OUTER\r\n"
    b"Content-Type: application/pdf; name=\"doc.pdf\"\r\n"
    b"Content-Disposition: attachment; filename=\"doc.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    + base64.encodebytes(b"%PDF-1.4 small").replace(b"\n", b"\r\n") +
    b"--OUTER\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Disposition: attachment; filename=\"=?UTF-8?B?w6l0w6kuYmlu?=\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    + base64.encodebytes(b"\x00" * 5000).replace(b"\n", b"\r\n") +
    b"--OUTER--\r\n")


def test_json_parsed_multipart_message():
    with Receiver() as r:
        with gateway(r.url, format="json-parsed", attachment_max="1K") as gw:
            for rep in deliver(gw, ["alice@example.test"], content=PARSED):
                expect(rep, 250, "2.0.0")
        j = r.wait_requests(1)[0].json()
        check_envelope(j["envelope"], ["alice@example.test"], ["alice@example.test"])
        assert j["subject"] == "R\u00e9sum\u00e9 and \u00e9t\u00e9", j["subject"]
        assert j["from"] == "J\u00fcrgen <j@example.test>", j["from"]
        assert j["to"] == "alice@example.test"
        names = [h["name"] for h in j["headers"]]
        assert names[:2] == ["Return-Path", "Received"], names      # trace headers come first
        assert {"name": "X-Raw-Latin1", "value": "caf\u00e9"} in j["headers"]
        assert j["text"] == "Gr\u00fc\u00dfe", repr(j["text"])
        assert j["html"] == "<p>Gr\u00fc\u00dfe</p>", repr(j["html"])
        att = j["attachments"]
        assert len(att) == 2, att
        assert att[0]["filename"] == "doc.pdf" and att[0]["content_type"] == "application/pdf"
        assert base64.b64decode(att[0]["content"]) == b"%PDF-1.4 small"
        assert att[0]["size"] == 14
        assert att[1]["filename"] == "\u00e9t\u00e9.bin" and att[1]["size"] == 5000
        assert "content" not in att[1] and att[1]["content_omitted"] is True
        split_trace(base64.b64decode(j["message"]), PARSED)


# --- batch vs per recipient, per-recipient verdicts ------------------------------------------

def test_mode_recipient_one_request_each():
    with Receiver() as r:
        with gateway(r.url, format="raw", mode="recipient", config={"delivered_to": True}) as gw:
            rcpts = ["a@example.test", "b@example.test", "c@example.test"]
            for rep in deliver(gw, rcpts):
                expect(rep, 250, "2.0.0")
        reqs = r.wait_requests(3)
        assert sorted(q.headers["X-Lmtpgw-Recipients"] for q in reqs) == rcpts
        assert len({q.headers["webhook-id"] for q in reqs}) == 3, "one id per recipient"
        for q in reqs:
            rcpt = q.headers["X-Lmtpgw-Recipients"]
            assert q.body.startswith(b"Delivered-To: " + rcpt.encode() + b"\r\n"), q.body[:80]


def test_url_template_groups_requests():
    with Receiver() as r:
        with gateway(r.url.replace("/hook", "/%{domain}"), format="json") as gw:
            rcpts = ["a@example.test", "b@example.test"]
            for rep in deliver(gw, rcpts):
                expect(rep, 250, "2.0.0")
        reqs = r.wait_requests(1)
        assert len(reqs) == 1 and reqs[0].path == "/example.test", [q.path for q in reqs]


def test_per_recipient_verdicts_in_one_transaction():
    def rule(req):
        return {"status": 200, "json": {"results": [
            {"rcpt": "ok@example.test", "code": 250, "status": "2.0.0", "text": "stored as 7"},
            {"rcpt": "full@example.test", "code": 452, "status": "4.2.2", "text": "mailbox full"},
            {"rcpt": "gone@example.test", "code": 550, "status": "5.1.1", "text": "no such user"},
            {"rcpt": "bad@example.test", "code": 550, "status": "4.1.1", "text": "class mismatch"},
        ]}}
    with Receiver(rule=rule) as r:
        with gateway(r.url) as gw:
            reps = deliver(gw, ["ok@example.test", "full@example.test", "gone@example.test",
                                "bad@example.test", "missing@example.test"])
            expect(reps[0], 250, "2.0.0", text="stored as 7")
            expect(reps[1], 452, "4.2.2", text="mailbox full")
            expect(reps[2], 550, "5.1.1", text="no such user")
            expect(reps[3], 451, "4.3.0")
            expect(reps[4], 451, "4.3.0")
        assert len(r.requests) == 1


# --- the status mapping ----------------------------------------------------------------------

MAPPING = [
    (200, 250, "2.0.0"), (202, 250, "2.0.0"), (204, 250, "2.0.0"),
    (400, 550, "5.0.0"), (404, 550, "5.0.0"), (410, 550, "5.0.0"), (422, 550, "5.0.0"),
    (413, 552, "5.3.4"), (401, 451, "4.7.0"), (403, 451, "4.7.0"), (408, 451, "4.3.0"),
    (429, 451, "4.4.5"), (500, 451, "4.3.0"), (502, 451, "4.3.0"), (503, 451, "4.3.0"),
    (302, 451, "4.3.0"), (409, 451, "4.3.0"),
]


def test_every_row_of_the_mapping():
    current = {}

    def rule(req):
        st = current["status"]
        ans = {"status": st}
        if st == 429:
            ans["headers"] = {"Retry-After": "120"}
        if st == 302:
            ans["headers"] = {"Location": "/elsewhere"}
        return ans
    with Receiver(rule=rule) as r:
        with gateway(r.url) as gw:
            with gw.session() as c:
                for http, code, enh in MAPPING:
                    current["status"] = http
                    rep = send_message(c, "s@example.test", ["alice@example.test"], CONTENT)[0]
                    expect(rep, code, enh)
                    if http == 429:
                        assert "retry after 120" in rep.text, rep
        assert len(r.requests) == len(MAPPING)


def test_json_body_overrides_and_text_plain():
    answers = [
        {"status": 404, "json": {"results": [{"rcpt": "alice@example.test", "code": 450,
                                              "status": "4.2.1", "text": "try later"}]}},
        {"status": 422, "text": "mailbox disabled\r\nby policy"},
        {"status": 500, "body": b"{not json", "content_type": "application/json"},
        {"status": 200, "json": {"results": [{"rcpt": "alice@example.test", "code": 250}]},
         "headers": {"X-Request-Id": "req-42"}},
    ]
    with Receiver(rule=lambda req: answers[len(r.requests) - 1]) as r:
        with gateway(r.url) as gw:
            with gw.session() as c:
                rep = send_message(c, "s@example.test", ["alice@example.test"], CONTENT)[0]
                expect(rep, 450, "4.2.1", text="try later")
                rep = send_message(c, "s@example.test", ["alice@example.test"], CONTENT)[0]
                expect(rep, 550, "5.0.0", text="mailbox disabled by policy")
                rep = send_message(c, "s@example.test", ["alice@example.test"], CONTENT)[0]
                expect(rep, 451, "4.3.0")
                rep = send_message(c, "s@example.test", ["alice@example.test"], CONTENT)[0]
                expect(rep, 250, "2.0.0", text="req-42")
            assert gw.grep(r"rcpt=<alice@example.test>.*ref=req-42") or gw.grep(r"req-42"), \
                "the receiver's id must reach the log"


def test_response_body_capped():
    big = {"results": [{"rcpt": "alice@example.test", "code": 250}], "pad": "x" * 200000}
    with Receiver(rule=lambda req: {"status": 200, "json": big}) as r:
        with gateway(r.url, max_response="64K") as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 451, "4.3.0", text="too large")


# --- transport failures ----------------------------------------------------------------------

def test_receiver_down():
    port = free_port()
    with gateway("http://127.0.0.1:%d/hook" % port) as gw:
        expect(deliver(gw, ["alice@example.test"])[0], 451, "4.4.1")


def test_stall_past_timeout():
    with Receiver(rule=lambda req: {"status": 200, "delay": 5}) as r:
        with gateway(r.url, timeout="1500ms") as gw:
            t0 = time.time()
            expect(deliver(gw, ["alice@example.test"])[0], 451, "4.4.2")
            assert time.time() - t0 < 4.5, "timeout not applied"


def test_connection_reset_mid_body():
    content = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n"
    content = content * 300
    with Receiver(early_rule=lambda req: {"reset_after": 1000}) as r:
        with gateway(r.url, format="raw") as gw:
            rep = deliver(gw, ["alice@example.test"], content=content)[0]
            expect(rep, "4")
        assert r.resets >= 1 and not r.requests


def test_early_refusal_of_a_big_message():
    """A receiver that answers 413 on the headers (instead of 100 Continue): 552, nothing sent."""
    content = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 2200
    with Receiver(early_rule=lambda req: {"refuse_early": True, "status": 413,
                                          "text": "too big for us"}) as r:
        with gateway(r.url, format="raw") as gw:
            expect(deliver(gw, ["alice@example.test"], content=content)[0], 552, "5.3.4",
                   text="too big for us")
        assert r.refused == 1 and not r.requests


def test_redirects_only_when_configured():
    def rule(req):
        if req.path == "/hook":
            return {"status": 307, "headers": {"Location": "/final"}}
        return {"status": 200}
    with Receiver(rule=rule, secrets=[SECRET1]) as r:
        d = tempfile.mkdtemp(prefix="hook-")
        s1 = secret_file(d, "s", SECRET1)
        with gateway(r.url, format="raw", secret_files=[s1]) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 451, "4.3.0")
        assert [q.path for q in r.requests] == ["/hook"]
        with gateway(r.url, format="raw", secret_files=[s1], follow_redirects=True) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 250, "2.0.0")
        assert [q.path for q in r.requests] == ["/hook", "/hook", "/final"]
        final = r.requests[-1]
        assert final.signature_ok and final.body == r.requests[-2].body
        split_trace(final.body, CONTENT)


def vm_hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def big_message(mb=20):
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    body = line * ((mb * 1024 * 1024) // len(line))
    return b"Subject: twenty megabytes\r\n\r\n" + body


def _streamed(fmt):
    content = big_message()
    digest = hashlib.sha256(content).hexdigest()
    with Receiver(secrets=[SECRET1]) as r:
        d = tempfile.mkdtemp(prefix="hook-")
        with gateway(r.url, format=fmt, secret_files=[secret_file(d, "s", SECRET1)],
                     timeout=60, config={"max_message_size": "30M"}) as gw:
            for rep in deliver(gw, ["alice@example.test"], content=content):
                expect(rep, 250, "2.0.0")
            hwm = vm_hwm_kb(gw.pid)
        req = r.wait_requests(1)[0]
        assert req.signature_ok
        body = req.body if fmt == "raw" else req.multipart()["message"][1]
        assert body.endswith(content) and hashlib.sha256(body[-len(content):]).hexdigest() == digest
        # (under valgrind the RSS is valgrind's own: only the delivery is checked there)
        assert not MEMORY_FIGURES_MEAN_SOMETHING or hwm < 30 * 1024, "lmtpgw peak RSS %d kB for a 20 MB %s message" % (hwm, fmt)


def test_20mb_raw_streamed_with_bounded_memory():
    _streamed("raw")


def test_20mb_multipart_streamed_with_bounded_memory():
    _streamed("multipart")


# --- signatures, ids, secrets ----------------------------------------------------------------

def test_signature_rotation_two_secrets():
    d = tempfile.mkdtemp(prefix="hook-")
    s1, s2 = secret_file(d, "s1", SECRET1), secret_file(d, "s2", SECRET2)
    # lmtpgw signs with both; a receiver that knows only the old or only the new one verifies
    for known in ([SECRET1], [SECRET2]):
        with Receiver(secrets=known) as r:
            with gateway(r.url, secret_files=[s1, s2]) as gw:
                expect(deliver(gw, ["alice@example.test"])[0], 250)
            req = r.wait_requests(1)[0]
            assert req.signature_ok and req.sig_matches == [0], req.headers["webhook-signature"]
            assert len(req.headers["webhook-signature"].split()) == 2
    # a receiver with a secret we do not have: no match
    with Receiver(secrets=["whsec_" + base64.b64encode(b"unrelated").decode()]) as r:
        with gateway(r.url, secret_files=[s1]) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 250)
        assert r.wait_requests(1)[0].signature_ok is False


def test_same_id_on_retry():
    seen = []

    def rule(req):
        seen.append(req.headers["webhook-id"])
        return {"status": 503} if len(seen) == 1 else {"status": 200}
    with Receiver(rule=rule) as r:
        with gateway(r.url, format="raw") as gw:
            expect(deliver(gw, ["alice@example.test", "bob@example.test"])[0], 451, "4.3.0")
            time.sleep(1.1)     # a later timestamp, a new session: the MTA's retry
            for rep in deliver(gw, ["bob@example.test", "alice@example.test"]):
                expect(rep, 250)
            # another message gets another id
            deliver(gw, ["alice@example.test", "bob@example.test"], content=CONTENT + b"more\r\n")
        assert seen[0] == seen[1] and seen[2] != seen[0], seen
        assert r.requests[0].headers["Idempotency-Key"] == r.requests[1].headers["Idempotency-Key"]


def test_secrets_never_logged_and_auth_sent():
    d = tempfile.mkdtemp(prefix="hook-")
    token = "tok-" + "Z" * 30
    s1 = secret_file(d, "s1", SECRET1)
    tf = secret_file(d, "token", token)
    with Receiver(secrets=[SECRET1], rule=lambda req: {"status": 500}) as r:
        with Lmtpgw(backends=backend(r.url, secret_files=[s1], bearer_token_file=tf,
                                     headers=["X-Tenant: t1"]),
                    routes=[("*@example.test", ["hook"])], debug=True) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 451)
            out = gw.run_cli("-n")[1]
            log = gw.log() + out
        req = r.wait_requests(1)[0]
        assert req.headers["Authorization"] == "Bearer " + token
        assert req.headers["X-Tenant"] == "t1"
        for secret in (SECRET1, SECRET1[6:], token, req.headers["webhook-signature"]):
            assert secret not in log, "secret material in the log or -n output"


def test_config_refusals():
    d = tempfile.mkdtemp(prefix="hook-")
    good = secret_file(d, "good", SECRET1)
    loose = secret_file(d, "loose", SECRET1, mode=0o644)
    cases = [
        ({"url": "http://127.0.0.1:1/x", "allow_http": False}, "https"),
        ({"url": "ftp://x/y"}, "https"),
        ({"format": "xml"}, "format"),
        ({"mode": "each"}, "mode"),
        ({"secret_files": [loose]}, "chmod 600"),
        ({"secret_files": [good, good, good]}, "at most 2"),
        ({"headers": ["Bad Header"]}, "headers"),
        ({"headers": ["webhook-id: forged"]}, "headers"),
        ({"url": "https://x/%{nope}"}, "url"),
    ]
    for kw, word in cases:
        settings = {"url": "https://hook.example.test/in"}
        settings.update(kw)
        gw = Lmtpgw(backends=backend(**settings), routes=[("*@example.test", ["hook"])])
        rc, out, err = gw.run_cli("check")
        assert rc != 0 and word in err, (kw, rc, err)
    gw = Lmtpgw(backends=backend("https://hook.example.test/in", secret_files=[good]),
                routes=[("*@example.test", ["hook"])])
    rc, out, err = gw.run_cli("check")
    assert rc == 0, err


# --- TLS -------------------------------------------------------------------------------------

def test_https_with_test_ca_and_untrusted_refused():
    ca = TestCA(tempfile.mkdtemp(prefix="hook-ca-"))
    with Receiver(tls=ca) as r:
        with gateway(r.url, ca_file=ca.ca_file) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 250, "2.0.0")
        assert len(r.requests) == 1
        # the system store does not know our CA
        with gateway(r.url) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 451, "4.7.5")
    # a certificate our CA did not sign
    with Receiver(tls=ca, rogue=True) as r:
        with gateway(r.url, ca_file=ca.ca_file) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 451, "4.7.5")
        assert not r.requests


def test_mutual_tls():
    ca = TestCA(tempfile.mkdtemp(prefix="hook-ca-"))
    with Receiver(tls=ca, client_ca=True) as r:
        with gateway(r.url, ca_file=ca.ca_file, client_cert_file=ca.client_cert,
                     client_key_file=ca.client_key) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 250, "2.0.0")
        with gateway(r.url, ca_file=ca.ca_file) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], "4")
        assert len(r.requests) == 1


def test_example_api_bridge_conf_checks():
    """conf/examples/api-bridge.conf passes `check` once its secret files exist (temp copy)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    d = tempfile.mkdtemp(prefix="hook-example-")
    secret_file(d, "helpdesk-current.key", SECRET1)
    secret_file(d, "ingest.token", "token")
    with open(os.path.join(root, "conf", "examples", "api-bridge.conf")) as f:
        text = f.read()
    assert "/etc/lmtpgw/helpdesk-current.key" in text and "/etc/lmtpgw/ingest.token" in text
    conf = os.path.join(d, "api-bridge.conf")
    with open(conf, "w") as f:
        f.write(text.replace("/etc/lmtpgw/", d + "/"))
    gw = Lmtpgw()
    rc, out, err = gw.run_cli("check", conf=conf)
    assert rc == 0, err
    # without the files the check fails, naming the file
    rc, out, err = gw.run_cli("check", conf=os.path.join(root, "conf", "examples", "api-bridge.conf"))
    assert rc != 0 and "helpdesk-current.key" in err, err
