"""
s3server - start npm s3rver behind our strict S3 front (contrib/test-servers/s3/front.js) on
loopback for lmtpgw's integration tests.

    with S3Server() as s3:                 # temp dir, random ports, bucket "archive" created
        s3.endpoint                        # "http://127.0.0.1:<front port>" (checks SigV4 etc.)
        s3.access_key, s3.secret_key       # the one key pair the front accepts
        s3.keys()                          # every key in the bucket (read from s3rver directly)
        s3.get(key)                        # object bytes (from s3rver directly, unsigned)
        s3.head(key)                       # response headers of the object (x-amz-meta-*, ...)
        s3.fail(count=1, status=503, code="SlowDown")   # fault injection on the front
        s3.fail(count=1, status=500, code="InternalError", match=".manifests/")  # only URLs with it
        s3.cut(after=100000)               # cut the next upload after that many body bytes
        s3.nolock(True)                    # refuse Object Lock headers like a bucket without it
        s3.requests()                      # what the front saw: method, url, headers, status
    # leaving the block stops node by PID and removes the temp dir

Needs node and contrib/test-servers/s3/node_modules (`make check` runs the npm set-up; or
`cd contrib/test-servers/s3 && npm ci`); raises S3Unavailable otherwise (harness.start_s3server turns it into a RealServerMissing skip).
python3 stdlib only.
"""
import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse

import servers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRONT_DIR = os.path.join(ROOT, "contrib", "test-servers", "s3")

ACCESS_KEY = "AKIDLMTPGWTEST"
SECRET_KEY = "lmtpgw-test-secret-0123456789abcdefABCDEF"

_live = servers.Running()   # instances still running: stopped at exit or by harness.kill_all()
kill_all = _live.stop_all


class S3Unavailable(Exception):
    """node or the npm modules are missing."""


class S3Server:
    def __init__(self, bucket="archive", region="us-east-1", create_bucket=True):
        self.bucket = bucket
        self.region = region
        self.create_bucket = create_bucket
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.dir = None
        self.proc = None
        self.front_port = None
        self.store_port = None

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.front_port

    def start(self):
        node = shutil.which("node") or shutil.which("nodejs")
        if node is None:
            raise S3Unavailable("node is not installed (apt-get install nodejs)")
        if not os.path.isdir(os.path.join(FRONT_DIR, "node_modules", "s3rver")):
            raise S3Unavailable("npm modules missing: cd contrib/test-servers/s3 && npm ci")
        self.dir = tempfile.mkdtemp(prefix="lmtpgw-s3-")
        self.log_path = os.path.join(self.dir, "front.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [node, os.path.join(FRONT_DIR, "front.js"), "--dir", os.path.join(self.dir, "store"),
             "--keys", "%s:%s" % (self.access_key, self.secret_key), "--region", self.region],
            # stdin stays open and unused: when this process dies, node sees EOF and exits
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True)
        _live.append(self)
        os.makedirs(os.path.join(self.dir, "store"), exist_ok=True)
        deadline = time.time() + 20
        line = b""
        while time.time() < deadline and not line.endswith(b"\n"):
            r, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        if not line.endswith(b"\n"):
            self.stop()
            raise AssertionError("S3 front did not start: %s" % self.front_log()[-2000:])
        info = json.loads(line)
        self.front_port, self.store_port = info["front_port"], info["store_port"]
        if self.create_bucket:
            self.store("PUT", "/" + self.bucket, expect=200)
        return self

    def front_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, AttributeError):
            return ""

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc.stdout.close()
            self.proc.stdin.close()
            self.proc = None
            self._log.close()
        _live.discard(self)
        if self.dir and os.environ.get("LMTPGW_KEEP_TMP") is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # --- direct access to s3rver (unsigned: s3rver checks nothing) ---

    def store(self, method, path, body=None, expect=None):
        c = http.client.HTTPConnection("127.0.0.1", self.store_port, timeout=30)
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            data = r.read()
            if expect is not None and r.status != expect:
                raise AssertionError("s3rver %s %s: %d %r" % (method, path, r.status, data[:300]))
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
        finally:
            c.close()

    def _obj_path(self, key):
        return "/%s/%s" % (self.bucket, urllib.parse.quote(key, safe="/~"))

    def keys(self):
        # ListObjects (v1) with a marker: s3rver 3.7 answers 500 to a ListObjectsV2 whose
        # result is truncated (more than max-keys keys), so V2 fails past 1000 objects.
        out = []
        while True:
            q = "max-keys=1000" + ("&marker=" + urllib.parse.quote(out[-1], safe="") if out else "")
            _, _, data = self.store("GET", "/%s?%s" % (self.bucket, q), expect=200)
            text = data.decode("utf-8")
            page = [_xml_unescape(k) for k in re.findall(r"<Key>(.*?)</Key>", text, re.S)]
            out += page
            if not page or "<IsTruncated>true</IsTruncated>" not in text:
                return sorted(out)

    def get(self, key):
        _, _, data = self.store("GET", self._obj_path(key), expect=200)
        return data

    def head(self, key):
        _, headers, _ = self.store("HEAD", self._obj_path(key), expect=200)
        return headers

    def delete_bucket_contents(self):
        for k in self.keys():
            self.store("DELETE", self._obj_path(k))

    # --- the front's control endpoint ---

    def control(self, what, **params):
        c = http.client.HTTPConnection("127.0.0.1", self.front_port, timeout=10)
        try:
            q = urllib.parse.urlencode(params)
            c.request("GET" if what == "requests" else "POST",
                      "/_control/%s%s" % (what, "?" + q if q else ""))
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                raise AssertionError("front control %s: %d" % (what, r.status))
            return json.loads(data)
        finally:
            c.close()

    def fail(self, count=1, status=503, code="SlowDown", match=""):
        """The next count requests (only those whose URL contains match) get status/code."""
        self.control("fail", count=count, status=status, code=code, match=match)

    def cut(self, after):
        self.control("cut", after=after)

    def nolock(self, on=True):
        self.control("nolock", on=1 if on else 0)

    def reset(self):
        self.control("reset")

    def requests(self):
        return self.control("requests")


def _xml_unescape(s):
    return (s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
            .replace("&apos;", "'").replace("&amp;", "&"))
