"""RCPT-time recipient verification by the webhook backend (verify_url) against the real receiver
(webhook_receiver.py): the receiver's verdicts become RCPT replies (550 5.1.1 unknown, 452 4.2.2
full, 250 known), pipelined RCPTs keep their order, failures accept or defer per
verify_on_error, an HTTP status alone (404, 413, ...) refuses nobody, answers are cached per
URL, sender and recipient, the request is signed like a delivery (HMAC and Ed25519,
checked by the receiver with its own code), and a real Postfix bounces the unknown recipient
before DATA while the known one is delivered."""
import os
import subprocess
import tempfile
import time

from harness import Lmtpgw, expect, free_port, require_postfix, send_message
from postfix import PostfixServer
from test_webhook import CONTENT, SECRET1, backend, secret_file
from webhook_receiver import Receiver, ed25519_public_key

OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="


def ed25519_key_file(dir, name="ed.pem"):
    """A private key made as docs/backends/webhook.md says (openssl genpkey), chmod 600."""
    path = os.path.join(dir, name)
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", path], check=True,
                   capture_output=True)
    os.chmod(path, 0o600)
    return path


def verdicts(req):
    """The test receiver's directory: answers a verification by the recipient's local part;
    refuses (401) a verification whose HMAC signature does not verify; deliveries get 200."""
    if not req.path.startswith("/verify"):
        return {"status": 200}
    if req.signature_ok is False or req.ed_signature_ok is False:
        return {"status": 401, "text": "bad signature"}
    rcpt = req.json()["recipient"]["address"]
    local = rcpt.split("@")[0]
    if local.startswith("unknown"):
        return {"json": {"results": [{"rcpt": rcpt, "code": 550, "status": "5.1.1",
                                      "text": "no such user"}]}}
    if local == "full":
        return {"json": {"results": [{"rcpt": rcpt, "code": 452, "status": "4.2.2",
                                      "text": "mailbox full"}]}}
    if local.startswith("slow"):
        return {"status": 200, "delay": float(local[4:] or "3") / 10}
    if local == "broken":
        return {"status": 503, "text": "database down"}
    if local == "garbled":
        return {"body": b"{not json", "content_type": "application/json"}
    return {"status": 200}


def gateway(r, **kw):
    settings = {"verify_url": r.base + "/verify/%{domain}/%{local}"}
    settings.update(kw)
    return Lmtpgw(backends=backend(r.url, **settings), routes=[("*@example.test", ["hook"])])


def rcpt_replies(gw, rcpts, sender="s@example.test"):
    """MAIL and every RCPT pipelined in one write; the RCPT replies, in order."""
    with gw.session() as c:
        lines = ["MAIL FROM:<%s>" % sender] + ["RCPT TO:<%s>" % r for r in rcpts]
        c.send(("".join(l + "\r\n" for l in lines)).encode())
        replies = c.replies(len(lines))
        expect(replies[0], 250)
        c.cmd("RSET")
        return replies[1:]


def verify_requests(r):
    with r.lock:
        return [q for q in r.requests if q.path.startswith("/verify")]


def test_verify_verdicts_at_rcpt_and_signed_request():
    """unknown -> 550 5.1.1, full -> 452 4.2.2, known -> 250, at RCPT; only the known one is
    delivered after DATA. Each verification is signed (v1, and v1a,) and says who asks."""
    d = tempfile.mkdtemp(prefix="hookverify-")
    key = ed25519_key_file(d)
    with Receiver(secrets=[SECRET1], public_keys=[ed25519_public_key(key)], rule=verdicts) as r:
        with gateway(r, secret_files=[secret_file(d, "s1", SECRET1)],
                     ed25519_key_files=[key]) as gw:
            with gw.session() as c:
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250)
                expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
                rep = c.cmd("RCPT TO:<unknown@example.test>")
                expect(rep, 550, "5.1.1")
                assert "no such user" in str(rep), rep
                expect(c.cmd("RCPT TO:<full@example.test>"), 452, "4.2.2")
                expect(c.cmd("DATA"), 354)
                c.send(CONTENT.replace(b"\r\n.", b"\r\n..") + b".\r\n")
                expect(c.reply(), 250, "2.0.0")
            assert gw.grep(r"rcpt=<unknown@example.test>.*550 5\.1\.1|550 5\.1\.1.*unknown@"), gw.log()
        reqs = verify_requests(r)
        assert [q.path for q in reqs] == ["/verify/example.test/alice",
                                          "/verify/example.test/unknown",
                                          "/verify/example.test/full"], [q.path for q in reqs]
        for q in reqs:
            assert q.signature_ok and q.ed_signature_ok, q.headers.get("webhook-signature")
            sigs = q.headers["webhook-signature"].split()
            assert [s[:3] for s in sigs] == ["v1,", "v1a"], sigs
            assert q.headers["webhook-id"].startswith("vrf_") and len(q.headers["webhook-id"]) == 68
            assert q.headers["Content-Type"] == "application/json"
            j = q.json()
            assert j["type"] == "recipient.verify" and j["version"] == 1, j
            assert j["mail_from"]["address"] == "s@example.test", j
            assert j["client"] == {"address": "127.0.0.1", "lhlo": "client.test"}, j
            assert j["recipient"]["domain"] == "example.test", j
        assert len({q.headers["webhook-id"] for q in reqs}) == 3
        deliveries = [q for q in r.requests if q.path == "/hook"]
        assert len(deliveries) == 1
        assert deliveries[0].headers["X-Lmtpgw-Recipients"] == "alice@example.test"


def test_verify_signature_checked_by_receiver():
    """A gateway that signs with a secret the receiver does not know gets 401: no verdict, so
    verify_on_error decides (defer: 451 4.4.0); with the right secret the same RCPT is 250."""
    d = tempfile.mkdtemp(prefix="hookverify-")
    with Receiver(secrets=[SECRET1], rule=verdicts) as r:
        with gateway(r, secret_files=[secret_file(d, "other", OTHER_SECRET)],
                     verify_on_error="defer") as gw:
            expect(rcpt_replies(gw, ["alice@example.test"])[0], 451, "4.4.0")
        assert verify_requests(r)[0].signature_ok is False
        with gateway(r, secret_files=[secret_file(d, "s1", SECRET1)],
                     verify_on_error="defer") as gw:
            expect(rcpt_replies(gw, ["alice@example.test"])[0], 250, "2.1.5")
        assert verify_requests(r)[1].signature_ok is True


def test_verify_pipelined_mixed_answers_in_order():
    """Six RCPTs in one write, slow and fast, accepted and refused: replies in RCPT order."""
    with Receiver(rule=verdicts) as r:
        with gateway(r) as gw:
            rcpts = ["slow5@example.test", "unknown1@example.test", "bob@example.test",
                     "full@example.test", "slow2@example.test", "unknown2@example.test"]
            reps = rcpt_replies(gw, rcpts)
            want = [(250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"), (452, "4.2.2"),
                    (250, "2.1.5"), (550, "5.1.1")]
            for rcpt, rep, (code, enh) in zip(rcpts, reps, want):
                expect(rep, code, enh)
                assert rcpt in str(rep), (rcpt, rep)
        assert [q.json()["recipient"]["address"] for q in verify_requests(r)] == rcpts


def test_verify_does_not_block_other_sessions():
    """A slow verification holds only its own session: the request runs in a worker, and
    another client is served meanwhile (the event loop never waits for the receiver)."""
    with Receiver(rule=verdicts) as r:
        with gateway(r) as gw:
            with gw.session() as a:
                a.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<slow40@example.test>\r\n")
                r.wait_requests(1)
                t0 = time.time()
                with gw.session() as b:
                    expect(b.cmd("NOOP"), 250)
                    expect(b.cmd("MAIL FROM:<s@example.test>"), 250)
                    expect(b.cmd("RCPT TO:<unknown@example.test>"), 550, "5.1.1")
                waited = time.time() - t0
                assert waited < 2.5, "another session waited %.1fs behind a verification" % waited
                expect(a.reply(), 250)
                expect(a.reply(), 250, "2.1.5")
                assert time.time() - t0 > 3, "the slow verification was not waited for"


def test_verify_timeout_and_failures_accept():
    """verify_on_error = accept (the default): a timeout, a 503, an unreadable answer and a
    refused connection all take the recipient; the delivery then decides (here: 250)."""
    with Receiver(rule=verdicts) as r:
        with gateway(r, verify_timeout="500ms") as gw:
            t0 = time.time()
            reps = rcpt_replies(gw, ["slow20@example.test", "broken@example.test",
                                     "garbled@example.test"])
            assert time.time() - t0 < 1.8, "the 500ms timeout was not applied"
            for rep in reps:
                expect(rep, 250, "2.1.5")
            assert len(gw.grep(r"event=webhook_verify_failed .*action=accept")) == 3, gw.log()
            with gw.session() as c:
                for rep in send_message(c, "s@example.test", ["slow20@example.test"], CONTENT):
                    expect(rep, 250, "2.0.0")
        port = free_port()
        with gateway(r, verify_url="http://127.0.0.1:%d/verify" % port) as gw:
            expect(rcpt_replies(gw, ["alice@example.test"])[0], 250, "2.1.5")


def test_verify_timeout_and_failures_defer():
    """verify_on_error = defer: 451 4.4.2 on a timeout, 451 4.4.0 on a 503 or an unreadable
    answer, 451 4.4.1 on a refused connection; no recipient, no DATA."""
    with Receiver(rule=verdicts) as r:
        with gateway(r, verify_timeout="500ms", verify_on_error="defer") as gw:
            reps = rcpt_replies(gw, ["slow20@example.test", "broken@example.test",
                                     "garbled@example.test", "alice@example.test"])
            expect(reps[0], 451, "4.4.2")
            expect(reps[1], 451, "4.4.0")
            expect(reps[2], 451, "4.4.0")
            expect(reps[3], 250, "2.1.5")
            # a deferral is not cached: the next try asks again
            n = len(verify_requests(r))
            expect(rcpt_replies(gw, ["broken@example.test"])[0], 451, "4.4.0")
            assert len(verify_requests(r)) == n + 1
        port = free_port()
        with gateway(r, verify_url="http://127.0.0.1:%d/verify" % port,
                     verify_on_error="defer") as gw:
            expect(rcpt_replies(gw, ["alice@example.test"])[0], 451, "4.4.1")


def test_verify_cache():
    """Two identical RCPTs (and a later transaction) cost one request for a known and one for an
    unknown recipient; 452 is not cached; verify_cache_ttl = 0 asks every time."""
    with Receiver(rule=verdicts) as r:
        with gateway(r) as gw:
            reps = rcpt_replies(gw, ["alice@example.test", "alice@example.test",
                                     "unknown@example.test", "unknown@example.test",
                                     "full@example.test", "full@example.test"])
            for rep, code in zip(reps, [250, 250, 550, 550, 452, 452]):
                expect(rep, code)
            reps = rcpt_replies(gw, ["alice@example.test", "unknown@example.test"])
            expect(reps[0], 250)
            expect(reps[1], 550, "5.1.1")
        paths = [q.path for q in verify_requests(r)]
        assert paths.count("/verify/example.test/alice") == 1, paths
        assert paths.count("/verify/example.test/unknown") == 1, paths
        assert paths.count("/verify/example.test/full") == 2, paths
    with Receiver(rule=verdicts) as r:
        with gateway(r, verify_cache_ttl=0) as gw:
            rcpt_replies(gw, ["alice@example.test", "alice@example.test"])
        assert len(verify_requests(r)) == 2


def test_verify_cache_expires():
    with Receiver(rule=verdicts) as r:
        with gateway(r, verify_cache_ttl="1s") as gw:
            expect(rcpt_replies(gw, ["alice@example.test"])[0], 250)
            expect(rcpt_replies(gw, ["alice@example.test"])[0], 250)
            assert len(verify_requests(r)) == 1
            time.sleep(1.2)
            expect(rcpt_replies(gw, ["alice@example.test"])[0], 250)
            assert len(verify_requests(r)) == 2


def test_verify_config_refused():
    """check refuses a verify_url that is not https (without allow_http) or that needs what is
    only known after DATA."""
    cases = [
        ({"verify_url": "ftp://x/v"}, "verify_url"),
        ({"verify_url": "https://x/v/%{sha256}"}, "sha256"),
        ({"verify_url": "https://x/v/%{nope}"}, "verify_url"),
        ({"verify_on_error": "maybe"}, "verify_on_error"),
        ({"verify_timeout": "5m"}, "verify_timeout"),
    ]
    for kw, word in cases:
        settings = {"url": "https://hook.example.test/in", "verify_url": "https://x/v"}
        settings.update(kw)
        gw = Lmtpgw(backends=backend(**settings), routes=[("*@example.test", ["hook"])])
        rc, out, err = gw.run_cli("check")
        assert rc != 0 and word in err, (kw, rc, err)


def test_verify_with_postfix_bounces_unknown_delivers_known():
    """A real Postfix relaying to lmtpgw: the unknown recipient is refused at RCPT with 550 5.1.1
    and bounced, the known one delivered to the webhook; nothing stays queued."""
    require_postfix()
    with Receiver(rule=verdicts) as r:
        with gateway(r) as gw, \
                PostfixServer({"example.test": "lmtp:inet:127.0.0.1:%d" % gw.port}) as pf:
            refused = pf.send("someone@remote.test", ["known@example.test",
                                                      "unknown@example.test"], CONTENT)
            assert refused == {}, refused
            pf.wait_status("known@example.test", "sent")
            lines = pf.wait_status("unknown@example.test", "bounced")
            assert any("550 5.1.1" in l for l in lines), lines
            deliveries = [q for q in r.requests if q.path == "/hook"]
            assert len(deliveries) == 1
            assert deliveries[0].headers["X-Lmtpgw-Recipients"] == "known@example.test"
            assert gw.grep(r"event=delivery .*rcpt=<known@example.test> result=ok"), gw.log()


def status_only_verdicts(req):
    """A verify_url behind a reverse proxy, a WAF or a schema check: HTTP statuses that are not
    the receiver's word on the recipient. Only "explicit" gets a results entry (under a 404)."""
    if not req.path.startswith("/verify"):
        return {"status": 200}
    rcpt = req.json()["recipient"]["address"]
    local = rcpt.split("@")[0]
    if local == "proxy404":
        return {"status": 404, "body": b"<html><body>404 Not Found</body></html>",
                "content_type": "text/html"}
    if local == "schema400":
        return {"status": 400, "json": {"error": "unexpected field: client"}}
    if local == "waf413":
        return {"status": 413, "text": "request blocked"}
    if local == "gone410":
        return {"status": 410}
    if local == "invalid422":
        return {"status": 422, "json": {"detail": "validation failed"}}
    if local == "explicit":
        return {"status": 404, "json": {"results": [{"rcpt": rcpt, "code": 550,
                                                     "status": "5.1.1", "text": "no such user"}]}}
    return {"status": 200}


STATUS_ONLY = ["proxy404@example.test", "schema400@example.test", "waf413@example.test",
               "gone410@example.test", "invalid422@example.test"]


def test_verify_status_only_refusal_is_no_verdict():
    """An HTTP 400/404/410/413/422 without a results entry naming the recipient is no verdict
    (a proxy's 404 page, a WAF's 413, a schema error are not the receiver's word on the
    recipient): never a 5xx at RCPT, verify_on_error decides (defer: 451 4.4.0; accept: 250),
    and nothing is cached (the next RCPT asks again). A results entry naming the recipient
    still refuses, whatever the HTTP status (550 5.1.1 under a 404)."""
    with Receiver(rule=status_only_verdicts) as r:
        with gateway(r, verify_on_error="defer") as gw:
            reps = rcpt_replies(gw, STATUS_ONLY + ["explicit@example.test"])
            for rcpt, rep in zip(STATUS_ONLY, reps):
                expect(rep, 451, "4.4.0")
                assert rcpt in str(rep), (rcpt, rep)
            expect(reps[-1], 550, "5.1.1")
            assert "no such user" in str(reps[-1]), reps[-1]
            n = len(verify_requests(r))
            reps = rcpt_replies(gw, STATUS_ONLY + ["explicit@example.test"])
            for rep in reps[:-1]:
                expect(rep, 451, "4.4.0")
            expect(reps[-1], 550, "5.1.1")
            # asked again for each status-only answer; the explicit refusal came from the cache
            assert len(verify_requests(r)) == n + len(STATUS_ONLY), \
                [q.path for q in verify_requests(r)]
            assert len(gw.grep(r"event=webhook_verify_failed .*action=defer")) == \
                2 * len(STATUS_ONLY), gw.log()
        with gateway(r) as gw:
            reps = rcpt_replies(gw, STATUS_ONLY)
            for rep in reps:
                expect(rep, 250, "2.1.5")
            assert len(gw.grep(r"event=webhook_verify_failed .*action=accept")) == \
                len(STATUS_ONLY), gw.log()


def sender_policy(req):
    """Recipient "vip" takes mail only from boss@example.test: the verdict depends on the
    sender, which the request carries in its body (mail_from)."""
    if not req.path.startswith("/verify"):
        return {"status": 200}
    j = req.json()
    rcpt = j["recipient"]["address"]
    if rcpt.startswith("vip@") and j["mail_from"]["address"] != "boss@example.test":
        return {"json": {"results": [{"rcpt": rcpt, "code": 550, "status": "5.7.1",
                                      "text": "sender not allowed"}]}}
    return {"status": 200}


def test_verify_cache_keyed_on_sender():
    """A verdict for one sender is never replayed for another: the cache key holds the sender
    (the body carries mail_from), so the refusal given to a stranger does not refuse the boss,
    and the boss's acceptance does not accept the stranger. The same sender again is a hit."""
    with Receiver(rule=sender_policy) as r:
        with gateway(r) as gw:
            expect(rcpt_replies(gw, ["vip@example.test"], sender="stranger@example.test")[0],
                   550, "5.7.1")
            expect(rcpt_replies(gw, ["vip@example.test"], sender="boss@example.test")[0],
                   250, "2.1.5")
            expect(rcpt_replies(gw, ["vip@example.test"], sender="other@example.test")[0],
                   550, "5.7.1")
            expect(rcpt_replies(gw, ["vip@example.test"], sender="boss@example.test")[0],
                   250, "2.1.5")
            expect(rcpt_replies(gw, ["vip@example.test"], sender="stranger@example.test")[0],
                   550, "5.7.1")
        senders = [q.json()["mail_from"]["address"] for q in verify_requests(r)]
        assert senders == ["stranger@example.test", "boss@example.test",
                           "other@example.test"], senders


def test_verify_cache_keyed_on_url():
    """verify_url with %{session}: the receiver answers per session (it refuses in the first
    session only). The cache key holds the expanded URL, so the first session's 550 is not
    replayed in the next session; within one session a repeated RCPT is still a cache hit."""
    first = []

    def per_session(req):
        if not req.path.startswith("/verify"):
            return {"status": 200}
        session = req.path.split("/")[2]
        if not first:
            first.append(session)
        if session == first[0]:
            rcpt = req.json()["recipient"]["address"]
            return {"json": {"results": [{"rcpt": rcpt, "code": 550, "status": "5.1.1",
                                          "text": "not in this session"}]}}
        return {"status": 200}

    with Receiver(rule=per_session) as r:
        with gateway(r, verify_url=r.base + "/verify/%{session}/%{local}") as gw:
            reps = rcpt_replies(gw, ["alice@example.test", "alice@example.test"])
            expect(reps[0], 550, "5.1.1")
            expect(reps[1], 550, "5.1.1")
            reps = rcpt_replies(gw, ["alice@example.test", "alice@example.test"])
            expect(reps[0], 250, "2.1.5")
            expect(reps[1], 250, "2.1.5")
        paths = [q.path for q in verify_requests(r)]
        assert len(paths) == 2 and paths[0] != paths[1], paths
