#!/usr/bin/env python3
"""
webhook-receiver.py - a minimal receiver for lmtpgw's webhook backend (docs/guides/api-bridge.md).

It is the "helpdesk" of conf/examples/api-bridge.conf (format = "json", mode = "message"):

  - verifies the Standard Webhooks signature over the raw body, with one or two secrets
    (rotation), and refuses stale timestamps: 401 (lmtpgw answers 451 4.7.0, the MTA retries);
  - opens one ticket per recipient: tickets@ goes to the queue "general", tickets+QUEUE@ to QUEUE;
  - answers per recipient with {"results": [...]}: 250 for a ticket opened, 452 for a queue that
    is paused (the MTA retries that recipient later), 550 for a queue that does not exist (the MTA
    bounces that recipient);
  - drops duplicates by webhook-id: a retried request gets the answer of the first one, and no
    second ticket is opened;
  - answers lmtpgw's recipient checks (verify_url = ".../verify", a POST of type
    "recipient.verify" at RCPT time) with the same rules, opening nothing: 550 5.1.1 for a queue
    that does not exist, 452 4.2.2 for a paused one, 250 otherwise.

python3 standard library only. Run it behind TLS (--tls-cert/--tls-key, or a reverse proxy):

    python3 webhook-receiver.py --listen 127.0.0.1:8443 --secret-file /etc/helpdesk/hook.key \
        --tickets /var/lib/helpdesk/tickets --tls-cert cert.pem --tls-key key.pem

Tickets are written as JSON files to --tickets (a real helpdesk would use its database).
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import ssl
import threading
import time

QUEUES = {"general": "open", "support": "open", "sales": "paused"}   # the business rules
TOLERANCE = 5 * 60          # seconds of clock difference accepted in webhook-timestamp


def load_secret(path):
    """Key bytes of a Standard Webhooks secret file: "whsec_" + base64, or the text itself."""
    with open(path) as f:
        text = f.readline().strip()
    return base64.b64decode(text[6:]) if text.startswith("whsec_") else text.encode()


def verify(keys, headers, body):
    """True when webhook-signature holds a v1 signature of id.timestamp.body by one of keys."""
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    try:
        if abs(time.time() - int(ts)) > TOLERANCE:
            return False                      # replayed, or a badly skewed clock
    except ValueError:
        return False
    signed = ("%s.%s." % (msg_id, ts)).encode() + body
    offered = headers.get("webhook-signature", "").split()
    for key in keys:
        mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest("v1," + mac, s) for s in offered):
            return True
    return False


class Helpdesk:
    def __init__(self, keys, tickets_dir):
        self.keys = keys
        self.dir = tickets_dir
        self.seen = {}                        # webhook-id -> answer (idempotency)
        self.lock = threading.Lock()
        self.next = 1

    def verdict(self, rcpt, envelope, message):
        """One recipient: open a ticket, or say why not. Returns a results entry."""
        local = rcpt.split("@", 1)[0]
        queue = local.split("+", 1)[1] if "+" in local else "general"
        state = QUEUES.get(queue)
        if state is None:
            return {"rcpt": rcpt, "code": 550, "status": "5.1.1", "text": "no such queue"}
        if state != "open":
            return {"rcpt": rcpt, "code": 452, "status": "4.2.2", "text": "queue paused"}
        number = self.next
        self.next += 1
        with open(os.path.join(self.dir, "ticket-%d.json" % number), "w") as f:
            json.dump({"ticket": number, "queue": queue, "rcpt": rcpt,
                       "from": envelope["mail_from"]["address"],
                       "message_sha256": envelope["sha256"],
                       "message": base64.b64encode(message).decode()}, f)
        return {"rcpt": rcpt, "code": 250, "status": "2.0.0", "text": "ticket %d" % number}

    def check(self, rcpt):
        """A recipient check at RCPT time: the verdict without opening a ticket."""
        local = rcpt.split("@", 1)[0]
        state = QUEUES.get(local.split("+", 1)[1] if "+" in local else "general")
        if state is None:
            return {"rcpt": rcpt, "code": 550, "status": "5.1.1", "text": "no such queue"}
        if state != "open":
            return {"rcpt": rcpt, "code": 452, "status": "4.2.2", "text": "queue paused"}
        return {"rcpt": rcpt, "code": 250, "status": "2.1.5", "text": "queue open"}

    def handle(self, headers, body):
        """(HTTP status, JSON answer) for one POST."""
        if not verify(self.keys, headers, body):
            return 401, {"text": "bad signature"}
        doc = json.loads(body)
        if doc.get("type") == "recipient.verify":          # verify_url: nothing to remember
            return 200, {"results": [self.check(doc["recipient"]["address"])]}
        with self.lock:
            msg_id = headers["webhook-id"]
            if msg_id in self.seen:           # a retry of a request we already answered
                return 200, self.seen[msg_id]
            envelope, message = doc["envelope"], base64.b64decode(doc["message"])
            answer = {"results": [self.verdict(r, envelope, message)
                                  for r in envelope["targets"]]}
            self.seen[msg_id] = answer
            return 200, answer


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, answer = self.server.helpdesk.handle(self.headers, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):                        # `lmtpgw check --probe` sends a HEAD
        self.send_response(204)
        self.end_headers()

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--listen", default="127.0.0.1:8443")
    p.add_argument("--secret-file", action="append", required=True,
                   help="whsec_... secret; give it twice while rotating")
    p.add_argument("--tickets", required=True, help="directory for the tickets")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    os.makedirs(a.tickets, exist_ok=True)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    server.helpdesk = Helpdesk([load_secret(f) for f in a.secret_file], a.tickets)
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("listening on %s:%d" % server.server_address[:2], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
