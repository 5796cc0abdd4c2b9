"""
Maildir durability of new mailboxes (docs/reliability.md, "The second attack", case 4): a directory lmtpgw creates (the user's
Maildir, the path above it, a Maildir++ folder, tmp/ new/ cur/) exists after a crash only once
its parent directory was fsynced after the mkdir. Otherwise a crash right after the first 250
into a new mailbox can lose the mailbox and the message in it.

A crash cannot be staged in a test without a disk that drops unsynced metadata, so this runs
lmtpgw under strace (-f -y: every thread, file descriptors shown with their paths) and checks
the order of system calls: for every directory created, an fsync of that directory and of its
parent lies between the mkdir and the write of the 250 reply.
"""
import os
import re
import shutil

from harness import Lmtpgw, Skip, expect, send_message, SANITIZED

CONTENT = b"Subject: durable\r\n\r\nbody\r\n"


class StracedLmtpgw(Lmtpgw):
    """lmtpgw run under strace, writing the trace to trace_path."""

    def __init__(self, inject=None, **kw):
        super().__init__(**kw)
        self.trace_path = os.path.join(self.dir, "strace.out")
        self.inject = inject  # e.g. "mkdir:error=ENOSPC:when=9" (strace fault injection)

    def command(self):
        cmd = super().command()
        if SANITIZED:
            # LeakSanitizer cannot run under ptrace and fails the exit: the leak check belongs
            # to every other test of the ASan run, not to this one.
            cmd = ["env", "ASAN_OPTIONS=%s:detect_leaks=0" % os.environ.get("ASAN_OPTIONS", "")
                   ] + cmd
        inject = ["-e", "inject=" + self.inject] if self.inject else []
        return ["strace", "-f", "-y", "-qq", "-s", "120", "-o", self.trace_path,
                "-e", "trace=mkdir,mkdirat,fsync,fdatasync,write,writev,sendto,sendmsg"] + \
            inject + cmd

    def stop(self, expect_clean=True, sig=None):
        """SIGTERM to lmtpgw itself (strace's child): strace then exits with it."""
        import signal
        import time
        if self.proc is not None and self.proc.poll() is None:
            try:
                with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                    children = [int(x) for x in f.read().split()]
            except OSError:
                children = []
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 10
            while self.proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
        return super().stop(expect_clean=expect_clean)

    def trace(self):
        with open(self.trace_path, errors="replace") as f:
            return f.read().splitlines()


def _events(lines):
    """(kind, path) in the order the calls completed: ("mkdir", path) for a successful mkdir,
    ("fsync", path) for a successful fsync of a directory descriptor, ("reply", text) for a write
    that carries an LMTP 250 reply. A call strace split ("<unfinished ...>" ... "resumed>")
    counts where it returned."""
    pending = {}  # pid -> the start of a call not yet finished
    out = []
    for line in lines:
        m = re.match(r"^(\d+)\s+(.*)$", line)
        if not m:
            continue
        pid, text = m.group(1), m.group(2)
        if text.endswith("<unfinished ...>"):
            pending[pid] = text[:-len("<unfinished ...>")]
            continue
        r = re.match(r"^<\.\.\. (\w+) resumed>(.*)$", text)
        if r:
            text = pending.pop(pid, r.group(1) + "(") + r.group(2)
        mk = re.match(r'^mkdir(?:at)?\((?:AT_FDCWD(?:<[^>]*>)?, )?"([^"]+)", [0-7]+\)\s*= 0', text)
        if mk:
            out.append(("mkdir", mk.group(1)))
            continue
        fs = re.match(r"^f(?:data)?sync\(\d+<([^>]+)>\)\s*= 0", text)
        if fs:
            out.append(("fsync", fs.group(1)))
            continue
        if re.match(r"^(write|writev|sendto|sendmsg)\(\d+<(socket:|TCP|UNIX)", text) and \
                "250 2.0.0" in text:
            out.append(("reply", text))
    return out


def _check_created_dirs_synced(gw, events, base):
    """Every directory created under base (absolute mkdir paths resolved against gw.dir) was
    fsynced, with its parent, after its mkdir and before the next 250 reply."""
    created = []
    for i, (kind, path) in enumerate(events):
        if kind != "mkdir":
            continue
        path = os.path.normpath(os.path.join(gw.dir, path))
        if not path.startswith(base):
            continue
        created.append(path)
        reply_at = next((j for j in range(i + 1, len(events)) if events[j][0] == "reply"), None)
        assert reply_at is not None, "no 250 after the mkdir of %s" % path
        synced = {os.path.normpath(p) for k, p in events[i + 1:reply_at] if k == "fsync"}
        for need in (path, os.path.dirname(path)):
            assert need in synced, (
                "directory %s created but %s not fsynced before the 250 reply "
                "(fsyncs in between: %s)" % (path, need, sorted(synced)))
    return created


def test_new_maildir_and_folder_directories_fsynced_before_250():
    if shutil.which("strace") is None:
        raise Skip("strace is not installed")
    gw = StracedLmtpgw(local={"folder_from_detail": True})
    with gw:
        with gw.session() as c:
            # a new Maildir (and the directories above it) ...
            for r in send_message(c, "s@example.test", ["alice@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
            # ... then a new Maildir++ folder inside the existing one
            for r in send_message(c, "s@example.test", ["alice+lists@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        gw.stop()  # strace has written everything once lmtpgw exited
        assert len(gw.messages("alice")) == 1
        assert len(gw.messages("alice", folder="lists")) == 1
        events = _events(gw.trace())
        created = _check_created_dirs_synced(gw, events, gw.maildir_root)
        alice = gw.maildir("alice")
        folder = gw.maildir("alice", folder="lists")
        for d in (gw.maildir_root, alice, alice + "/new", alice + "/cur", alice + "/tmp",
                  folder, folder + "/new", folder + "/cur", folder + "/tmp"):
            assert d in created, "expected lmtpgw to create %s (created: %s)" % (d, created)


def _mkdir_calls_until_mailbox(lines, mailbox):
    """How many mkdir calls (any result) lmtpgw made up to the last one of mailbox's
    tmp/ new/ cur/: the number strace's when= counts to fail exactly that one."""
    n = last = 0
    for line in lines:
        m = re.search(r'mkdir(?:at)?\((?:AT_FDCWD(?:<[^>]*>)?, )?"([^"]+)"', line)
        if not m or "resumed>" in line:
            continue
        n += 1
        if re.search(r"/%s/(tmp|new|cur)$" % re.escape(mailbox), m.group(1)):
            last = n
    return last


def test_mailbox_creation_failed_halfway_is_made_durable_by_the_next_delivery():
    """A creation that fails part-way (ENOSPC on the last of tmp/ new/ cur/) must not leave
    directories that the next delivery takes as existing and never fsyncs: it answers 4xx,
    undoes what it made, and the next delivery creates and fsyncs everything before its 250."""
    if shutil.which("strace") is None:
        raise Skip("strace is not installed")
    probe = StracedLmtpgw()
    with probe:
        with probe.session() as c:
            for r in send_message(c, "s@example.test", ["bob@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        probe.stop()
        k = _mkdir_calls_until_mailbox(probe.trace(), "bob")
    assert k > 0, "no mkdir of bob's Maildir seen"
    gw = StracedLmtpgw(inject="mkdir:error=ENOSPC:when=%d" % k)
    with gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["bob@example.test"], CONTENT):
                expect(r, 452)
            for r in send_message(c, "s@example.test", ["bob@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        gw.stop()
        assert len(gw.messages("bob")) == 1
        _check_created_dirs_synced(gw, _events(gw.trace()), gw.maildir_root)
