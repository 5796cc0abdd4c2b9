"""Webhook (and shared HTTP layer) faults found by the second adversarial run (docs/reliability.md, "The second attack"):

- an answer cut inside its header block, or a body cut short of its framing, is no 2xx
  (451 4.4.2), for the webhook and for S3 PUTs (both go through src/http.c);
- contradictory per-recipient verdicts in one JSON answer are doubt (451 4.3.0);
- a transaction's requests to different URLs run concurrently, so one hanging receiver costs
  each recipient one timeout (451 4.4.2), not the sum of them (451 4.4.7 at the deadline).

The cut answers need a receiver that misbehaves on purpose: CutReceiver below is a raw-socket
HTTP server that reads the whole request (headers and Content-Length body) and then writes a
given byte string and closes. Everything else runs against the real receiver
(webhook_receiver.py)."""
import json
import os
import socket
import tempfile
import threading
import time

from harness import Lmtpgw, Skip, conf_value, expect, free_port, send_message
from webhook_receiver import Receiver

CONTENT = b"From: s@example.test\r\nTo: alice@example.test\r\nSubject: faults\r\n\r\nbody\r\n"


def backend(url, name="hook", **kw):
    settings = {"driver": "webhook", "url": url, "allow_http": True, "timeout": 10}
    settings.update(kw)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v))
                                           for k, v in settings.items()))


def gateway(url, config=None, **kw):
    return Lmtpgw(backends=backend(url, **kw), config=config,
                  routes=[("*@example.test", ["hook"])])


def deliver(gw, rcpts, content=CONTENT):
    with gw.session() as c:
        return send_message(c, "s@example.test", rcpts, content)


# --- a receiver that cuts its answer ---------------------------------------------------------

class CutReceiver:
    """Reads each request completely, answers with `answer` (bytes) and closes the connection.
    `answer` may be a function of the request head (bytes) returning the bytes to write."""

    def __init__(self, answer):
        self.answer = answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = []          # (head, body) of every request read completely
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self):
        return "http://127.0.0.1:%d/hook" % self.port

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            self.requests.append((head, body))
            out = self.answer(head) if callable(self.answer) else self.answer
            conn.sendall(out)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.sock.close()
        return False


# (answer written after reading the request, the reply the recipient must get)
CUT_ANSWERS = [
    # cut inside the header block: no blank line ever came
    (b"HTTP/1.1 200 OK\r\n", 451, "4.4.2"),
    (b"HTTP/1.1 200 OK\r\nContent-Ty", 451, "4.4.2"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", 451, "4.4.2"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n", 451, "4.4.2"),
    (b"HTTP/1.1 200", 451, "4.4.2"),
    # headers complete, body short of its framing
    (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nonly part", 451, "4.4.2"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 451, "4.4.2"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 90\r\n\r\n"
     b'{"results":[{"rcpt":"alice@example.test","code":250}', 451, "4.4.2"),
    # complete answers: these are 2xx
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 250, "2.0.0"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 250, "2.0.0"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-delimited body", 250, "2.0.0"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 250,
     "2.0.0"),
]


def test_answer_cut_inside_headers_or_body_is_not_2xx():
    """Each answer above from a receiver that then closes: only a complete one may give 250."""
    current = {}
    with CutReceiver(lambda head: current["answer"]) as r:
        # breaker off: a run of 4.4.2 would otherwise open it and refuse at RCPT
        with gateway(r.url, format="raw", breaker_failures=0) as gw:
            with gw.session() as c:
                for answer, code, enh in CUT_ANSWERS:
                    current["answer"] = answer
                    rep = send_message(c, "s@example.test", ["alice@example.test"], CONTENT)[0]
                    assert rep.code == code and rep.enhanced == enh, (answer, str(rep))
            assert gw.grep(r"event=webhook_failed.*(cut|header|incomplete)"), \
                "the cause must reach the log"
        assert len(r.requests) == len(CUT_ANSWERS), "every request was read completely"


# --- the same gap on the S3 path ----------------------------------------------------------------

def test_s3_put_answer_cut_inside_headers_is_not_2xx():
    """The S3 backend's PUTs go through the same http.c: a 200 status line and a close must not
    count as stored. The fake answers every request (HEAD, PUT) that way."""
    d = os.path.join(tempfile.mkdtemp(prefix="s3cut-"), "creds")
    with open(d, "w") as f:
        f.write("AKIDEXAMPLE\nwJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n")
    os.chmod(d, 0o600)
    for answer in (b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nContent-Le"):
        with CutReceiver(answer) as r:
            s3 = ("archive: { driver = \"s3\"; endpoint = \"http://127.0.0.1:%d\"; "
                  "allow_http = true; bucket = \"mail\"; region = \"us-east-1\"; "
                  "credentials_file = %s; timeout = \"5s\"; };" % (r.port, conf_value(d)))
            with Lmtpgw(backends=s3, routes=[("*@example.test", ["archive"])]) as gw:
                rep = deliver(gw, ["alice@example.test"])[0]
                assert rep.code == 451 and rep.enhanced == "4.4.2", (answer, str(rep))
            assert r.requests, "the fake must have been asked"


# --- contradictory verdicts ------------------------------------------------------------------

def test_contradictory_verdicts_for_one_recipient_are_doubt():
    results = [
        # A: stored, then refused: the receiver contradicts itself
        {"rcpt": "a@example.test", "code": 250},
        {"rcpt": "a@example.test", "code": 550, "status": "5.1.1", "text": "no such user"},
        # B: the same, reversed
        {"rcpt": "b@example.test", "code": 550, "status": "5.1.1", "text": "no such user"},
        {"rcpt": "b@example.test", "code": 250},
        # C: temporary and permanent
        {"rcpt": "c@example.test", "code": 452, "status": "4.2.2"},
        {"rcpt": "c@example.test", "code": 550, "status": "5.2.2"},
        # D: an exact duplicate agrees with itself
        {"rcpt": "d@example.test", "code": 550, "status": "5.1.1", "text": "no such user"},
        {"rcpt": "d@example.test", "code": 550, "status": "5.1.1", "text": "no such user"},
        # E: one class, two codes: the outcome is agreed (temporary), the first reply is used
        {"rcpt": "e@example.test", "code": 450, "status": "4.2.1", "text": "later"},
        {"rcpt": "e@example.test", "code": 452, "status": "4.2.2", "text": "full"},
        # F: valid, then an invalid entry (class mismatch): doubt
        {"rcpt": "f@example.test", "code": 550, "status": "5.1.1"},
        {"rcpt": "f@example.test", "code": 550, "status": "4.1.1"},
        # a recipient this request did not carry: ignored, logged
        {"rcpt": "stranger@example.test", "code": 250},
    ]
    with Receiver(rule=lambda req: {"status": 200, "json": {"results": results}}) as r:
        with gateway(r.url) as gw:
            reps = deliver(gw, ["a@example.test", "b@example.test", "c@example.test",
                                "d@example.test", "e@example.test", "f@example.test"])
            expect(reps[0], 451, "4.3.0", text="contradict")
            expect(reps[1], 451, "4.3.0", text="contradict")
            expect(reps[2], 451, "4.3.0", text="contradict")
            expect(reps[3], 550, "5.1.1", text="no such user")
            expect(reps[4], 450, "4.2.1", text="later")
            expect(reps[5], 451, "4.3.0")
            assert gw.grep(r"event=webhook_results_contradict .*rcpt=<a@example.test>")
            assert gw.grep(r"event=webhook_results_differ .*rcpt=<e@example.test>")
            assert gw.grep(r"event=webhook_result_unknown_rcpt .*rcpt=<stranger@example.test>")
        assert len(r.requests) == 1


# --- requests to different URLs run concurrently -----------------------------------------------

def test_requests_to_different_urls_run_concurrently():
    """Three recipients, one URL each, at a receiver that never answers: with timeout 3 s and
    delivery_deadline 6 s each must get 451 4.4.2 after about 3 s (one timeout), not 451 4.4.7
    at the deadline (three timeouts one after another)."""
    with Receiver(rule=lambda req: {"status": 200, "delay": 20}) as r:
        url = r.url.replace("/hook", "/hook/%{local}")
        # the backend's default concurrency (8)
        with gateway(url, config={"delivery_deadline": "6s"}, timeout="3s") as gw:
            with gw.session() as c:
                rcpts = ["a@example.test", "b@example.test", "c@example.test"]
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250)
                for rc in rcpts:
                    expect(c.cmd("RCPT TO:<%s>" % rc), 250)
                expect(c.cmd("DATA"), 354)
                t0 = time.time()
                c.send(CONTENT + b".\r\n")
                for rc in rcpts:
                    rep = c.reply()
                    took = time.time() - t0
                    expect(rep, 451, "4.4.2")
                    assert 2.5 < took < 5.0, "%s answered after %.1f s" % (rc, took)
        assert sorted(q.path for q in r.requests) == ["/hook/a", "/hook/b", "/hook/c"]


def test_concurrent_requests_stay_within_the_backend_concurrency():
    """With concurrency = 1 the same three requests run one at a time: the limit holds. Each
    recipient is answered when its own request ends (a at ~2 s, b at ~4 s); c's request would
    end at 6 s, after the deadline."""
    with Receiver(rule=lambda req: {"status": 200, "delay": 20}) as r:
        url = r.url.replace("/hook", "/hook/%{local}")
        with gateway(url, config={"delivery_deadline": "5800ms"}, timeout="2s",
                     concurrency=1) as gw:
            rcpts = ["a@example.test", "b@example.test", "c@example.test"]
            reps = deliver(gw, rcpts)
            expect(reps[0], 451, "4.4.2")
            expect(reps[1], 451, "4.4.2")
            expect(reps[2], 451, "4.4.7")


def test_interleaved_urls_keep_one_request_per_url_and_replies_in_order():
    """a+x, b+y, c+x, d+y: two requests (x: a and c; y: b and d), concurrently; every reply is
    its own recipient's verdict, in RCPT order, though the dispatcher regrouped the targets."""
    def rule(req):
        rcpts = req.headers["X-Lmtpgw-Recipients"].split(", ")
        return {"status": 200, "json": {"results": [
            {"rcpt": rc, "code": 250, "text": "%s via %s" % (rc, req.path)} for rc in rcpts]}}
    with Receiver(rule=rule) as r:
        with gateway(r.url.replace("/hook", "/hook/%{detail}")) as gw:
            rcpts = ["a+x@example.test", "b+y@example.test", "c+x@example.test",
                     "d+y@example.test"]
            reps = deliver(gw, rcpts)
            for rc, rep in zip(rcpts, reps):
                expect(rep, 250, "2.0.0", text="%s via /hook/%s" % (rc, rc[2]))
        got = sorted((q.path, q.headers["X-Lmtpgw-Recipients"]) for q in r.requests)
        assert got == [("/hook/x", "a+x@example.test, c+x@example.test"),
                       ("/hook/y", "b+y@example.test, d+y@example.test")], got
