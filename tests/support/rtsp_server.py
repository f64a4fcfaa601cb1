#!/usr/bin/python3
"""Test RTSP camera: serves looping raw H.264/H.265 elementary streams over RTSP.

Run with Debian's /usr/bin/python3 (the GStreamer bindings come from apt, not the venv):

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 --mount cam1=/tmp/a.264 [--mount ...]

Clients connect to rtsp://127.0.0.1:PORT/NAME. Prints "READY <port>" once listening and exits 0
on SIGTERM/SIGINT.
"""
import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

CODECS = {
    ".264": ("video/x-h264", "h264parse", "rtph264pay"),
    ".h264": ("video/x-h264", "h264parse", "rtph264pay"),
    ".265": ("video/x-h265", "h265parse", "rtph265pay"),
    ".h265": ("video/x-h265", "h265parse", "rtph265pay"),
}


def make(factory, **props):
    el = Gst.ElementFactory.make(factory, None)
    if el is None:
        raise RuntimeError(f"GStreamer element {factory} is missing")
    for k, v in props.items():
        el.set_property(k.replace("_", "-"), v)
    return el


def dts_to_pts(_pad, info):
    # A raw elementary stream carries no PTS; the parser stamps PTS on the first frame only and
    # interpolates DTS for the rest. Without it every RTP packet gets the first frame's RTP
    # timestamp. Without B-frames decode order == display order, so DTS is a valid PTS.
    buf = info.get_buffer()
    if buf is not None and buf.pts == Gst.CLOCK_TIME_NONE and buf.dts != Gst.CLOCK_TIME_NONE:
        buf.pts = buf.dts
    return Gst.PadProbeReturn.OK


class LoopFactory(GstRtspServer.RTSPMediaFactory):
    """multifilesrc(loop) ! caps ! parse ! pay for one file.

    No explicit pacing element: the server's sinks sync to the pipeline clock, so real-time
    delivery (~fps frames per second, no burst) follows from correct, increasing timestamps.
    """

    def __init__(self, path, fps):
        super().__init__()
        self.path = path
        self.fps = fps
        ext = path[path.rfind("."):].lower()
        if ext not in CODECS:
            raise ValueError(f"{path}: expected .264/.h264/.265/.h265")
        self.caps, self.parser, self.payloader = CODECS[ext]

    def do_create_element(self, _url):
        bin_ = Gst.Bin.new(None)
        # multifilesrc printf-formats its location with the file index, so escape '%'.
        # Reading the same name again and again gives one continuous byte stream, so the
        # parser keeps interpolating timestamps across the loop instead of restarting at 0.
        src = make("multifilesrc", location=self.path.replace("%", "%%"), loop=True)
        # The frame rate in the caps lets the parser timestamp even if the SPS has no VUI
        # timing info.
        capsf = make("capsfilter", caps=Gst.Caps.from_string(
            f"{self.caps},stream-format=byte-stream,framerate={self.fps}/1"))
        parse = make(self.parser)
        pay = make(self.payloader, name="pay0", pt=96, config_interval=1)
        chain = (src, capsf, parse, pay)
        for el in chain:
            bin_.add(el)
        for a, b in zip(chain, chain[1:]):
            if not a.link(b):
                raise RuntimeError(f"cannot link {a.name} to {b.name}")
        parse.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, dts_to_pts)
        return bin_


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", action="append", required=True, metavar="NAME=FILE")
    ap.add_argument("--fps", type=int, default=30, help="frame rate of the files (default 30)")
    args = ap.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for spec in args.mount:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            ap.error(f"bad --mount {spec!r}, want NAME=FILE")
        # Fail now rather than with an opaque 503 on the first DESCRIBE.
        if not os.path.isfile(path):
            ap.error(f"--mount {name}: no such file {path}")
        try:
            factory = LoopFactory(path, args.fps)
        except ValueError as e:
            ap.error(str(e))
        # One pipeline for all clients: tests connect several readers to one camera.
        factory.set_shared(True)
        mounts.add_factory("/" + name.strip("/"), factory)

    loop = GLib.MainLoop()
    # GstRTSPServer binds with allow_reuse (SO_REUSEADDR), so a restart on the same port
    # right after a kill works even with connections left in TIME_WAIT.
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
