"""The command line: `lmtpgw check`, `lmtpgw route`, `lmtpgw -n`."""
import os
import re

from harness import Lmtpgw

ROUTES = [("alice@example.test", ["local"]), ("*@example.test", ["local", "trash"]),
          ("/^bob[0-9]+@regex\\.test$/", ["local"]), ("postmaster", ["local"])]
TRASH = 'trash: { driver = "discard"; };'


def test_check_good_config():
    gw = Lmtpgw(backends=TRASH, routes=ROUTES)
    rc, out, err = gw.run_cli("check")
    assert rc == 0, (rc, out, err)
    assert "OK" in out, out
    # the shipped default configuration is valid too
    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "conf", "lmtpgw.conf")
    rc, out, err = gw.run_cli("check", conf=conf)
    assert rc == 0, (rc, out, err)


def broken(gw, text):
    gw.write_config(text)
    rc, out, err = gw.run_cli("check")
    return rc, out + err


def test_check_broken_configs_name_file_and_line():
    gw = Lmtpgw()
    good = gw.config_text()
    lines = good.splitlines(True)
    cases = []
    # a syntax error on line 3
    cases.append((lines[:2] + ["this is not = = libconfig;\n"] + lines[2:], 3))
    # an unknown key on line 3
    cases.append((lines[:2] + ["no_such_key = 1;\n"] + lines[2:], 3))
    # a value out of bounds / of the wrong type
    cases.append((lines[:2] + ["max_connections = 0;\n"] + lines[2:], 3))
    cases.append((lines[:2] + ["max_message_size = \"lots\";\n"] + lines[2:], 3))
    cases.append((lines[:2] + ["delivered_to = \"maybe\";\n"] + lines[2:], 3))
    for case_lines, line in cases:
        rc, output = broken(gw, "".join(case_lines))
        assert rc != 0, "check accepted a broken config:\n%s" % "".join(case_lines)
        assert re.search(re.escape(gw.conf_path) + r":%d\b" % line, output) or \
            re.search(r"lmtpgw\.conf:%d\b" % line, output), \
            "error should name lmtpgw.conf:%d, got: %s" % (line, output)
    # a route naming a backend that does not exist: file:line of the route
    text = good.replace('deliver = [ "local" ]', 'deliver = [ "nosuch" ]')
    rc, output = broken(gw, text)
    route_line = [i + 1 for i, l in enumerate(text.splitlines()) if "nosuch" in l][0]
    assert rc != 0 and re.search(r"lmtpgw\.conf:%d\b" % route_line, output), output
    assert "nosuch" in output, output
    # a backend with an unknown driver
    text = good.replace('driver = "maildir"', 'driver = "carrier-pigeon"')
    rc, output = broken(gw, text)
    assert rc != 0 and re.search(r"lmtpgw\.conf:\d+", output) and "carrier-pigeon" in output, output
    # a missing file
    rc, out, err = gw.run_cli("check", conf=os.path.join(gw.dir, "missing.conf"))
    assert rc != 0 and "missing.conf" in out + err, (rc, out, err)


def test_serve_refuses_broken_config():
    gw = Lmtpgw()
    gw.write_config("listen = ;\n")
    rc, out, err = gw.run_cli("-f", "--listen", "127.0.0.1:1")
    assert rc != 0, (rc, out, err)
    assert "lmtpgw.conf:1" in out + err, out + err


def test_route_command():
    gw = Lmtpgw(backends=TRASH, routes=ROUTES)
    rc, out, err = gw.run_cli("route", "alice@example.test")
    assert rc == 0, (rc, out, err)
    assert re.search(r'route #1 "alice@example\.test"', out), out
    assert re.search(r"-> local \(driver maildir\)", out), out
    rc, out, err = gw.run_cli("route", "Carol+Box@Example.Test")
    assert rc == 0, (rc, out, err)
    assert re.search(r'carol\+box@example\.test: route #2 "\*@example\.test"', out), out
    assert 'detail="box"' in out, out
    assert "-> local (driver maildir)" in out and "-> trash (driver discard)" in out, out
    rc, out, err = gw.run_cli("route", "bob42@regex.test", "postmaster")
    assert rc == 0, (rc, out, err)
    assert 'route #3' in out and 'route #4' in out, out
    rc, out, err = gw.run_cli("route", "bob@regex.test")
    assert rc != 0, "an address with no route must fail: %s" % out
    assert "no route" in out + err and "550 5.1.1" in out + err, out
    rc, out, err = gw.run_cli("route", "not an address")
    assert rc != 0 and "invalid" in out + err, out + err
    rc, out, err = gw.run_cli("route")
    assert rc != 0, out


def test_print_config_loads_again():
    gw = Lmtpgw(backends=TRASH, routes=ROUTES,
                config={"max_message_size": "3M", "timeout_command": "90s", "delivered_to": True,
                        "unix_socket_mode": "0640", "subaddress_separator": "+-"},
                local={"folder_from_detail": True, "create": True})
    rc, out, err = gw.run_cli("-n")
    assert rc == 0, (rc, out, err)
    for key in ("hostname", "listen", "max_connections", "max_message_size", "max_recipients",
                "max_command_line", "max_errors", "max_received_headers", "timeout_greeting",
                "timeout_command", "timeout_data", "spool_memory_max", "spool_dir",
                "subaddress_separator", "delivered_to", "soft_bounce", "log_level",
                "folder_from_detail", "routes", "backends"):
        assert re.search(r"(^|\n)\s*%s\s*[=:]" % key, out), "-n lacks %s:\n%s" % (key, out)
    printed = os.path.join(gw.dir, "printed.conf")
    with open(printed, "w") as f:
        f.write(out)
    rc2, out2, err2 = gw.run_cli("check", conf=printed)
    assert rc2 == 0, "-n output does not load: %s %s\n%s" % (out2, err2, out)
    # and prints the same effective configuration again (comments aside: they name the file)
    rc3, out3, err3 = gw.run_cli("-n", conf=printed)

    def settings(text):
        return [l for l in text.splitlines() if not l.lstrip().startswith("#")]
    assert rc3 == 0 and settings(out3) == settings(out), "-n of -n differs:\n%s\n---\n%s" % (out, out3)
    # values survived
    assert re.search(r"max_message_size\s*=\s*(3145728|\"3M\")", out), out
    assert re.search(r"unix_socket_mode\s*=\s*\"0640\"", out), out
    assert re.search(r"delivered_to\s*=\s*true", out), out
    # the routes are equivalent
    for addr in ("alice@example.test", "x@example.test", "bob7@regex.test", "postmaster"):
        a = gw.run_cli("route", addr)
        b = gw.run_cli("route", addr, conf=printed)
        assert a[0] == b[0] == 0 and a[1] == b[1], (a, b)
