"""
browser - Debian's headless Chromium for tests of pages lmtpgw serves, and a PNG reader.

    dom = dump_dom(url)                    # the DOM after Chromium loaded and laid out the page
    png = screenshot(url, 1200, 900)       # bytes of a PNG file
    width, height, pixels = decode_png(png)  # pixels: list of rows of (r, g, b)

Each run gets a HOME and a profile of its own (a temp dir, removed afterwards), --no-sandbox
(containers have no user namespaces for its sandbox), no GPU, and a time limit. A missing
chromium raises harness.RealServerMissing("chromium"): a skip locally, a failure when CI=true.
python3 stdlib only (the PNG is decoded with zlib).
"""
import os
import shutil
import struct
import subprocess
import tempfile
import zlib

from harness import SLOW, RealServerMissing

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium():
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise RealServerMissing("chromium", "no chromium in PATH (apt-get install chromium)")


def _run(args, timeout):
    exe = find_chromium()
    home = tempfile.mkdtemp(prefix="lmtpgw-chromium-")
    try:
        env = dict(os.environ, HOME=home)
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--disable-background-networking",
               "--hide-scrollbars", "--user-data-dir=" + os.path.join(home, "profile")] + args
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=home, env=env,
                              timeout=timeout * SLOW, check=False), home
    except subprocess.TimeoutExpired as e:
        shutil.rmtree(home, ignore_errors=True)
        raise AssertionError("chromium took over %.0f s: %s" % (timeout * SLOW, e))
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise


def dump_dom(url, timeout=60):
    """The serialized DOM of url as Chromium built it."""
    proc, home = _run(["--dump-dom", url], timeout)
    shutil.rmtree(home, ignore_errors=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError("chromium --dump-dom failed (%d): %s" %
                             (proc.returncode, proc.stderr.decode(errors="replace")[-2000:]))
    return proc.stdout.decode("utf-8", errors="replace")


def screenshot(url, width=1200, height=900, timeout=60):
    """The PNG Chromium renders of url in a window of width x height."""
    proc, home = _run(["--screenshot=" + "shot.png", "--window-size=%d,%d" % (width, height),
                       url], timeout)
    try:
        path = os.path.join(home, "shot.png")
        if proc.returncode != 0 or not os.path.exists(path):
            raise AssertionError("chromium --screenshot failed (%d): %s" %
                                 (proc.returncode, proc.stderr.decode(errors="replace")[-2000:]))
        with open(path, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data):
    """(width, height, rows of (r, g, b)) of an 8-bit RGB or RGBA, non-interlaced PNG (what
    Chromium writes). Raises AssertionError on anything else."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if zlib.crc32(ctype + body) != struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]:
            raise AssertionError("PNG chunk %r: bad CRC" % ctype)
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        pos += 12 + length
    assert ihdr is not None, "PNG without IHDR"
    width, height, depth, colour, _comp, _filt, interlace = ihdr
    assert depth == 8 and colour in (2, 6) and interlace == 0, "unsupported PNG %r" % (ihdr,)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1), "PNG data size %d != %d" % (len(raw), height * (stride + 1))
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                upleft = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, prev[i], upleft)) & 0xFF
        elif ftype != 0:
            raise AssertionError("PNG row %d: unknown filter %d" % (y, ftype))
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prev = line
    return width, height, rows


def count_colour(rows, rgb, tolerance=12):
    """How many pixels are within tolerance (per channel) of rgb."""
    r0, g0, b0 = rgb
    return sum(1 for row in rows for (r, g, b) in row
               if abs(r - r0) <= tolerance and abs(g - g0) <= tolerance and abs(b - b0) <= tolerance)
