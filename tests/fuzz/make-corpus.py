#!/usr/bin/env python3
"""Write the seed corpora of tests/fuzz/ (tests/fuzz/corpus/<target>/<name>).

Seeds are small, realistic inputs that reach deep: whole pipelined LMTP sessions, the SMTP
smuggling shapes, addresses with every parameter, real configurations. Run it again after
editing; it rewrites the files it owns and leaves others (minimized crashes) alone.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(*lines):
    return "".join(l + "\r\n" for l in lines)


# --- fuzz_session: byte 0 = flags (bits 0-2: count of split bytes that follow, bit 3: keep open,
# bit 4: half-close right after the last write)
def session(name, text, splits=b"", keep_open=False, eof_early=False):
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    flags = len(splits) | (8 if keep_open else 0) | (16 if eof_early else 0)
    put("fuzz_session", name, bytes([flags]) + splits + text)


MSG = crlf("From: a@example.test", "To: b@example.test", "Subject: hi",
           "Message-ID: <id1@example.test>", "", "Hello", "..dot line", "")
session("data-basic", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>",
                           "DATA") + MSG + crlf(".", "QUIT"))
session("data-pipelined-2tx", crlf("LHLO mx", "MAIL FROM:<> SIZE=100 BODY=8BITMIME",
                                   "RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE",
                                   "RCPT TO:<c+tag@example.test> ORCPT=rfc822;c+2Btag@example.test",
                                   "RCPT TO:<nobody@nowhere.test>", "DATA")
        + MSG + crlf(".", "MAIL FROM:<x@example.test>", "RCPT TO:<Postmaster>", "DATA")
        + crlf("Subject: two", "", "body", ".", "RSET", "NOOP", "QUIT"), splits=b"\x10\x30\x05")
session("bdat", crlf("LHLO mx", "MAIL FROM:<a@example.test> BODY=BINARYMIME",
                     "RCPT TO:<b@example.test>", "BDAT 12") + "Subject: x\r\n"
        + "BDAT 7 LAST\r\n" + "\r\nbody\n" + crlf("QUIT"))
session("bdat-no-mail", crlf("LHLO mx", "BDAT 5") + "hello" + crlf("BDAT 3 LAST") + "abc"
        + crlf("MAIL FROM:<a@example.test>", "BDAT 0 LAST", "QUIT"))
session("bdat-then-data", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>",
                               "BDAT 3") + "abc" + crlf("DATA", "BDAT 2 LAST") + "de" + crlf("QUIT"))
session("maildir", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<keep+box@maildir.test>",
                        "RCPT TO:<b@example.test>", "DATA") + MSG + crlf(".", "QUIT"))
session("smuggling", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "DATA")
        + "Subject: s\r\n\r\nbody\n.\nMAIL FROM:<evil@example.test>\n"
        + "x\r.\rRCPT TO:<v@example.test>\r\n.\n\r\n.\r\n" + crlf("QUIT"))
session("nul-bytes", "LHLO m\x00x\r\nNOOP\x00\r\nMAIL FROM:<a\x00@example.test>\r\n"
        + crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "DATA")
        + "a\x00b\r\n.\r\n" + crlf("QUIT"))
session("long-line", crlf("LHLO mx", "NOOP " + "x" * 600, "MAIL FROM:<" + "a" * 70 + "@example.test>",
                          "RCPT TO:<b@" + "d" * 300 + ">", "QUIT"))
session("long-line-no-lf", "LHLO mx\r\n" + "y" * 3000, keep_open=True)
session("bad-commands", crlf("MAIL FROM:<a@example.test>", "HELO x", "EHLO x", "LHLO", "LHLO a b",
                             "LHLO (x)", "LHLO mx", "RCPT TO:<b@example.test>", "DATA", "VRFY",
                             "VRFY b", "HELP", "RSET x", "XFORWARD", "XFORWARD NAME=x+41 ADDR=1.2.3.4 IDENT=q1",
                             "XFORWARD FOO=1", "XFORWARD NAME=+zz", "MAIL FROM:<a@example.test> SIZE=99999999",
                             "MAIL FROM:<a@example.test> FOO=1", "MAIL FROM:<a@example.test> SIZE=1 SIZE=2",
                             "MAIL FROM:<a@example.test>", "MAIL FROM:<a@example.test>", "BDAT x", "QUIT"))
session("error-flood", "LHLO mx\r\n" + "BOGUS\r\n" * 40)
session("utf8", crlf("LHLO mx", "MAIL FROM:<ü@example.test> SMTPUTF8", "RCPT TO:<ö@example.test>",
                     "RCPT TO:<\"quoted local\"@example.test>", "RCPT TO:<\"plain\"@example.test>",
                     "RCPT TO:<a@[127.0.0.1]>", "RCPT TO:<a@[IPv6:::1]>", "RCPT TO:<@r1,@r2:a@example.test>",
                     "DATA") + "Subject: ü\r\n\r\nü\r\n.\r\n"
        + crlf("MAIL FROM:<\xe9@example.test>", "QUIT"))
session("many-rcpts", crlf("LHLO mx", "MAIL FROM:<a@example.test>", *[f"RCPT TO:<r{i}@example.test>" for i in range(8)],
                           "RCPT TO:<re12@rx.test>", "DATA") + "x\r\n.\r\n" + crlf("QUIT"))
session("loop", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "DATA")
        + "Received: a\r\nReceived: b\r\nreceived: c\r\nRECEIVED: d\r\n\r\nx\r\n.\r\n" + crlf("QUIT"))
session("too-big", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "DATA")
        + ("z" * 998 + "\r\n") * 9 + ".\r\n" + crlf("QUIT"))
session("bdat-too-big", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>",
                             "BDAT 9000") + "q" * 9000 + crlf("BDAT 1 LAST") + "r" + crlf("QUIT"))
session("mid-data-close", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>",
                               "DATA") + "Subject: cut\r\n\r\npartial", keep_open=True)
session("mid-data-eof", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<keep@maildir.test>",
                             "DATA") + "Subject: cut\r\n\r\n.\r")
session("eof-while-delivering", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<keep@maildir.test>",
                                     "DATA", "x", ".", "NOOP"), eof_early=True)
session("eof-pipelined", crlf("LHLO mx", "NOOP", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>",
                              "DATA", "x", ".", "RSET", "QUIT"), eof_early=True)
session("lf-only", "LHLO mx\nMAIL FROM:<a@example.test>\nRCPT TO:<b@example.test>\nDATA\nx\n.\n\r\n.\r\nQUIT\n")
session("trickle", crlf("LHLO mx", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "DATA")
        + "a\r\n.\r\n" + crlf("QUIT"), splits=b"\xff\xff\xff\xff\xff\xff\xff")

# --- fuzz_envelope: byte 0: bit 0 utf8, (bits 1-2) % 3: 0 MAIL, 1 RCPT, 2 path; bit 3 allow null,
# bit 4 allow postmaster, bit 7 no size limit
def env(name, mode, text):
    put("fuzz_envelope", name, bytes([mode]) + text.encode("utf-8", "surrogateescape"))


env("mail-plain", 0, "FROM:<a@example.test>")
env("mail-null-params", 0, "FROM:<> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=abc+2Bdef")
env("mail-utf8", 0, "FROM:<ü@exämple.test> SMTPUTF8 BODY=BINARYMIME")
env("mail-size-overflow", 0x80, "FROM:<a@b.c> SIZE=99999999999999999999999")
env("mail-space", 0, "FROM: <a@b.c>  SIZE=1")
env("mail-route", 0, "FROM:<@a.b,@c.d:x@example.test>")
env("rcpt-plain", 2, "TO:<b@example.test>")
env("rcpt-params", 3, "TO:<b@example.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;b+40example.test")
env("rcpt-never", 2, "TO:<b@example.test> NOTIFY=NEVER")
env("rcpt-postmaster", 2, "TO:<Postmaster>")
env("rcpt-quoted", 3, "TO:<\"a b\\\"c\"@example.test>")
env("rcpt-literal4", 2, "TO:<a@[192.168.0.1]>")
env("rcpt-literal6", 2, "TO:<a@[IPv6:2001:db8::1]>")
env("rcpt-general-literal", 2, "TO:<a@[x-tag:stuff]>")
env("rcpt-utf8", 3, "TO:<δοκιμή@παράδειγμα.δοκιμή>")
env("rcpt-long", 2, "TO:<" + "a" * 64 + "@" + ".".join(["b" * 63] * 4) + ">")
env("path-null", 4 | 8, "<>")
env("path-pm", 4 | 16, "<postmaster>")
env("path-bad-utf8", 5, "<\xc3\x28@a.b>")

# --- fuzz_data: byte 0 % 17 = count of split bytes that follow
def data(name, splits, text):
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    put("fuzz_data", name, bytes([len(splits)]) + splits + text)


data("basic", b"", MSG + ".\r\nQUIT\r\n")
data("empty", b"", ".\r\nMAIL FROM:<a@b>\r\n")
data("dots", b"\x02\x00\x01", "..\r\n.x\r\n...\r\n.\r\r\n.\r\n")
data("smuggling", b"\x04\x04\x04", "a\n.\nb\r.\r\nc\n.\r\nd\r\n.\ne\r\n.\r\n")
data("held-cr", b"\x05", "x\r\n.\rz\r\n.\r\n")
data("headers", b"\x03\x07", "Received: a\r\nReceived:b\r\n RECEIVED: c\r\nMessage-ID:\r\n <x@y>\r\nMessage-Id: <z>\r\n\r\nbody\r\n.\r\n")
data("msgid-long", b"", "Message-ID: <" + "m" * 300 + ">\r\n\r\n.\r\n")
data("header-lf", b"\x01\x01", "Subject: a\nReceived: b\n\nbody\r\n.\r\n")
data("trickle", b"\xff" * 16, "a.\r\n.b\r\n.\r\nrest")

# --- fuzz_template: template, NUL, value
def tmpl(name, text, value=None):
    b = text.encode()
    if value is not None:
        b += b"\0" + value.encode("utf-8", "surrogateescape")
    put("fuzz_template", name, b)


tmpl("maildir", "var/mail/%{domain}/%{local}")
tmpl("date", "/srv/%{date:%Y/%m/%d}/%{sha256}.eml")
tmpl("url", "https://h.test/in?to=%{rcpt}&from=%{sender}&id=%{msgid}")
tmpl("pct", "100%%/%{user}%{detail}/.%{txid}-%{session}")
tmpl("empty-value", "a/%{detail}/b/%{local}%{detail}", "")
tmpl("dots-value", "x/%{local}/%{detail}.d", "..")
tmpl("slash-value", "%{local}%{domain}", "a/b/../c")
tmpl("bad", "%{nope}%{")

# --- fuzz_config: real configurations
conf_dir = os.path.join(ROOT, "conf")
for root, _, files in os.walk(conf_dir):
    for f in files:
        if f.endswith(".conf"):
            with open(os.path.join(root, f), "rb") as fh:
                put("fuzz_config", "conf-" + f, fh.read())
put("fuzz_config", "small", 'backends: { sink: { driver = "discard"; }; };\n'
    'routes = ( { match = "*"; deliver = "sink"; } );\n')
put("fuzz_config", "all-keys", 'hostname = "mx.test"; listen = [ "127.0.0.1:2424", "unix:/tmp/x.sock" ];\n'
    'unix_socket_mode = "0660"; max_message_size = "10M"; max_recipients = 10;\n'
    'max_command_line = 1024; timeout_command = "30s"; timeout_data = 120; spool_memory_max = "512K";\n'
    'subaddress_separator = "+-"; lowercase_local_part = false; soft_bounce = true; xforward = true;\n'
    'log_level = "debug"; syslog_facility = "local3";\n'
    'backends: { m: { driver = "maildir"; path = "/tmp/m/%{domain}/%{local}"; folder_from_detail = true; };\n'
    '            d: { driver = "discard"; concurrency = 2; }; };\n'
    'routes = ( { match = "/^a[0-9]+@x\\\\.test$/"; deliver = [ "m", "d" ]; },\n'
    '           { match = "*@*.example.test"; deliver = "d"; }, { match = "*"; deliver = "m"; } );\n')
# --- fuzz_webhook_answer: bytes 0-1 status (table index in byte 1 when byte 0 < 0x80), byte 2 flags
# (bits 0-2 content type: 0 json, 3 text/plain; 3 truncated; 4 Retry-After; 6-7 recipients - 1)
def answer(name, code_index, flags, body):
    put("fuzz_webhook_answer", name, bytes([0, code_index, flags]) + body.encode())


answer("ok-results", 0, 0xc0, '{"results":[{"rcpt":"a@example.test","code":250,"status":"2.0.0","text":"ok"},'
       '{"rcpt":"<b@example.test>","code":550,"status":"5.1.1","text":"no\\nsuch user"},'
       '{"rcpt":"c+d@example.test","code":452,"status":"4.2.2"}]}')
answer("bad-2xx-in-500", 16, 0x40, '{"results":[{"rcpt":"a@example.test","code":250}],"text":"x"}')
answer("not-json", 0, 0x00, '{"results":[')
answer("truncated", 0, 0x08, '{"results":[]}')
answer("text", 15, 0x13, 'slow down please\r\n\tnow')
answer("problem", 8, 0x02, '{"type":"about:blank","title":"bad","text":"refused \u00e9"}')
answer("secret", 0, 0x03, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')

# --- fuzz_mime_json: byte 0 bits 0-1 attachment_max (0, 16, 1K, 1G), bit 2 first line only
def mime(name, mode, text):
    put("fuzz_mime_json", name, bytes([mode]) + text.encode("latin-1"))  # raw 8-bit bytes


mime("simple", 3, crlf("From: =?UTF-8?B?w6lsaWU=?= <e@example.test>", "To: b@example.test",
                       "Subject: =?ISO-8859-1?Q?caf=E9?= and\r\n more", "Date: Mon, 1 Jan 2024 00:00:00 +0000",
                       "Message-ID: <m1@example.test>", "", "hello"))
mime("multipart", 1, crlf("Subject: parts", "MIME-Version: 1.0",
                          'Content-Type: multipart/mixed; boundary="XX"', "", "--XX",
                          "Content-Type: text/plain; charset=iso-8859-1",
                          "Content-Transfer-Encoding: quoted-printable", "", "caf=E9", "--XX",
                          "Content-Type: text/html; charset=utf-8", "", "<p>hi</p>", "--XX",
                          'Content-Type: application/pdf; name="a.pdf"',
                          'Content-Disposition: attachment; filename="a.pdf"',
                          "Content-Transfer-Encoding: base64", "Content-ID: <c1>", "",
                          "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K", "--XX",
                          "Content-Type: message/rfc822", "", "Subject: inner", "", "inner body", "--XX--"))
mime("latin1-header", 4, "Subject: caf\xe9\r\n\r\nbody\xff\r\n")
mime("nested-alt", 2, crlf('Content-Type: multipart/alternative; boundary=a', "", "--a",
                           'Content-Type: multipart/related; boundary=b', "", "--b",
                           "Content-Type: text/plain; charset=koi8-r", "", "\xf0\xd2", "--b--", "--a--"))

print("corpora written under", os.path.join(HERE, "corpus"))
