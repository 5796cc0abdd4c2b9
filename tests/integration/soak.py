"""
soak - many messages through every backend while faults are injected per request, then count:
no recipient answered 2xx is missing from any store of its route, no stored copy is partial,
no 5xx for a transient fault; copies stored beyond the 2xx (what an MTA's retry duplicates)
are counted and printed.

    python3 tests/integration/soak.py --messages 20000 --sessions 10     (make soak)

Backends and their faults:
- "local": Maildir. By time: a thread swaps a random Maildir's tmp/ or new/ for a plain file
  for 50-150 ms (renameat2 RENAME_EXCHANGE, atomic), so deliveries in that window fail
  (ENOTDIR). A fault fired = a Maildir target answered 4xx (lmtpgw's delivery log).
- "inbox": a real Dovecot over IMAPS; "archive": the S3 server behind its strict front;
  "hook": a real HTTP receiver (raw format). Each sits behind a RequestFaultProxy that chooses
  faults per REQUEST, not per connection (lmtpgw pools its connections: a per-connection fault
  fires a handful of times a run): a request is what the client sends after the server last
  spoke. Now and then a request is armed with a fault: "reset" (cut it after a random number
  of bytes and reset both sides), "stall" (stop forwarding; the client must time out), or
  "drop_reply" (forward it whole, the store acts on it, then reset instead of passing on the
  answer: the store has the message, lmtpgw must say 4xx). A fault counts as fired only when
  it took effect on live traffic; an armed reset or stall whose request ended first moves on
  to the next request.
The soak fails when any kind of fault fired fewer than --min-faults times on any backend: a run
in which no fault fired shows nothing.

Each message carries a unique X-Soak-Id header, so every stored copy is attributed and compared
byte for byte with what was sent. The client is our own pipelined LMTP client, because
smtp-source does not report per-recipient replies.
"""
import argparse
import collections
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import Lmtpgw, cstr, split_trace, start_s3server  # noqa: E402
from dovecot import DovecotServer  # noqa: E402
from webhook_receiver import Receiver  # noqa: E402

USERS = ["alice", "bob", "carol"]
# domain -> the backends of its route (all must store for a 2xx)
ROUTES = {
    "example.test": ["local"],
    "imap.test": ["inbox"],
    "both.test": ["inbox", "local"],
    "s3.test": ["archive"],
    "hook.test": ["hook"],
    "all.test": ["local", "archive", "hook"],
}
NETWORK_FAULTS = ("reset", "stall", "drop_reply")
MAILDIR_FAULTS = ("tmp_blocked", "new_blocked")
ID_RE = re.compile(rb"^X-Soak-Id: (\S+)", re.M)


def content(sid, size):
    return ("X-Soak-Id: %s\r\nSubject: soak\r\n\r\n" % sid).encode() + \
        (b"y" * 78 + b"\r\n") * (size // 80)


# What RequestFaultProxy does with bytes it read (see pump in _serve).
FORWARD, SWALLOW, STOP = "forward", "swallow", "stop"


def _rst(sock):
    """Cut the connection now. shutdown() first: a close() alone does not end a connection
    while another thread is blocked in recv() on it (the kernel keeps the socket until that
    call returns), and the store would keep a session open for ever. With SO_LINGER 0 the
    final close then resets whatever is left."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class RequestFaultProxy:
    """TCP proxy on loopback that injects faults per request (see the module comment).

    every: a fault is armed on average once per `every` requests (the gap is random);
    kinds: the fault kinds in the order they are armed (cycled)."""

    def __init__(self, name, target_port, every=16, kinds=NETWORK_FAULTS, seed=1):
        self.name = name
        self.target = ("127.0.0.1", target_port)
        self.every = every
        self.kinds = list(kinds)
        self.rng = random.Random("%s-%s" % (seed, name))
        self.lock = threading.Lock()
        self.fired = collections.Counter()
        self.connections = 0
        self.requests = 0
        self.next_fault_at = self.rng.randint(1, 2 * every)
        self.kind_index = 0
        self.pending = None              # an armed fault that has not fired yet
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
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
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _new_request(self):
        """Called at the first bytes of each request: the fault it carries, or None."""
        with self.lock:
            self.requests += 1
            if self.pending is None and self.requests >= self.next_fault_at:
                kind = self.kinds[self.kind_index % len(self.kinds)]
                self.kind_index += 1
                self.next_fault_at = self.requests + self.rng.randint(1, 2 * self.every - 1)
                self.pending = (kind, self.rng.randint(0, 1500))
            fault, self.pending = self.pending, None
            return fault

    def _unfired(self, fault):
        """The request ended before an armed reset/stall took effect: arm the next one."""
        with self.lock:
            if self.pending is None:
                self.pending = fault

    def _serve(self, client):
        try:
            server = socket.create_connection(self.target, timeout=30)
        except OSError:
            _rst(client)
            return
        client.settimeout(None)
        server.settimeout(None)
        st = {"awaiting": True, "fault": None, "sent": 0, "dead": False, "stalled": False}
        lock = threading.Lock()

        def kill():
            st["dead"] = True
            _rst(client)
            _rst(server)

        def pump(src, dst, forward):
            """Copy src to dst until either side closes or the connection is killed; nothing
            moves while stalled. forward(data), called under lock, decides: FORWARD, SWALLOW
            (nothing of it goes on) or STOP (it killed the connection)."""
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    with lock:
                        if st["dead"]:
                            break
                        if st["stalled"]:
                            continue     # swallowed: the client must time out
                        verdict = forward(data)
                    if verdict is STOP:
                        break
                    if verdict is FORWARD:
                        dst.sendall(data)
            except OSError:
                pass
            with lock:
                if not st["dead"]:
                    kill()

        def request(data):               # client -> server
            if st["awaiting"]:
                st["awaiting"] = False
                if st["fault"] is not None:   # the last one never took effect
                    self._unfired(st["fault"])
                st["fault"] = self._new_request()
                st["sent"] = 0
            fault = st["fault"]
            if fault is not None and fault[0] in ("reset", "stall") and \
                    st["sent"] + len(data) > fault[1]:
                keep = fault[1] - st["sent"]
                if keep > 0:
                    server.sendall(data[:keep])
                with self.lock:
                    self.fired[fault[0]] += 1
                st["fault"] = None
                if fault[0] == "reset":
                    kill()
                    return STOP
                st["stalled"] = True
                return SWALLOW
            st["sent"] += len(data)
            return FORWARD

        def answer(data):                # server -> client
            fault = st["fault"]
            if not st["awaiting"] and fault is not None and fault[0] == "drop_reply":
                with self.lock:
                    self.fired["drop_reply"] += 1
                st["fault"] = None
                kill()
                return STOP
            if not st["awaiting"] and fault is not None:
                # an armed reset/stall whose request was shorter than its cut
                self._unfired(fault)
                st["fault"] = None
            st["awaiting"] = True
            return FORWARD

        t = threading.Thread(target=pump, args=(server, client, answer), daemon=True)
        t.start()
        pump(client, server, request)
        t.join()

    def close(self):
        self.stopping = True
        self.sock.close()


RENAME_EXCHANGE = 2
AT_FDCWD = -100


class MaildirFaults:
    """By time: swap a random existing Maildir's tmp/ or new/ with a plain file for a moment,
    atomically (renameat2 RENAME_EXCHANGE), then swap it back."""

    def __init__(self, root, seed=1, interval=0.15):
        self.root = root
        self.rng = random.Random("%s-maildir" % seed)
        self.interval = interval
        self.windows = collections.Counter()
        self.error = None
        self.stopping = False
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _exchange(self, a, b):
        if self.libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "renameat2(%s, %s, RENAME_EXCHANGE): %s" % (a, b, os.strerror(e)))

    def _maildirs(self):
        out = []
        for dom in os.listdir(self.root) if os.path.isdir(self.root) else []:
            for u in os.listdir(os.path.join(self.root, dom)):
                d = os.path.join(self.root, dom, u)
                if os.path.isdir(os.path.join(d, "new")):
                    out.append(d)
        return out

    def _run(self):
        while not self.stopping:
            time.sleep(self.interval * self.rng.uniform(0.5, 1.5))
            dirs = self._maildirs()
            if not dirs:
                continue
            d = self.rng.choice(dirs)
            sub = self.rng.choice(["tmp", "new"])
            blocker = os.path.join(d, ".soak-blocker-" + sub)
            try:
                open(blocker, "w").close()
                try:
                    self._exchange(os.path.join(d, sub), blocker)
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                        raise
                    # The Maildir changed under us (a creation that failed undoes what it
                    # made): nothing was swapped; try another one.
                    os.unlink(blocker)
                    continue
                try:
                    self.windows[sub + "_blocked"] += 1
                    time.sleep(self.rng.uniform(0.05, 0.15))
                finally:
                    self._exchange(os.path.join(d, sub), blocker)
                os.unlink(blocker)
            except Exception as e:       # e.g. EINVAL: this filesystem cannot exchange
                self.error = "%s: %s" % (type(e).__name__, e)
                return

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping = True
        self.thread.join()


def run(messages=2000, sessions=8, seed=1, min_faults=3, fault_every=16, verbose=True):
    rng = random.Random(seed)
    plan = []
    domains = sorted(ROUTES)
    for i in range(messages):
        rcpts = sorted({"%s@%s" % (rng.choice(USERS), rng.choice(domains))
                        for _ in range(rng.randint(1, 3))})
        plan.append(("soak-%d-%d" % (seed, i), rcpts, rng.randint(200, 20000)))
    sizes = {sid: size for sid, _r, size in plan}

    with contextlib.ExitStack() as stack:
        dc = stack.enter_context(DovecotServer(default_quota="10G", quotas={}))
        s3 = start_s3server()                  # started (or RealServerMissing)
        stack.callback(s3.stop)
        hook = stack.enter_context(Receiver(rule=lambda req: {"status": 200}))
        proxies = {
            "inbox": RequestFaultProxy("inbox", dc.imaps_port, every=fault_every, seed=seed),
            "archive": RequestFaultProxy("archive", s3.front_port, every=fault_every, seed=seed),
            "hook": RequestFaultProxy("hook", hook.port, every=fault_every, seed=seed),
        }
        gw = Lmtpgw(routes=[("*@" + dom, backends) for dom, backends in sorted(ROUTES.items())],
                    config={"delivery_deadline": "20s"})
        pw = os.path.join(gw.dir, "master.pw")
        with open(pw, "w") as f:
            f.write(dc.master[1] + "\n")
        creds = os.path.join(gw.dir, "s3.credentials")
        with open(creds, "w") as f:
            f.write("%s\n%s\n" % (s3.access_key, s3.secret_key))
        for p in (pw, creds):
            os.chmod(p, 0o600)
        gw.backends = (
            'inbox: { driver = "imap"; url = %s; ca_file = %s; login = %s; password_file = %s; '
            'timeout = "2s"; concurrency = 8; breaker_failures = 0; };\n'
            '  archive: { driver = "s3"; endpoint = %s; allow_http = true; bucket = %s; '
            'credentials_file = %s; timeout = "2s"; connect_timeout = "2s"; concurrency = 8; '
            'breaker_failures = 0; };\n'
            '  hook: { driver = "webhook"; url = %s; allow_http = true; format = "raw"; '
            'timeout = "2s"; concurrency = 8; breaker_failures = 0; };'
            % (cstr("imaps://localhost:%d" % proxies["inbox"].port), cstr(dc.ca_file),
               cstr(dc.master[0]), cstr(pw),
               cstr("http://127.0.0.1:%d" % proxies["archive"].port), cstr(s3.bucket),
               cstr(creds), cstr("http://127.0.0.1:%d/hook" % proxies["hook"].port)))
        gw.write_config()
        replies = {}          # (soak_id, rcpt) -> [code, ...]
        errors = []
        lock = threading.Lock()
        t0 = time.monotonic()
        with gw:
            mfaults = MaildirFaults(gw.maildir_root, seed=seed).start()

            def worker(part):
                try:
                    c = gw.session()
                    c.settimeout(120)
                    for sid, rcpts, size in part:
                        c.send(b"MAIL FROM:<soak@example.test>\r\n" +
                               b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts) +
                               b"DATA\r\n")
                        c.reply()
                        ok = [r for r in rcpts if c.reply().code == 250]
                        if c.reply().code != 354:
                            raise AssertionError("DATA refused")
                        c.send(content(sid, size) + b".\r\n")
                        for r in ok:
                            code = c.reply().code
                            with lock:
                                replies.setdefault((sid, r), []).append(code)
                    c.close()
                except Exception as e:       # reported as a problem, with the others
                    with lock:
                        errors.append("client: %r" % e)

            parts = [plan[k::sessions] for k in range(sessions)]
            threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            mfaults.stop()
            for p in proxies.values():
                p.close()
            elapsed = time.monotonic() - t0
            log = gw.log()

            # What is stored, per (soak id, rcpt or user, backend); partial copies separately.
            stored = collections.Counter()
            partial = []
            tmp_leftovers = 0
            for dom, backends in ROUTES.items():
                if "local" not in backends:
                    continue
                for u in USERS:
                    d = os.path.join(gw.maildir_root, dom, u)
                    for sub in ("new", "cur"):
                        sd = os.path.join(d, sub)
                        for name in os.listdir(sd) if os.path.isdir(sd) else []:
                            data = open(os.path.join(sd, name), "rb").read()
                            m = ID_RE.search(data)
                            if m is None:
                                partial.append("Maildir %s/%s: no X-Soak-Id" % (sd, name))
                                continue
                            sid = m.group(1).decode()
                            try:
                                split_trace(data, content(sid, sizes[sid]))
                            except AssertionError as e:
                                partial.append("Maildir %s/%s: %s" % (sd, name, e))
                                continue
                            stored[(sid, "%s@%s" % (u, dom), "local")] += 1
                    tmpd = os.path.join(d, "tmp")
                    tmp_leftovers += len(os.listdir(tmpd)) if os.path.isdir(tmpd) else 0
        # Dovecot refuses more than 10 sessions per user and address: let the sessions of the
        # run end (lmtpgw is stopped, the proxies cut) before the helpers log in.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(len(dc.session_pids(user=u)) > 5
                                                  for u in USERS):
            time.sleep(0.1)
        for u in USERS:
            for msg in dc.messages(u):
                m = ID_RE.search(msg.raw)
                if m is None:
                    partial.append("IMAP %s uid %s: no X-Soak-Id" % (u, msg.uid))
                    continue
                sid = m.group(1).decode()
                try:
                    split_trace(msg.raw, content(sid, sizes[sid]))
                except AssertionError as e:
                    partial.append("IMAP %s uid %s: %s" % (u, msg.uid, e))
                    continue
                stored[(sid, u, "inbox")] += 1
        # S3: the object under the content's SHA-256, whole, and a manifest naming each rcpt.
        keys = s3.keys()
        by_sha = collections.defaultdict(list)
        for k in keys:
            m = re.search(r"[0-9a-f]{64}", k)
            if m:
                by_sha[m.group(0)].append(k)
        s3_objects = 0
        s3_manifest_rcpts = collections.defaultdict(set)     # sid -> rcpts named
        for sid, size in sizes.items():
            sha = hashlib.sha256(content(sid, size)).hexdigest()
            for k in by_sha.get(sha, []):
                data = s3.get(k)
                if k.endswith(".eml"):
                    try:
                        split_trace(data, content(sid, size))
                    except AssertionError as e:
                        partial.append("S3 %s: %s" % (k, e))
                        continue
                    s3_objects += 1
                    stored[(sid, "*", "archive")] += 1
                else:
                    try:
                        manifest = json.loads(data)
                    except ValueError as e:
                        partial.append("S3 manifest %s: %s" % (k, e))
                        continue
                    text = json.dumps(manifest)
                    s3_manifest_rcpts[sid].update(r for r in re.findall(r"[a-z]+@[a-z0-9.]+", text)
                                                  if r.split("@")[1] in ROUTES)
        # Webhook: requests the receiver got whole (Content-Length matched); a cut upload is
        # not something a receiver would accept.
        hook_rcpts = collections.defaultdict(set)            # sid -> rcpts of whole requests
        hook_cut = 0
        for req in hook.requests:
            if len(req.body) != int(req.headers.get("Content-Length") or -1):
                hook_cut += 1
                continue
            m = ID_RE.search(req.body)
            if m is None:
                partial.append("webhook request without X-Soak-Id")
                continue
            sid = m.group(1).decode()
            try:
                split_trace(req.body, content(sid, sizes[sid]))
            except AssertionError as e:
                partial.append("webhook %s: %s" % (sid, e))
                continue
            stored[(sid, "*", "hook")] += 1
            hook_rcpts[sid].update(r.strip() for r in
                                   req.headers.get("X-Lmtpgw-Recipients", "").split(","))

        # --- the invariants ---
        counts = collections.Counter()
        problems = list(errors) + ["partial: " + p for p in partial]
        acked = collections.Counter()                # (sid, key, backend) -> 2xx replies
        for (sid, rcpt), codes in replies.items():
            user, dom = rcpt.split("@")
            for code in codes:
                counts["%dxx" % (code // 100)] += 1
                if code // 100 == 5:
                    problems.append("5xx for a transient fault: %s %s %d" % (sid, rcpt, code))
                if code // 100 != 2:
                    continue
                for b in ROUTES[dom]:
                    acked[(sid, {"local": rcpt, "inbox": user}.get(b, "*"), b)] += 1
                    if b == "archive" and rcpt not in s3_manifest_rcpts[sid]:
                        problems.append("lost: %s for %s: no S3 manifest names it" % (sid, rcpt))
                    if b == "hook" and rcpt not in hook_rcpts[sid]:
                        problems.append("lost: %s for %s: no whole webhook request names it"
                                        % (sid, rcpt))
        for (sid, who, b), n in acked.items():
            have = stored[(sid, who, b)]
            # S3 and the webhook store one copy per message for all its recipients.
            need = 1 if b in ("archive", "hook") else n
            if have < need:
                problems.append("lost: %s for %s in %s (%d copies < %d acknowledged)"
                                % (sid, who, b, have, need))
        extra = collections.Counter()
        for (sid, who, b), have in stored.items():
            need = acked[(sid, who, b)]
            if b in ("archive", "hook"):
                need = min(need, 1)
            if have > need:
                extra[b] += have - need
        fired = {name: dict((k, p.fired[k]) for k in NETWORK_FAULTS)
                 for name, p in proxies.items()}
        local_4xx = len(re.findall(r'targets="[^"]*\blocal:4\d\d', log))
        fired["local"] = {"4xx because tmp/ or new/ was blocked": local_4xx}
        too_few = []
        for name, kinds in fired.items():
            for kind, n in kinds.items():
                if n < min_faults:
                    too_few.append("%s %s fired %d times (< %d)" % (name, kind, n, min_faults))
        if mfaults.error:
            too_few.append("Maildir faults unavailable: %s" % mfaults.error)
        problems += ["too few faults: " + t for t in too_few]
        report = {
            "messages": messages, "sessions": sessions, "seconds": round(elapsed, 1),
            "recipient replies": dict(counts),
            "faults fired": fired,
            "maildir fault windows": dict(mfaults.windows),
            "requests through each proxy": {n: p.requests for n, p in proxies.items()},
            "connections through each proxy": {n: p.connections for n, p in proxies.items()},
            "copies stored beyond the 2xx (a retry will duplicate them)": dict(extra),
            "S3 objects": s3_objects,
            "webhook uploads cut before the end (not stored)": hook_cut,
            "files left in Maildir tmp/ by blocked renames": tmp_leftovers,
            "lost": sum(1 for p in problems if p.startswith("lost")),
            "partial": len(partial),
            "wrong 5xx": sum(1 for p in problems if p.startswith("5xx")),
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
    ap.add_argument("--min-faults", type=int, default=None,
                    help="fail unless each fault kind fired at least this often on each "
                         "backend (default: 3, or messages/500 when that is more)")
    a = ap.parse_args()
    min_faults = a.min_faults if a.min_faults is not None else max(3, a.messages // 500)
    print("soak: seed %d" % a.seed)
    report, problems = run(a.messages, a.sessions, a.seed, min_faults=min_faults)
    print("%d passed, %d failed, 0 skipped" % (1 if not problems else 0, 1 if problems else 0))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
