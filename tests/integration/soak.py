"""
soak - many messages through a mix of backends while faults are injected at random, then
count: every recipient answered 2xx has exactly one stored copy, no 5xx for a transient
fault, nothing lost.

    python3 tests/integration/soak.py --messages 20000 --sessions 10     (make soak)

Backends: the Maildir ("local") and a real Dovecot over IMAP ("inbox") behind a fault proxy
that, at random, resets connections mid-stream or stalls them past lmtpgw's IMAP timeout.
Each message carries a unique X-Soak-Id header, so every stored copy can be attributed.
The client is our own pipelined LMTP client, because smtp-source does not report per-recipient
replies.
"""
import argparse
import collections
import os
import random
import re
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import Lmtpgw, Client, cstr  # noqa: E402
from dovecot import DovecotServer  # noqa: E402


class FaultProxy:
    """TCP proxy on loopback; each new connection is, at random, passed through, reset after
    a random number of bytes, or stalled (fault injection only)."""

    def __init__(self, target_port, reset_rate=0.3, stall_rate=0.03, seed=1):
        self.target = ("127.0.0.1", target_port)
        self.reset_rate, self.stall_rate = reset_rate, stall_rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with self.lock:
                r = self.rng.random()
                cut = self.rng.randint(200, 200000)
            kind = "reset" if r < self.reset_rate else "stall" if r < self.reset_rate + self.stall_rate else "pass"
            self.counts[kind] += 1
            threading.Thread(target=self._serve, args=(c, kind, cut), daemon=True).start()

    def _serve(self, client, kind, cut):
        try:
            server = socket.create_connection(self.target, timeout=30)
        except OSError:
            client.close()
            return
        sent = [0]

        def pump(src, dst, count):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if count:
                        sent[0] += len(data)
                        if kind == "reset" and sent[0] > cut:
                            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                            break
                        if kind == "stall" and sent[0] > cut:
                            time.sleep(60)
                            break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (client, server):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        a = threading.Thread(target=pump, args=(client, server, True), daemon=True)
        b = threading.Thread(target=pump, args=(server, client, False), daemon=True)
        a.start()
        b.start()
        a.join()
        b.join()
        client.close()
        server.close()

    def close(self):
        self.stopping = True
        self.sock.close()


def run(messages=2000, sessions=8, seed=1, verbose=True):
    rng = random.Random(seed)
    users = ["alice", "bob", "carol"]
    with DovecotServer(default_quota="10G", quotas={}) as dc:
        proxy = FaultProxy(dc.imaps_port, seed=seed)
        gw = Lmtpgw(routes=[("*@imap.test", ["inbox"]), ("*@both.test", ["inbox", "local"]),
                            ("*@example.test", ["local"])],
                    config={"delivery_deadline": "20s"})
        pw = os.path.join(gw.dir, "master.pw")
        with open(pw, "w") as f:
            f.write(dc.master[1] + "\n")
        os.chmod(pw, 0o600)
        gw.backends = ('inbox: { driver = "imap"; url = %s; ca_file = %s; login = %s; '
                       'password_file = %s; timeout = "3s"; concurrency = 8; '
                       'breaker_failures = 0; };'
                       % (cstr("imaps://localhost:%d" % proxy.port), cstr(dc.ca_file),
                          cstr(dc.master[0]), cstr(pw)))
        gw.write_config()
        replies = {}          # (soak_id, rcpt) -> code
        lock = threading.Lock()
        plan = []
        for i in range(messages):
            n = rng.randint(1, 3)
            rcpts = []
            for _ in range(n):
                dom = rng.choice(["example.test", "imap.test", "both.test"])
                rcpts.append("%s@%s" % (rng.choice(users), dom))
            plan.append(("soak-%d-%d" % (seed, i), rcpts, rng.randint(200, 20000)))
        t0 = time.monotonic()
        with gw:
            def worker(part):
                c = gw.session()
                c.settimeout(120)
                for sid, rcpts, size in part:
                    body = ("X-Soak-Id: %s\r\nSubject: soak\r\n\r\n" % sid).encode() + \
                        (b"y" * 78 + b"\r\n") * (size // 80)
                    c.send(b"MAIL FROM:<soak@example.test>\r\n" +
                           b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts) + b"DATA\r\n")
                    c.reply()
                    ok = [r for r in rcpts if c.reply().code == 250]
                    if c.reply().code != 354:
                        raise AssertionError("DATA refused")
                    c.send(body + b".\r\n")
                    for r in ok:
                        code = c.reply().code
                        with lock:
                            replies.setdefault((sid, r), []).append(code)
                c.close()

            parts = [plan[k::sessions] for k in range(sessions)]
            threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # Count what is stored before the harness removes its directory.
            # What is stored, per (soak id, user, backend).
            stored = collections.Counter()
            id_re = re.compile(rb"^X-Soak-Id: (\S+)", re.M)
            for dom in ("example.test", "both.test"):
                for u in users:
                    new = os.path.join(gw.maildir_root, dom, u, "new")
                    for name in os.listdir(new) if os.path.isdir(new) else []:
                        m = id_re.search(open(os.path.join(new, name), "rb").read(4096))
                        stored[(m.group(1).decode(), "%s@%s" % (u, dom), "local")] += 1
            for u in users:
                for msg in dc.messages(u):
                    m = id_re.search(msg.raw[:4096])
                    if m:
                        stored[(m.group(1).decode(), u, "inbox")] += 1

        elapsed = time.monotonic() - t0
        proxy.close()

        counts = collections.Counter()
        problems = []
        expect_imap = collections.Counter()
        for (sid, rcpt), codes in replies.items():
            for code in codes:
                counts["%dxx" % (code // 100)] += 1
                user, dom = rcpt.split("@")
                if code // 100 == 5:
                    problems.append("5xx for a transient fault: %s %s %d" % (sid, rcpt, code))
                if code == 250:
                    if dom in ("example.test", "both.test"):
                        expect_imap  # local copies are checked below
                    if dom in ("imap.test", "both.test"):
                        expect_imap[(sid, user)] += 1
        # Local: every 250 has exactly one copy per accepted recipient; no copy without a 250
        # except where a later backend of the same recipient failed (both.test).
        for (sid, rcpt), codes in replies.items():
            user, dom = rcpt.split("@")
            oks = codes.count(250)
            if dom == "example.test" and stored[(sid, rcpt, "local")] != oks:
                problems.append("local copies of %s for %s: %d, acknowledged %d"
                                % (sid, rcpt, stored[(sid, rcpt, "local")], oks))
            if dom == "both.test" and stored[(sid, rcpt, "local")] < oks:
                problems.append("lost: %s for %s local" % (sid, rcpt))
        dup_4xx = 0
        for (sid, user), oks in expect_imap.items():
            have = stored[(sid, user, "inbox")]
            if have < oks:
                problems.append("lost: %s for %s in IMAP (%d < %d)" % (sid, user, have, oks))
        for (sid, user, backend), have in stored.items():
            if backend == "inbox" and have > expect_imap[(sid, user)]:
                dup_4xx += have - expect_imap[(sid, user)]
        report = {
            "messages": messages, "sessions": sessions, "seconds": round(elapsed, 1),
            "recipient replies": dict(counts), "proxy connections": dict(proxy.counts),
            "copies stored for a 4xx (a retry will duplicate them)": dup_4xx,
            "lost": sum(1 for p in problems if p.startswith("lost")),
            "problems": len(problems),
        }
        if verbose:
            for k, v in report.items():
                print("soak: %s: %s" % (k, v))
            for p in problems[:20]:
                print("soak: PROBLEM " + p)
        return report, problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    a = ap.parse_args()
    report, problems = run(a.messages, a.sessions, a.seed)
    print("%d passed, %d failed" % (1 if not problems else 0, 1 if problems else 0))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
