#!/usr/bin/env python3
"""backends.py - lmtpgw's s3 and webhook backends beside a plain client (issues 4, 5, 7).

    python3 tests/bench/backends.py            # full run (~10 min)
    python3 tests/bench/backends.py --quick    # < 2 min
    options: --rounds N, --only s3|webhook, --build DIR (default build/, or $LMTPGW_BUILD),
             --signer botocore|own (plain S3 client; default botocore when installed)

Every server is started and stopped here (random 127.0.0.1 ports, stopped by PID). Each case
runs its two sides interleaved (A B A B ...; A = through lmtpgw, B = plain client), each side
for the same number of messages, and the table shows the median of the rounds.

  gw     Postfix `smtp-source -L -d -s 10` (10 LMTP sessions, each kept for all its messages)
         -> lmtpgw (build/lmtpgw, backend concurrency = 10) -> server
  plain  a Python client in its own process: 10 threads, one http.client keep-alive
         connection each, sending the same requests straight to the same server

S3 (server: npm s3rver behind our strict SigV4-verifying front, contrib/test-servers/s3, one
node process; the same server for both sides, a fresh bucket for every run):
  per message lmtpgw PUTs the object (key %{sha256}.eml, the default) and its envelope
  manifest (<key>.manifests/<envelope id>.json), both with If-None-Match: *, x-amz-checksum-sha256, x-amz-meta-*.
  The plain client PUTs, per message, the same two objects: the same sizes (measured from the
  gw run's objects) and the same header set (copied from the gw run's requests as the front
  logged them; Expect is not copied), SigV4-signed over the real payload hash with botocore's
  S3SigV4Auth (or a small signer of our own, cross-checked against botocore at start).
Webhook (server: a small node http receiver written by this script, answers 200 with an empty
body at once, counts requests, body bytes, distinct webhook-ids, connections):
  lmtpgw POSTs each message (format raw or json, mode message, one secret: signed). The plain
  client replays the gw run's captured request: same headers (webhook-id / Idempotency-Key
  made unique, the signature recomputed per request, HMAC-SHA256 as Standard Webhooks), same
  body bytes. Two more sides are a diagnostic outside the ratio (diag: sock, sock+expect): the
  same requests written by hand on the keep-alive sockets (one send per request), and the same
  with "Expect: 100-continue", waiting for the interim "100 Continue" before the body, as
  lmtpgw's libcurl 7.88 does on every upload (CURLOPT_UPLOAD), whatever its size: the cost of
  that extra round trip, with everything else equal.

Columns: msg/s (messages per second, wall clock of smtp-source or of the plain client's
sending, process start-up excluded), MB/s (stored object / POSTed body bytes per second),
gw-cpu (lmtpgw's utime+stime from /proc/PID/stat, all threads, per message), cli-cpu
(smtp-source's, or the plain client's own CPU per message), srv-cpu (the node server's CPU per
message), conns (TCP connections to the server opened during the run: ss -tan before/after for
S3, the receiver's own count for webhook; keep-alive means about 10), ratio = gw / plain
(median msg/s).

Every run is verified before it counts: smtp-source exits 0; lmtpgw logged exactly one
`result=ok` delivery per message and nothing else; for S3 the bucket holds exactly 2 objects
per message (the .eml and its manifest, listed from s3rver directly) and the plain client got 200
for every PUT; for webhook the receiver got exactly one request per message with a distinct
webhook-id each and the full body each time.

python3 stdlib (+ python3-botocore if installed); needs node and the npm modules of
contrib/test-servers/s3 (make check's set-up) and postfix (smtp-source).
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import http.client
import itertools
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

CLK = os.sysconf("SC_CLK_TCK")
DOMAIN = "bench.test"
SENDER = "sender@remote.test"
CONCURRENCY = 10

# --- the fast webhook receiver (node) -------------------------------------------------------

RECEIVER_JS = r"""
'use strict';
const http = require('http');
let st;
function reset() { st = { count: 0, bytes: 0, ids: new Set(), dup: 0, short: 0, conns: 0, capture: false, last: null }; }
reset();
const srv = http.createServer((req, res) => {
  if (req.url.startsWith('/_')) {
    req.resume();
    req.on('end', () => {
      let out = { ok: true };
      if (req.url === '/_reset') reset();
      else if (req.url === '/_capture') st.capture = true;
      else if (req.url === '/_last') out = st.last;
      else if (req.url === '/_stats') out = { count: st.count, bytes: st.bytes, unique: st.ids.size, dup: st.dup, short: st.short, conns: st.conns };
      const b = JSON.stringify(out);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(b) });
      res.end(b);
    });
    return;
  }
  const sock = req.socket;
  if (sock._bench !== st) { sock._bench = st; st.conns++; }
  const keep = st.capture;
  if (keep) st.capture = false;
  const chunks = [];
  let n = 0;
  req.on('data', (c) => { n += c.length; if (keep) chunks.push(c); });
  req.on('end', () => {
    const id = req.headers['webhook-id'] || '';
    st.count++; st.bytes += n;
    if (st.ids.has(id)) st.dup++; else st.ids.add(id);
    if (n !== Number(req.headers['content-length'])) st.short++;
    if (keep) st.last = { method: req.method, url: req.url, headers: req.rawHeaders, body: Buffer.concat(chunks).toString('base64') };
    res.writeHead(200, { 'Content-Length': 0 });
    res.end();
  });
});
srv.keepAliveTimeout = 120000;
srv.listen(0, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: srv.address().port }) + '\n'));
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
"""


class Receiver:
    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None

    def start(self):
        node = shutil.which("node") or shutil.which("nodejs")
        path = os.path.join(self.workdir, "receiver.js")
        with open(path, "w") as f:
            f.write(RECEIVER_JS)
        self.proc = subprocess.Popen([node, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        self.port = json.loads(line)["port"]
        return self

    @property
    def pid(self):
        return self.proc.pid

    def call(self, what, method="POST"):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request(method, "/_" + what)
            r = c.getresponse()
            return json.loads(r.read())
        finally:
            c.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# --- measurement helpers --------------------------------------------------------------------

def proc_cpu(pid):
    """utime + stime of a process (all its threads), seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def conn_set(port):
    """TCP connections (any state) with one end at 127.0.0.1:port, as (local, peer) pairs."""
    out = subprocess.run(["ss", "-tanH"], capture_output=True, text=True).stdout
    conns = set()
    suffix = ":%d" % port
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        local, peer = parts[3], parts[4]
        if local.endswith(suffix) or peer.endswith(suffix):
            conns.add(tuple(sorted((local, peer))))
    return conns


def run_wait(cmd, timeout):
    """Run cmd; returns (returncode, wall seconds, child CPU seconds, stdout, stderr)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        # read the pipes while waiting (no deadlock on full pipes), then reap with rusage
        out, err = p.stdout.read(), p.stderr.read()
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    p.stderr.close()
    return p.returncode, wall, ru.ru_utime + ru.ru_stime, out.decode(errors="replace"), err.decode(errors="replace")


def smtp_source(port, n, size):
    return ["smtp-source", "-L", "-d", "-s", str(CONCURRENCY), "-m", str(n), "-l", str(size),
            "-f", SENDER, "-t", "r1@" + DOMAIN, "127.0.0.1:%d" % port]


def check_gw_log(gw, n):
    results = {}
    for line in gw.grep(r"event=delivery "):
        m = re.search(r" result=(\w+)", line)
        results[m.group(1) if m else "?"] = results.get(m.group(1) if m else "?", 0) + 1
    if results != {"ok": n}:
        bad = [l for l in gw.grep(r"event=delivery ") if " result=ok" not in l][:3]
        raise AssertionError("lmtpgw deliveries %s, expected {'ok': %d}; e.g. %s" % (results, n, bad))
    also = gw.grep(r"already-stored|event=s3_key_exists")
    if also:
        raise AssertionError("duplicate content in the run (%d): %s" % (len(also), also[0]))


def file_create_cost(d):
    t0 = time.perf_counter()
    for i in range(50):
        with open(os.path.join(d, "probe-%d" % i), "w"):
            pass
    us = (time.perf_counter() - t0) / 50 * 1e6
    for i in range(50):
        os.unlink(os.path.join(d, "probe-%d" % i))
    return us


# --- SigV4: botocore, or a small signer of our own -----------------------------------------

def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def own_sign(method, host, path, headers, payload_hash, ak, sk, region, amzdate):
    """Headers (lowercase names) -> the Authorization value; every header given is signed.
    path must already be URI-encoded (S3: encoded once)."""
    names = sorted(headers)
    canon_headers = "".join("%s:%s\n" % (n, " ".join(str(headers[n]).split())) for n in names)
    signed = ";".join(names)
    creq = "\n".join([method, path, "", canon_headers, signed, payload_hash])
    scope = "%s/%s/s3/aws4_request" % (amzdate[:8], region)
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
    k = _hmac(("AWS4" + sk).encode(), amzdate[:8])
    k = _hmac(_hmac(_hmac(k, region), "s3"), "aws4_request")
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    return "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (ak, scope, signed, sig)


def have_botocore():
    try:
        import botocore.auth  # noqa: F401
        return True
    except ImportError:
        return False


class Signer:
    def __init__(self, kind, endpoint, ak, sk, region):
        self.kind = kind
        self.endpoint = endpoint
        self.host = urllib.parse.urlsplit(endpoint).netloc
        self.ak, self.sk, self.region = ak, sk, region
        if kind == "botocore":
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
            self._req = AWSRequest
            self._auth = S3SigV4Auth(Credentials(ak, sk), "s3", region)

    def sign(self, method, path, headers, body, payload_hash):
        """headers: lowercase name -> value (without host, x-amz-date, authorization,
        x-amz-content-sha256); returns the headers to send."""
        if self.kind == "botocore":
            req = self._req(method=method, url=self.endpoint + path, data=body, headers=headers)
            # S3SigV4Auth hashes the body itself (payload_hash is not used) and signs every header
            self._auth.add_auth(req)
            return dict(req.headers.items())
        amzdate = datetime.datetime.utcnow().strftime("%Y%m%dT%H%M%SZ")
        h = dict(headers)
        h["host"] = self.host
        h["x-amz-date"] = amzdate
        h["x-amz-content-sha256"] = payload_hash
        h["authorization"] = own_sign(method, self.host, path, {k: v for k, v in h.items()},
                                      payload_hash, self.ak, self.sk, self.region, amzdate)
        del h["host"]  # http.client adds it
        return h


# --- the plain clients (run in a child process: python3 backends.py --plain SPECFILE) -------

def plain_main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    n, conc = spec["n"], spec["concurrency"]
    host, port = spec["host"], spec["port"]
    counter = itertools.count()
    statuses = {}
    errors = []
    lock = threading.Lock()

    if spec["kind"] == "s3":
        signer = Signer(spec["signer"], "http://%s:%d" % (host, port), spec["access_key"],
                        spec["secret_key"], spec["region"])
        obj_size, man_size = spec["obj_size"], spec["man_size"]
        obj_headers, man_headers = spec["obj_headers"], spec["man_headers"]
        filler_line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWX\r\n"
        filler = (filler_line * (obj_size // len(filler_line) + 2))
        man_filler = b" " * (man_size + 100)
        bucket = spec["bucket"]

        def one(conn, i):
            head = b"Received: by plain-client id %08d\r\n" % i
            body = head + filler[:obj_size - len(head)]
            digest = hashlib.sha256(body).digest()
            key = digest.hex() + ".eml"
            # the manifest key has lmtpgw's shape: <key>.manifests/<64 hex envelope id>.json
            man_key = "%s.manifests/%s.json" % (key, hashlib.sha256(b"envelope %d" % i).hexdigest())
            for k, b, hdrs in ((key, body, obj_headers), (man_key, None, man_headers)):
                if b is None:
                    doc = b'{"object":{"key":"%s","n":%d},"pad":"' % (key.encode(), i)
                    b = doc + man_filler[:man_size - len(doc) - 2] + b'"}'
                    d = hashlib.sha256(b).digest()
                else:
                    d = digest
                h = dict(hdrs)
                h["x-amz-checksum-sha256"] = base64.b64encode(d).decode()
                h["content-length"] = str(len(b))
                path = "/%s/%s" % (bucket, k)
                send = signer.sign("PUT", path, h, b, d.hex())
                conn.request("PUT", path, body=b, headers=send)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise AssertionError("PUT %s: %d" % (k, r.status))
                with lock:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
    else:
        method, url = spec["method"], spec["url"]
        body = base64.b64decode(spec["body"])
        key = base64.b64decode(spec["secret"]) if spec.get("secret") else None
        base = [(k, v) for k, v in spec["headers"]
                if k.lower() not in ("host", "content-length", "webhook-id", "idempotency-key",
                                     "webhook-signature", "webhook-timestamp", "expect")]
        run_id = "%08x" % (os.getpid() ^ int(time.time()))

        def one(conn, i):
            msg_id = "msg_%s%056d" % (run_id, i)
            ts = str(int(time.time()))
            h = dict(base)
            h["webhook-id"] = msg_id
            h["Idempotency-Key"] = msg_id
            h["webhook-timestamp"] = ts
            if key is not None:
                mac = hmac.new(key, ("%s.%s." % (msg_id, ts)).encode() + body, hashlib.sha256)
                h["webhook-signature"] = "v1," + base64.b64encode(mac.digest()).decode()
            h["Content-Length"] = str(len(body))
            if spec.get("sock"):
                # hand-written HTTP/1.1 on the same keep-alive socket; with expect as libcurl
                # does for uploads: headers, wait for "100 Continue", then the body
                if spec.get("expect"):
                    h["Expect"] = "100-continue"
                if conn.sock is None:
                    conn.connect()
                sock = conn.sock
                head = "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (
                    method, url, host, port, "".join("%s: %s\r\n" % kv for kv in h.items()))
                if spec.get("expect"):
                    sock.sendall(head.encode())
                    interim = b""
                    while b"\r\n\r\n" not in interim:
                        chunk = sock.recv(4096)
                        if not chunk:
                            raise AssertionError("closed before 100 Continue")
                        interim += chunk
                    if not interim.startswith(b"HTTP/1.1 100"):
                        raise AssertionError("no 100 Continue: %r" % interim[:100])
                    sock.sendall(body)
                else:
                    sock.sendall(head.encode() + body)
                r = http.client.HTTPResponse(sock, method=method)
                r.begin()
                r.read()
            else:
                conn.request(method, url, body=body, headers=h)
                r = conn.getresponse()
                r.read()
            if r.status != 200:
                raise AssertionError("POST: %d" % r.status)
            with lock:
                statuses[r.status] = statuses.get(r.status, 0) + 1

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            while True:
                i = next(counter)
                if i >= n:
                    return
                one(conn, i)
        except Exception as e:  # noqa: BLE001 - reported, the run then fails verification
            with lock:
                errors.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    print(json.dumps({"wall": wall, "cpu": cpu, "statuses": statuses, "errors": errors[:5]}))


def run_plain(spec, workdir):
    path = os.path.join(workdir, "plain-spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    rc, _wall, _cpu, out, err = run_wait([sys.executable, os.path.abspath(__file__), "--plain", path], 600)
    if rc != 0:
        raise AssertionError("plain client failed (%d): %s" % (rc, err[-2000:]))
    res = json.loads(out.strip().splitlines()[-1])
    if res["errors"] or res["statuses"] != {"200": spec["expect_requests"]}:
        raise AssertionError("plain client: statuses %s errors %s" % (res["statuses"], res["errors"]))
    return res


# --- S3 -------------------------------------------------------------------------------------

def list_objects(s3, bucket):
    """{key: size} of a bucket, read from s3rver directly. ListObjects V1 with markers: s3rver
    3.7 answers 500 to a V2 listing (list-type=2) of more than 1000 keys."""
    out, marker = {}, None
    while True:
        q = "max-keys=1000" + ("&marker=" + urllib.parse.quote(marker, safe="") if marker else "")
        _, _, data = s3.store("GET", "/%s?%s" % (bucket, q), expect=200)
        text = data.decode("utf-8")
        keys = []
        for c in re.findall(r"<Contents>(.*?)</Contents>", text, re.S):
            k = re.search(r"<Key>(.*?)</Key>", c, re.S).group(1)
            out[k] = int(re.search(r"<Size>(\d+)</Size>", c).group(1))
            keys.append(k)
        if "<IsTruncated>true</IsTruncated>" not in text or not keys:
            return out
        marker = keys[-1]


def check_bucket(s3, bucket, n):
    objs = list_objects(s3, bucket)
    eml = {k: v for k, v in objs.items() if k.endswith(".eml")}
    man = {k: v for k, v in objs.items() if ".eml.manifests/" in k and k.endswith(".json")}
    if len(eml) != n or len(man) != n or len(objs) != 2 * n or \
            set(k.split(".manifests/")[0] for k in man) != set(eml):
        raise AssertionError("bucket %s: %d objects, %d .eml, %d manifests; expected %d of each"
                             % (bucket, len(objs), len(eml), len(man), n))
    return statistics.mean(eml.values()), statistics.mean(man.values())


class S3Case:
    def __init__(self, args, s3, workdir, size, n):
        self.args, self.s3, self.workdir, self.size, self.n = args, s3, workdir, size, n
        self.template = None     # sizes and headers learnt from the first gw run
        self.seq = itertools.count(1)
        self.creds = os.path.join(workdir, "s3.credentials")
        with open(self.creds, "w") as f:
            f.write("%s\n%s\n" % (s3.access_key, s3.secret_key))
        os.chmod(self.creds, 0o600)

    def new_bucket(self, side):
        b = "bench-%s-%d-%d" % (side, self.size, next(self.seq))
        self.s3.store("PUT", "/" + b, expect=200)
        return b

    def run_gw(self):
        from harness import Lmtpgw, conf_value
        bucket = self.new_bucket("gw")
        settings = {"driver": "s3", "endpoint": self.s3.endpoint, "allow_http": True,
                    "bucket": bucket, "credentials_file": self.creds, "concurrency": CONCURRENCY,
                    "timeout": "60s", "connect_timeout": "5s"}
        backend = "archive: { %s };" % " ".join("%s = %s;" % (k, conf_value(v)) for k, v in settings.items())
        gw = Lmtpgw(backends=backend, routes=[("*@" + DOMAIN, ["archive"])])
        with gw:
            self.s3.reset()
            before = conn_set(self.s3.front_port)
            node0, gw0 = proc_cpu(self.s3.proc.pid), proc_cpu(gw.pid)
            rc, wall, cli_cpu, out, err = run_wait(smtp_source(gw.port, self.n, self.size), 600)
            node1, gw1 = proc_cpu(self.s3.proc.pid), proc_cpu(gw.pid)
            conns = len(conn_set(self.s3.front_port) - before)
            if rc != 0:
                raise AssertionError("smtp-source exited %d: %s %s\n%s" % (rc, out[-500:], err[-500:], gw.log()[-1500:]))
            check_gw_log(gw, self.n)
            reqs = self.s3.requests()
        eml, man = check_bucket(self.s3, bucket, self.n)
        if self.template is None:
            puts = [r for r in reqs if r["method"] == "PUT"]
            obj = [r for r in puts if r["url"].endswith(".eml")][-1]["headers"]
            mf = [r for r in puts if r["url"].endswith(".json")][-1]["headers"]
            drop = ("host", "authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-checksum-sha256",
                    "content-length", "expect", "user-agent", "accept", "connection")
            self.template = {
                "obj_size": round(eml), "man_size": round(man),
                "obj_headers": {k: v for k, v in obj.items() if k not in drop},
                "man_headers": {k: v for k, v in mf.items() if k not in drop},
                "gw_obj_headers": obj, "gw_man_headers": mf,
            }
        return {"wall": wall, "msgs": self.n, "bytes": eml * self.n, "gw_cpu": gw1 - gw0,
                "cli_cpu": cli_cpu, "srv_cpu": node1 - node0, "conns": conns,
                "reqs": len([r for r in reqs if r["method"] == "PUT"])}

    def run_plain(self):
        bucket = self.new_bucket("plain")
        t = self.template
        spec = {"kind": "s3", "n": self.n, "concurrency": CONCURRENCY, "host": "127.0.0.1",
                "port": self.s3.front_port, "bucket": bucket, "signer": self.args.signer,
                "access_key": self.s3.access_key, "secret_key": self.s3.secret_key,
                "region": self.s3.region, "obj_size": t["obj_size"], "man_size": t["man_size"],
                "obj_headers": t["obj_headers"], "man_headers": t["man_headers"],
                "expect_requests": 2 * self.n}
        before = conn_set(self.s3.front_port)
        node0 = proc_cpu(self.s3.proc.pid)
        res = run_plain(spec, self.workdir)
        node1 = proc_cpu(self.s3.proc.pid)
        conns = len(conn_set(self.s3.front_port) - before)
        eml, _man = check_bucket(self.s3, bucket, self.n)
        return {"wall": res["wall"], "msgs": self.n, "bytes": eml * self.n, "gw_cpu": None,
                "cli_cpu": res["cpu"], "srv_cpu": node1 - node0, "conns": conns}


# --- webhook --------------------------------------------------------------------------------

class WebhookCase:
    def __init__(self, args, recv, workdir, fmt, size, n):
        self.args, self.recv, self.workdir, self.fmt, self.size, self.n = args, recv, workdir, fmt, size, n
        self.captured = None
        self.secret = b"bench-secret-" + os.urandom(8).hex().encode()
        self.secret_file = os.path.join(workdir, "webhook-%s-%d.secret" % (fmt, size))
        with open(self.secret_file, "wb") as f:
            f.write(self.secret + b"\n")
        os.chmod(self.secret_file, 0o600)

    def run_gw(self):
        from harness import Lmtpgw, conf_value
        settings = {"driver": "webhook", "url": "http://127.0.0.1:%d/hook" % self.recv.port,
                    "allow_http": True, "format": self.fmt, "mode": "message",
                    "secret_files": [self.secret_file], "concurrency": CONCURRENCY,
                    "timeout": "60s", "connect_timeout": "5s"}
        backend = "hook: { %s };" % " ".join("%s = %s;" % (k, conf_value(v)) for k, v in settings.items())
        gw = Lmtpgw(backends=backend, routes=[("*@" + DOMAIN, ["hook"])])
        with gw:
            self.recv.call("reset")
            if self.captured is None:
                self.recv.call("capture")
            node0, gw0 = proc_cpu(self.recv.pid), proc_cpu(gw.pid)
            rc, wall, cli_cpu, out, err = run_wait(smtp_source(gw.port, self.n, self.size), 600)
            node1, gw1 = proc_cpu(self.recv.pid), proc_cpu(gw.pid)
            if rc != 0:
                raise AssertionError("smtp-source exited %d: %s %s\n%s" % (rc, out[-500:], err[-500:], gw.log()[-1500:]))
            check_gw_log(gw, self.n)
            st = self.recv.call("stats", "GET")
        self.check(st)
        if self.captured is None:
            self.captured = self.recv.call("last", "GET")
        return {"wall": wall, "msgs": self.n, "bytes": st["bytes"], "gw_cpu": gw1 - gw0,
                "cli_cpu": cli_cpu, "srv_cpu": node1 - node0, "conns": st["conns"]}

    def check(self, st):
        if st["count"] != self.n or st["unique"] != self.n or st["dup"] or st["short"]:
            raise AssertionError("receiver: %s, expected %d requests with distinct ids" % (st, self.n))

    def run_plain(self, sock=False, expect=False):
        c = self.captured
        raw = c["headers"]
        headers = [(raw[i], raw[i + 1]) for i in range(0, len(raw), 2)]
        spec = {"kind": "webhook", "n": self.n, "concurrency": CONCURRENCY, "host": "127.0.0.1",
                "port": self.recv.port, "method": c["method"], "url": c["url"], "headers": headers,
                "body": c["body"], "secret": base64.b64encode(self.secret).decode(),
                "expect_requests": self.n, "sock": sock, "expect": expect}
        self.recv.call("reset")
        node0 = proc_cpu(self.recv.pid)
        res = run_plain(spec, self.workdir)
        node1 = proc_cpu(self.recv.pid)
        st = self.recv.call("stats", "GET")
        self.check(st)
        return {"wall": res["wall"], "msgs": self.n, "bytes": st["bytes"], "gw_cpu": None,
                "cli_cpu": res["cpu"], "srv_cpu": node1 - node0, "conns": st["conns"]}


# --- driver ---------------------------------------------------------------------------------

def warm(case, n):
    """One unmeasured run of each side with a quarter of the messages: node's JIT, the page
    cache and the template of the plain client's requests (learnt from the first gw run)."""
    case.n, n0 = max(20, n // 4), case.n
    try:
        case.run_gw()
        case.run_plain()
    finally:
        case.n = n0


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs):
    rates = [r["msgs"] / r["wall"] for r in runs]
    return {
        "msgs": median(rates),
        "mbs": median([r["bytes"] / r["wall"] / 1e6 for r in runs]),
        "gw_us": median([r["gw_cpu"] / r["msgs"] * 1e6 if r["gw_cpu"] is not None else None for r in runs]),
        "cli_us": median([r["cli_cpu"] / r["msgs"] * 1e6 for r in runs]),
        "srv_us": median([r["srv_cpu"] / r["msgs"] * 1e6 for r in runs]),
        "conns": median([r["conns"] for r in runs]),
        "rates": rates,
    }


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def machine():
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 1048576)
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return "%d vCPU (%s), %s RAM, Linux %s, Python %s, node %s" % (
        os.cpu_count(), cpu, mem, platform.release(), platform.python_version(), node)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--only", choices=["s3", "webhook"])
    ap.add_argument("--build")
    ap.add_argument("--signer", choices=["botocore", "own"])
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    args = ap.parse_args()
    if args.plain:
        return plain_main(args.plain)
    if args.build:
        os.environ["LMTPGW_BUILD"] = os.path.abspath(args.build)
    if args.signer is None:
        args.signer = "botocore" if have_botocore() else "own"
    rounds = args.rounds or 3 if args.quick else args.rounds or 5
    if args.quick:
        s3_sizes = [(1024, 600), (65536, 300)]
        hook_cases = [("raw", 1024, 5000), ("json", 1024, 5000)]
    else:
        s3_sizes = [(1024, 2000), (65536, 1000)]
        hook_cases = [("raw", 1024, 20000), ("json", 1024, 20000), ("raw", 65536, 4000), ("json", 65536, 4000)]

    s3_sizes = [(size, max(20, int(n * args.scale))) for size, n in s3_sizes]
    hook_cases = [(f, size, max(20, int(n * args.scale))) for f, size, n in hook_cases]
    import harness
    from s3server import S3Server, S3Unavailable
    for tool in ("smtp-source", "node", "ss"):
        if shutil.which(tool) is None:
            sys.exit("backends.py: %s is not installed" % tool)
    if not os.access(harness.binary(), os.X_OK):
        sys.exit("backends.py: %s missing: run make" % harness.binary())

    workdir = tempfile.mkdtemp(prefix="lmtpgw-bench-backends-")
    started = time.time()
    print("machine: %s" % machine())
    src = os.path.dirname(os.path.dirname(harness.binary()))
    git = subprocess.run(["git", "-C", src, "describe", "--always", "--dirty"], capture_output=True, text=True)
    print("lmtpgw:  %s (%s, built %s)" % (
        harness.binary(), "git " + git.stdout.strip() if git.returncode == 0 else "not a git tree",
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.stat(harness.binary()).st_mtime))))
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    print("rounds:  %d, concurrency %d, plain S3 signer: %s" % (rounds, CONCURRENCY, args.signer))
    us = file_create_cost(tempfile.gettempdir())
    print("file create cost in %s: %.0f us%s" % (tempfile.gettempdir(), us,
                                                "  WARNING: high (recent mass delete?)" if us > 100 else ""))
    sys.stdout.flush()
    results = []   # (case label, size, gw summary, plain summary, extra)
    s3 = recv = None
    try:
        if args.only in (None, "s3"):
            s3 = S3Server()
            try:
                s3.start()
            except S3Unavailable as e:
                sys.exit("backends.py: S3 test server unavailable: %s" % e)
            for size, n in s3_sizes:
                case = S3Case(args, s3, workdir, size, n)
                warm(case, n)
                gw_runs, plain_runs = [], []
                for r in range(rounds):
                    gw_runs.append(case.run_gw())
                    plain_runs.append(case.run_plain())
                    print("  s3 %6d B round %d: gw %7.1f msg/s (%d conns)  plain %7.1f msg/s (%d conns)" % (
                        size, r + 1, gw_runs[-1]["msgs"] / gw_runs[-1]["wall"], gw_runs[-1]["conns"],
                        plain_runs[-1]["msgs"] / plain_runs[-1]["wall"], plain_runs[-1]["conns"]))
                    sys.stdout.flush()
                t = case.template
                results.append(("s3", size, n, summarize(gw_runs), summarize(plain_runs),
                                "objects %d+%d B, %d PUTs/msg" % (t["obj_size"], t["man_size"], 2), None))
                if size == s3_sizes[0][0]:
                    print("  lmtpgw's object PUT headers: %s" % ", ".join(
                        "%s" % k for k in sorted(t["gw_obj_headers"])))
            s3.stop()
            s3 = None
        if args.only in (None, "webhook"):
            recv = Receiver(workdir).start()
            for fmt_name, size, n in hook_cases:
                case = WebhookCase(args, recv, workdir, fmt_name, size, n)
                warm(case, n)
                gw_runs, plain_runs, sock_runs, expect_runs = [], [], [], []
                for r in range(rounds):
                    gw_runs.append(case.run_gw())
                    plain_runs.append(case.run_plain())
                    sock_runs.append(case.run_plain(sock=True))
                    expect_runs.append(case.run_plain(sock=True, expect=True))
                    rate = lambda x: x[-1]["msgs"] / x[-1]["wall"]
                    print("  webhook %-4s %6d B round %d: gw %7.1f msg/s (%d conns)  plain %7.1f msg/s (%d conns)"
                          "  sock %7.1f  sock+expect %7.1f msg/s" % (
                              fmt_name, size, r + 1, rate(gw_runs), gw_runs[-1]["conns"],
                              rate(plain_runs), plain_runs[-1]["conns"], rate(sock_runs), rate(expect_runs)))
                    sys.stdout.flush()
                body = len(base64.b64decode(case.captured["body"]))
                results.append(("webhook " + fmt_name, size, n, summarize(gw_runs), summarize(plain_runs),
                                "body %d B, %d headers" % (body, len(case.captured["headers"]) // 2),
                                (summarize(sock_runs), summarize(expect_runs))))
            recv.stop()
            recv = None
    finally:
        if s3 is not None:
            s3.stop()
        if recv is not None:
            recv.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    hdr = "| case | msg size | msgs/run | side | msg/s | MB/s | gw-cpu us/msg | cli-cpu us/msg | srv-cpu us/msg | conns | ratio gw/plain |"
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    out = []
    for label, size, n, g, p, extra, e in results:
        ratio = g["msgs"] / p["msgs"]
        size_s = "%d KB" % (size // 1024)
        sides = [("lmtpgw", g), ("plain", p)] + ([("diag: sock", e[0]), ("diag: sock+expect", e[1])] if e else [])
        for side, s in sides:
            print("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                label, size_s, n, side, fmt(s["msgs"], ".0f"), fmt(s["mbs"], ".2f"),
                fmt(s["gw_us"], ".0f"), fmt(s["cli_us"], ".0f"), fmt(s["srv_us"], ".0f"),
                fmt(s["conns"], ".0f"), "%.2f" % ratio if side == "lmtpgw" else ""))
        out.append({"case": label, "size": size, "n": n, "gw": g, "plain": p, "ratio": ratio, "note": extra,
                    "plain_expect": e})
    print()
    for o in out:
        print("%s %d KB: %s; ratio %.2f (per-round gw %s, plain %s)" % (
            o["case"], o["size"] // 1024, o["note"], o["ratio"],
            " ".join("%.0f" % x for x in o["gw"]["rates"]), " ".join("%.0f" % x for x in o["plain"]["rates"])))
        if o["plain_expect"]:
            a, b = o["plain_expect"]
            print("    diagnostic, hand-written client: %.0f msg/s, with Expect: 100-continue (as lmtpgw's libcurl"
                  " sends on every upload) %.0f msg/s: x%.2f" % (a["msgs"], b["msgs"], b["msgs"] / a["msgs"]))
    print("load average at end: %.2f %.2f %.2f" % os.getloadavg())
    print("total time %.0f s" % (time.time() - started))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rounds": rounds, "results": out}, f, indent=1)


if __name__ == "__main__":
    main()
