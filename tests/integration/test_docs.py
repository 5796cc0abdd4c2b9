"""
test_docs - the documentation cannot drift from the code.

Every configuration key lmtpgw knows must be documented in docs/configuration.md (as a table
row "| `key` |") and in docs/man/lmtpgw.conf.5 (as a bold key at the start of a roff line,
".B key" / ".BR key ..."). The keys come from two places:
  - the output of `lmtpgw -n -c conf/lmtpgw.conf` (every key the running program prints, the
    global, backend-common, driver and route keys, whatever their indentation; lines
    "# key is not set" count too);
  - the conf_key tables in src/ (so keys of drivers the default configuration does not use are
    checked as well).
Backend and route names are not keys: in `-n` output they are written "name: {" and never
"name =", so they are never taken for keys.

Each test_* function takes no argument and raises AssertionError on failure (run by
tests/run-tests.py). python3 stdlib only.
"""
import glob
import os
import re
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("LMTPGW_BUILD", os.path.join(ROOT, "build"))
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)

CONF_MD = os.path.join(ROOT, "docs", "configuration.md")
CONF_MAN = os.path.join(ROOT, "docs", "man", "lmtpgw.conf.5")
MAN_PAGES = [os.path.join(ROOT, "docs", "man", "lmtpgw.8"), CONF_MAN]

# "name = value;" at any indentation, or "# name is not set" (unset strings in -n output).
PRINTED_KEY = re.compile(r"^\s*(?:#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:=|is not set\b)")
# Section names, not keys: "routes = ( ... );" is printed with '=' like a key.
SECTIONS = ("backends", "routes")
# A row of a struct conf_key table: { "name", CONF_TYPE, ...
TABLE_ROW = re.compile(r'\{\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*,\s*CONF_[A-Z_]+\s*,')


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def printed_keys():
    exe = os.path.join(BUILD, "lmtpgw")
    assert os.path.exists(exe), "%s not built (run make)" % exe
    p = subprocess.run([exe, "-n", "-c", os.path.join(ROOT, "conf", "lmtpgw.conf")],
                       capture_output=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, "lmtpgw -n failed (%d): %s" % (
        p.returncode, p.stderr.decode("utf-8", "replace"))
    keys = []
    for line in p.stdout.decode("utf-8", "replace").splitlines():
        if line.lstrip().startswith("# lmtpgw effective configuration"):
            continue
        m = PRINTED_KEY.match(line)
        if m and m.group(1) not in SECTIONS and m.group(1) not in keys:
            keys.append(m.group(1))
    # Sanity: the parser must have found the obvious ones, or it is the parser that is broken.
    for expected in ("listen", "max_message_size", "driver", "path", "match", "deliver"):
        assert expected in keys, "parsing `lmtpgw -n` found no '%s' (found %s)" % (expected, keys)
    return keys


def source_keys():
    keys = []
    files = glob.glob(os.path.join(ROOT, "src", "*.c")) + \
        glob.glob(os.path.join(ROOT, "src", "backends", "*.c"))
    for path in sorted(files):
        for name in TABLE_ROW.findall(read(path)):
            if name not in keys:
                keys.append(name)
    assert "max_message_size" in keys, "no conf_key table rows found in src/"
    return keys


def in_markdown(text, key):
    return re.search(r"^\|\s*`%s`\s*\|" % re.escape(key), text, re.M) is not None


def in_man(text, key):
    # .B key   .BR key " (...)"   .BR key ", " other   or \fBkey\fP in running text
    k = re.escape(key)
    return (re.search(r'^\.B[RI]?\s+"?%s"?(\s|$)' % k, text, re.M) is not None or
            re.search(r"\\fB%s\\f[PR]" % k, text) is not None)


def check_documented(keys, what):
    md, man = read(CONF_MD), read(CONF_MAN)
    missing = []
    for key in keys:
        if not in_markdown(md, key):
            missing.append("%s: not in docs/configuration.md (as a table row | `%s` |)" % (key, key))
        if not in_man(man, key):
            missing.append("%s: not in docs/man/lmtpgw.conf.5 (as .B/.BR %s)" % (key, key))
    assert not missing, "undocumented keys (%s):\n  %s" % (what, "\n  ".join(missing))


def test_docs_every_printed_key_documented():
    check_documented(printed_keys(), "from lmtpgw -n")


def test_docs_every_table_key_documented():
    check_documented(source_keys(), "from the conf_key tables in src/")


# "name = "word"; # one of: a, b, c" — an enum key in `lmtpgw -n` output, with its allowed words.
ENUM_LINE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=.*;\s*# one of: (.+)$')


def test_docs_enum_words_documented():
    """Each allowed word of an enum key (listed once, in its conf_key row, and printed by -n)
    appears as `word` in that key's row of docs/configuration.md."""
    exe = os.path.join(BUILD, "lmtpgw")
    p = subprocess.run([exe, "-n", "-c", os.path.join(ROOT, "conf", "lmtpgw.conf")],
                       capture_output=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    md = read(CONF_MD)
    enums = [ENUM_LINE.match(l) for l in p.stdout.decode().splitlines()]
    enums = [(m.group(1), [w.strip() for w in m.group(2).split(",")]) for m in enums if m]
    assert any(k == "log_level" for k, _ in enums), "no enum key found in `lmtpgw -n`"
    missing = []
    for key, words in enums:
        row = re.search(r"^\|\s*`%s`\s*\|.*$" % re.escape(key), md, re.M)
        for w in words:
            if row is None or "`%s`" % w not in row.group(0):
                missing.append("%s: `%s`" % (key, w))
    assert not missing, "enum words not in docs/configuration.md:\n  " + "\n  ".join(missing)


def test_docs_readme_two_commands():
    text = read(os.path.join(ROOT, "README.md"))
    for command in ("make run", "make check"):
        assert command in text, "README.md does not mention `%s`" % command


def test_docs_files_exist():
    for rel in ("README.md", "docs/architecture.md", "docs/configuration.md",
                "docs/status-codes.md", "docs/man/lmtpgw.8", "docs/man/lmtpgw.conf.5"):
        path = os.path.join(ROOT, rel)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, "%s missing or empty" % rel


def test_docs_man_pages_render_without_warnings():
    if shutil.which("groff") is None:
        from harness import Skip
        raise Skip("groff is not installed: nothing to render the man pages with")
    for page in MAN_PAGES:
        p = subprocess.run(["groff", "-man", "-Tascii", "-ww", page],
                           capture_output=True, timeout=60)
        err = p.stderr.decode("utf-8", "replace").strip()
        assert p.returncode == 0 and not err, "groff warnings for %s:\n%s" % (page, err)
        assert len(p.stdout) > 1000, "%s renders to almost nothing" % page
