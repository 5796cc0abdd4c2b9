"""Webhook (and shared HTTP layer) faults found by the adversarial run of issue 13:

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
            assert gw.grep(r"event=webhook-results-contradict .*rcpt=<a@example.test>")
            assert gw.grep(r"event=webhook-results-differ .*rcpt=<e@example.test>")
            assert gw.grep(r"event=webhook-result-unknown-rcpt .*rcpt=<stranger@example.test>")
        assert len(r.requests) == 1


