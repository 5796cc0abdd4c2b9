#!/usr/bin/env python3
"""growth.py - does lmtpgw's memory grow over a long run? (issue 7: "no growth over a
100000-message run")

    python3 tests/bench/growth.py                          # both backends, 100000 messages each
    python3 tests/bench/growth.py --backend discard        # one backend
    python3 tests/bench/growth.py --messages 20000 --chunks 5 --json FILE

For each backend (`discard`; `maildir` with fsync = true under the temp dir) it starts its own
lmtpgw (a copy of --binary in a temp dir, so a rebuild of build/ cannot disturb the run; 127.0.0.1,
random port; log_level info into a file; `run_as_root = true` as root, as run.py does) and
drives --messages 1 KB messages with Postfix `smtp-source -L -d -s 10 -m N -l 1000` in
--chunks consecutive chunks against the same process. After each chunk (once lmtpgw has logged
every delivery and --settle seconds have passed) it reads lmtpgw's VmRSS and VmHWM
(/proc/PID/status), its open fds (/proc/PID/fd), its threads and the number of files in its
spool dir.

Every chunk is verified: smtp-source exits 0; the log holds exactly as many `result=ok`
deliveries as messages sent so far and no other delivery; for maildir the recipient's new/
holds exactly one file per message sent so far (the files are kept: 100000 x ~1.3 KB; with
--delete-mail they are deleted after each chunk's figures are taken).

Verdict per backend: growth = VmRSS after the last chunk - VmRSS after the first chunk. PASS
when growth < --limit-mb (1 MB) and fds, threads and spool files after the last chunk are not
above their values after the first chunk; FAIL otherwise (exit status 1).

Everything is started and stopped here by PID. python3 stdlib only. Needs postfix (smtp-source).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import ROOT, DOMAIN, free_port, cstr, stop_pid, wait_accepting, count_files  # noqa: E402

SIZE = 1000          # smtp-source -l
SESSIONS = 10        # smtp-source -s
RCPT = "growth"      # every message goes to growth@bench.test


def proc_status(pid):
    """Fields of /proc/PID/status as {name: str}, {} when the process is gone."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def kb(status, key):
    v = status.get(key, "0 kB").split()
    return int(v[0]) if v else 0


def count_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def count_tree(d):
    """Files (not directories) anywhere under d."""
    n = 0
    for _, _, files in os.walk(d):
        n += len(files)
    return n


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


class Gateway:
    """One lmtpgw -f with one backend for *@bench.test, its log in work/lmtpgw.log."""

    def __init__(self, work, backend, binary):
        self.work = os.path.join(work, "gw-" + backend)
        os.makedirs(self.work)
        self.backend = backend
        self.binary = binary
        self.spool = os.path.join(self.work, "spool")
        os.makedirs(self.spool)
        self.mail = os.path.join(self.work, "mail")
        self.log = os.path.join(self.work, "lmtpgw.log")
        self.proc = None
        self.fh = None
        self.log_pos = 0

    def start(self):
        if self.backend == "discard":
            block = 'b: { driver = "discard"; };'
        elif self.backend == "maildir":
            block = ('b: { driver = "maildir"; path = %s; fsync = true; };'
                     % cstr(self.mail + "/%{local}"))
        else:
            raise ValueError(self.backend)
        with open(self.binary, "rb") as f:
            as_root = os.geteuid() == 0 and b"run_as_root" in f.read()
        conf = os.path.join(self.work, "lmtpgw.conf")
        with open(conf, "w") as f:
            if as_root:
                f.write("run_as_root = true;\n")
            f.write("hostname = \"gw.bench.test\";\nspool_dir = %s;\nlog_level = \"info\";\n"
                    "backends: { %s };\nroutes = ( { match = \"*@%s\"; deliver = [ \"b\" ]; } );\n"
                    % (cstr(self.spool), block, DOMAIN))
        self.addr = "127.0.0.1:%d" % free_port()
        self.fh = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "-f", "-c", conf, "--listen", self.addr],
                                     stdout=self.fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.work)
        wait_accepting(self.addr, self.proc)

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc)
            if self.proc.returncode not in (0, None):
                print("warning: lmtpgw (%s) exited with %s" % (self.backend, self.proc.returncode))
        if self.fh:
            self.fh.close()

    def count_log(self):
        """(ok, all) deliveries logged since the last call; reads only whole lines."""
        with open(self.log, "rb") as f:
            f.seek(self.log_pos)
            data = f.read()
        end = data.rfind(b"\n") + 1
        data = data[:end]
        self.log_pos += end
        ok = len(re.findall(rb"event=delivery .* result=ok ", data))
        alld = len(re.findall(rb"event=delivery ", data))
        bad = [l for l in data.split(b"\n") if b"event=delivery" in l and b"result=ok " not in l]
        return ok, alld, bad[:1]

    def figures(self):
        pid = self.proc.pid
        st = proc_status(pid)
        return {"rss_kb": kb(st, "VmRSS"), "hwm_kb": kb(st, "VmHWM"),
                "anon_kb": kb(st, "RssAnon"), "data_kb": kb(st, "VmData"),
                "fds": count_fds(pid), "threads": int(st.get("Threads", "-1")),
                "spool_files": count_tree(self.spool)}


def smtp_source(addr, msgs):
    cmd = ["smtp-source", "-L", "-d", "-s", str(SESSIONS), "-m", str(msgs), "-l", str(SIZE),
           "-M", "client.bench.test", "-f", "sender@" + DOMAIN,
           "-t", "%s@%s" % (RCPT, DOMAIN), addr]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0, p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def chunk_sizes(total, chunks):
    base, extra = divmod(total, chunks)
    return [base + (1 if i < extra else 0) for i in range(chunks)]


def run_backend(work, backend, binary, a):
    """Run all chunks against one lmtpgw. Returns (rows, verdict dict)."""
    gw = Gateway(work, backend, binary)
    rows = []
    sent = ok_total = 0
    newdir = os.path.join(gw.mail, RCPT, "new")
    stored_deleted = 0
    try:
        gw.start()
        f0 = gw.figures()
        print("%s: lmtpgw pid %d on %s, at start: RSS %.1f MB, fds %d, threads %d"
              % (backend, gw.proc.pid, gw.addr, f0["rss_kb"] / 1024, f0["fds"], f0["threads"]))
        print("  %8s %7s %8s %8s %5s %7s %6s %8s" % ("messages", "RSS MB", "HWM MB", "anon MB",
                                                    "fds", "threads", "spool", "msg/s"))
        sys.stdout.flush()
        for i, n in enumerate(chunk_sizes(a.messages, a.chunks)):
            dt, rc, out = smtp_source(gw.addr, n)
            if rc != 0:
                raise RuntimeError("chunk %d: smtp-source exited %d: %s" % (i + 1, rc, out[-500:]))
            sent += n
            # every delivery is logged before its reply, but the log may be written late
            deadline = time.monotonic() + 30
            while True:
                ok, alld, bad = gw.count_log()
                ok_total += ok
                if alld != ok:
                    raise RuntimeError("chunk %d: %d deliveries not ok, e.g. %r"
                                       % (i + 1, alld - ok, bad))
                if ok_total >= sent or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if ok_total != sent:
                raise RuntimeError("chunk %d: lmtpgw logged %d ok deliveries in total, expected %d"
                                   % (i + 1, ok_total, sent))
            if gw.proc.poll() is not None:
                raise RuntimeError("lmtpgw exited with %s" % gw.proc.returncode)
            time.sleep(a.settle)
            f = gw.figures()
            f.update({"messages": sent, "secs": dt, "msg_s": n / dt})
            if backend == "maildir":
                stored = count_files(newdir)
                if stored + stored_deleted != sent:
                    raise RuntimeError("chunk %d: %s holds %d files, expected %d"
                                       % (i + 1, newdir, stored, sent - stored_deleted))
                if a.delete_mail:
                    for e in os.scandir(newdir):
                        os.unlink(e.path)
                    stored_deleted += stored
            rows.append(f)
            print("  %8d %7.2f %8.2f %8.2f %5d %7d %6d %8.0f"
                  % (sent, f["rss_kb"] / 1024, f["hwm_kb"] / 1024, f["anon_kb"] / 1024, f["fds"],
                     f["threads"], f["spool_files"], f["msg_s"]))
            sys.stdout.flush()
    finally:
        gw.stop()
    first, last = rows[0], rows[-1]
    growth_kb = last["rss_kb"] - first["rss_kb"]
    problems = []
    if growth_kb >= a.limit_mb * 1024:
        problems.append("RSS grew %.2f MB (%d -> %d kB)" % (growth_kb / 1024, first["rss_kb"],
                                                             last["rss_kb"]))
    for k in ("fds", "threads", "spool_files"):
        if last[k] > first[k]:
            problems.append("%s %d -> %d" % (k, first[k], last[k]))
    verdict = {"growth_kb": growth_kb, "pass": not problems, "problems": problems,
               "start": f0}
    print("  %s: growth %+.2f MB (RSS after chunk 1 %.2f MB, after chunk %d %.2f MB; "
          "fds %d -> %d, threads %d -> %d, spool files %d -> %d): %s"
          % (backend, growth_kb / 1024, first["rss_kb"] / 1024, len(rows), last["rss_kb"] / 1024,
             first["fds"], last["fds"], first["threads"], last["threads"], first["spool_files"],
             last["spool_files"], "PASS" if not problems else "FAIL: " + "; ".join(problems)))
    return rows, verdict


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", action="append", choices=("discard", "maildir"),
                    help="repeatable (default: discard and maildir)")
    ap.add_argument("--messages", type=int, default=100000, help="per backend (default 100000)")
    ap.add_argument("--chunks", type=int, default=10, help="default 10")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds to wait after a chunk before reading /proc (default 2)")
    ap.add_argument("--limit-mb", type=float, default=1.0, help="allowed RSS growth (default 1)")
    ap.add_argument("--delete-mail", action="store_true",
                    help="maildir: delete the delivered files after each chunk's figures")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "lmtpgw"))
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if a.chunks < 2 or a.messages < a.chunks:
        sys.exit("need --chunks >= 2 and --messages >= --chunks")
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if not shutil.which("smtp-source"):
        sys.exit("smtp-source not found: apt-get install postfix (make check installs it)")
    if not os.access(a.binary, os.X_OK):
        sys.exit("%s not built: run make" % a.binary)
    backends = a.backend or ["discard", "maildir"]

    work = tempfile.mkdtemp(prefix="lmtpgw-growth-", dir="/tmp")
    os.chmod(work, 0o755)
    results = {}
    failed = False
    started = time.monotonic()
    try:
        binary = os.path.join(work, "lmtpgw")
        shutil.copy2(a.binary, binary)
        info = {"binary": os.path.abspath(a.binary), "sha256": sha256_file(binary),
                "mtime": time.strftime("%Y-%m-%d %H:%M:%S",
                                       time.localtime(os.stat(binary).st_mtime))}
        print("lmtpgw growth run: %d messages of %d bytes per backend in %d chunks, "
              "smtp-source -L -d -s %d; binary %s (copied, sha256 %s, built %s); work dir %s"
              % (a.messages, SIZE, a.chunks, SESSIONS, info["binary"], info["sha256"][:12],
                 info["mtime"], work))
        for b in backends:
            rows, verdict = run_backend(work, b, binary, a)
            results[b] = {"chunks": rows, "verdict": verdict}
            failed = failed or not verdict["pass"]
        print("verdict: %s" % ("FAIL" if failed else "PASS"))
        print("total time %.0f s" % (time.monotonic() - started))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"binary": info, "messages": a.messages, "chunks": a.chunks,
                           "size": SIZE, "sessions": SESSIONS, "settle": a.settle,
                           "limit_mb": a.limit_mb, "results": results,
                           "pass": not failed}, f, indent=1)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
