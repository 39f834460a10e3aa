"""``vosrt live PKG --source SRC``: a camera (or stream, file, folder) in the browser, objects picked
with the mouse.

    vosrt live PKG --source 0                      # camera 0; open the printed URL (or --open)
    vosrt live PKG --source rtsp://cam/stream --host 0.0.0.0     # a headless box: prints token URLs for
                                                                 # this machine and for others
    vosrt live PKG --source clip.mp4 --realtime    # a file played at its own frame rate
    vosrt live PKG --source clip.mp4 --headless --select box:40,30,80,60 --out masks --video overlay.mp4

The page shows the video with the masks blended in, FPS, end-to-end latency, dropped frames and the
tracked objects. For ``stcn`` packages a box dragged on the video (or a click) adds an object; the
others segment automatically. Capture runs in its own thread and inference takes the newest frame, so
latency stays bounded when the model is slower than the camera (:mod:`vosrt.sdk.live.source`);
files are processed frame by frame unless ``--realtime``. A camera or stream that drops is reopened.

``--headless`` runs the same pipeline without a server: ``--select`` boxes pick objects on the first
frame, ``--out`` gets one palette PNG per processed frame (named by the source frame), ``--video`` the
overlay, and FPS, latency p50/p95 and dropped frames are printed at the end (a progress bar meanwhile;
``--no-progress`` hides it). Ctrl-C, SIGTERM and SIGHUP end either mode cleanly: the video is finished
(playable) and the PNGs written so far stay.
"""
from __future__ import annotations

import math
import secrets
import signal
import sys

from vosrt.sdk.cli_run import add_session_arguments, add_stream_timeout_argument, load_session
from vosrt.sdk.errors import UserError, install_command


DEFAULT_SAVE_DIR = "vosrt-live"


def add_arguments(parser) -> None:
    """Arguments of ``vosrt live``."""
    parser.add_argument("package", help="model package folder (e.g. the shipped stcn-lite, see `vosrt demo`)")
    parser.add_argument("--source", required=True,
                        help="camera index (0), RTSP/HTTP URL, video file or image folder")
    parser.add_argument("--realtime", action="store_true",
                        help="play a file or folder at its frame rate, dropping frames the model cannot keep "
                             "up with (cameras and URLs always are)")
    parser.add_argument("--loop", action="store_true", help="play a file or folder again from the start when it ends")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate for --realtime (default: the source's own; 25 for folders)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--token", default=None,
                        help="access token for the page (generated when --host is not loopback)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    parser.add_argument("--headless", action="store_true", help="no server: run the pipeline and print figures")
    parser.add_argument("--select", action="append", default=[], metavar="box:X,Y,W,H[:ID]",
                        help="object to track from the first frame (repeatable; stcn packages)")
    parser.add_argument("--box-segmenter", default=None, metavar="MODULE:FUNCTION",
                        help="box -> mask function instead of GrabCut: f(frame_bgr, (x, y, w, h)) -> bool mask")
    parser.add_argument("--out", default=None, help="folder for one palette PNG per processed frame")
    parser.add_argument("--video", default=None, help="record the overlay from the start to this file (.mp4/.avi)")
    parser.add_argument("--save-dir", default=DEFAULT_SAVE_DIR,
                        help="where the page's snapshot and record buttons write (default ./vosrt-live)")
    parser.add_argument("--frames", type=int, default=None, help="stop after processing this many frames")
    parser.add_argument("--no-progress", action="store_true", help="--headless: no progress bar")
    parser.add_argument("--retry-seconds", type=float, default=1.0,
                        help="wait before reopening a source that stopped (default 1)")
    add_stream_timeout_argument(parser)
    add_session_arguments(parser)   # --backend, --device, --checkpoint, --max-objects, --top-k ...


def _open_live_source(args):
    from vosrt.sdk.live.source import LatestFrameSource
    from vosrt.sdk.video import open_source

    first = open_source(args.source, stream_timeout=args.stream_timeout)
    file_like = first.kind in ("video", "folder", "davis")
    pace = None
    if file_like and args.realtime:
        pace = args.fps or first.fps or 25.0
    elif args.fps is not None:
        print(f"note: --fps {args.fps:g} is ignored: it sets the pace of --realtime playback of a file or folder"
              + (" (add --realtime)" if file_like else f"; a {first.kind} runs at its own rate"), file=sys.stderr)
    if args.loop and not file_like:
        print(f"note: --loop is ignored: it replays a file or folder, and a {first.kind} has no end to replay from",
              file=sys.stderr)
    opened = [first]

    def opener():   # the first call returns the source opened above; retries open it afresh
        return opened.pop() if opened else open_source(args.source, stream_timeout=args.stream_timeout)

    return LatestFrameSource(opener, drop=not file_like or args.realtime, pace=pace,
                             retry=not file_like, retry_seconds=args.retry_seconds, loop=args.loop)


def _report(pipeline) -> None:
    from vosrt.sdk.live.pipeline import percentiles

    source = pipeline.source
    p50, p95 = (v * 1000 for v in percentiles(pipeline.latencies))
    paused = f" ({pipeline.paused_seconds:.1f} s paused not counted)" if pipeline.paused_seconds >= 0.05 else ""
    print(f"{pipeline.frames} frames processed of {source.captured} captured; {source.dropped} dropped; "
          f"{pipeline.run_fps():.1f} FPS{paused}; latency p50 {p50:.1f} ms, p95 {p95:.1f} ms")


def run(args) -> int:
    """Entry point of ``vosrt live``."""
    from vosrt.sdk import families
    from vosrt.sdk.live.pipeline import LivePipeline
    from vosrt.sdk.live.select import grabcut_box, load_segmenter, parse_box_select
    from vosrt.sdk.package import load_package
    from vosrt.sdk.video import check_stream_timeout

    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames: expected a positive number, got {args.frames}")
    if args.fps is not None and not 0 < args.fps < math.inf:   # NaN was refused as "pace: ...", a flag there is
        # none of; inf was taken, and --realtime played the file unpaced, dropping most of its frames
        raise UserError(f"--fps: expected a finite number of frames per second > 0, got {args.fps}")
    if not 0 <= args.retry_seconds < math.inf:   # a negative (or NaN) wait reopened a dropped camera in a busy
        # loop; an infinite one killed the capture thread (OverflowError in its wait), the page "retrying" for ever
        raise UserError(f"--retry-seconds: expected a finite number of seconds >= 0, got {args.retry_seconds}")
    check_stream_timeout(args.stream_timeout)
    selections = [parse_box_select(text) for text in args.select]
    given_ids = [object_id for _, object_id in selections if object_id is not None]
    twice = sorted({i for i in given_ids if given_ids.count(i) > 1})
    if twice:   # refused here, before anything opens, and in --select's terms (not the page's "remove it first")
        raise UserError(f"--select: object id{'s' if len(twice) > 1 else ''} {', '.join(map(str, twice))} "
                        f"given to more than one box; give each box its own id, or none (the next free one)")
    package = load_package(args.package)
    family = families.get(package.family)
    if selections and not family.takes_mask:
        raise UserError(f"--select: {family.name} packages segment automatically; drop --select")
    if not args.headless:
        try:
            from vosrt.sdk.live import server
        except ModuleNotFoundError as err:
            raise UserError(f"the live viewer needs '{err.name}': {install_command('live')} "
                            f"(or use --headless)") from None
        if not 1 <= args.port <= 65535:   # the socket's OverflowError was a traceback
            raise UserError(f"--port: expected a port number in 1..65535, got {args.port}")
        token = args.token
        if token is not None and len(token) < 8:
            raise UserError(f"--token: {len(token)} characters is too easy to guess; give at least 8, or omit "
                            "--token (vosrt live generates one when --host is not loopback)")
        odd = sorted({c for c in token or "" if not (c.isascii() and (c.isalnum() or c in "-._~"))})
        if odd:   # it goes into the printed URL, a cookie and a header: '+', '#', '&', a space or 'ä' made them fail
            raise UserError(f"--token: {' '.join(repr(c) for c in odd)} cannot go into the page's URL as it is; use "
                            "letters, digits and - . _ ~ only (or omit --token: vosrt live generates one)")
        if token is None and not server.is_loopback(args.host):
            token = secrets.token_urlsafe(16)
    if args.headless:
        unused = [flag for flag, given in (("--token", args.token is not None), ("--open", args.open),
                                           ("--save-dir", args.save_dir != DEFAULT_SAVE_DIR)) if given]
        if unused:   # the page's options: nothing in a headless run reads them
            print(f"note: --headless serves no page, so {', '.join(unused)} "
                  f"{'is' if len(unused) == 1 else 'are'} ignored", file=sys.stderr)
    if args.headless and family.takes_mask and not selections:
        print(f"note: no --select given; a {family.name} package tracks nothing until objects are selected, "
              f"so every mask will be empty", file=sys.stderr)
    segmenter = load_segmenter(args.box_segmenter) if args.box_segmenter else grabcut_box
    session = load_session(args, family, package, "live")
    try:
        limit = getattr(session, "max_objects", None)
        if limit is not None and len(selections) > limit:   # said of the flags (the page's message says to remove one)
            raise UserError(f"--select: {len(selections)} boxes, but this session tracks at most {limit} "
                            f"object{'' if limit == 1 else 's'} (max_objects); give {limit} or fewer, or add --max-objects {len(selections)}")
        source = _open_live_source(args)
    except BaseException:
        session.close()
        raise
    pipeline = LivePipeline(session, source, png_dir=args.out, video=args.video, save_dir=args.save_dir,
                            box_segmenter=segmenter, max_frames=args.frames, render=not args.headless)
    selected = [pipeline.select_box(box, object_id) for box, object_id in selections]
    mode = "realtime, newest frame wins" if source.drop else "every frame"
    print(f"{package.variant} on {session.backend.describe()}; source: {source.kind} {source.name} ({mode})",
          file=sys.stderr)
    stopped_by = None
    try:
        if args.headless:
            stopped_by = _run_headless(pipeline, enabled=not args.no_progress)
        else:
            import asyncio

            def ready(url: str) -> None:
                print(f"vosrt live: open {url}  (Ctrl-C to stop)", flush=True)
                for remote in server.page_urls(args.host, args.port, token)[1:]:   # --host 0.0.0.0 / ::
                    print(f"vosrt live: from another machine: {remote}", flush=True)
                if args.open:
                    import webbrowser
                    webbrowser.open(url)

            asyncio.run(server.serve(pipeline, args.host, args.port, token, on_ready=ready))
    finally:
        session.close()
    _report(pipeline)
    untracked = [i for i in selected if i not in pipeline.objects]
    if args.headless and untracked:   # the page shows why a selection was refused; headless says it here
        print(f"warning: --select: object{'s' if len(untracked) > 1 else ''} {', '.join(map(str, untracked))} "
              f"not tracked: {pipeline.message or 'no frame was processed'}", file=sys.stderr)
    if source.stopped_early:
        print(f"warning: {source.problem}", file=sys.stderr)
    for path in pipeline.recorded:
        if path.is_file():   # a recording that never got a frame has no file
            print(f"recording: {path}")
    # as `vosrt run`: a headless run a signal stopped (its files finished) exits 128 + the signal, so that a
    # supervisor or script tells it from a source that ended
    return 0 if stopped_by is None else 128 + stopped_by


def _run_headless(pipeline, enabled: bool = True) -> int | None:
    """Run in this thread with a progress bar (a long file said nothing until its end); SIGINT, SIGTERM and SIGHUP
    stop it cleanly. Returns the number of the signal that stopped it, None where the source ended."""
    from vosrt.sdk.progress import Progress

    source = pipeline.source
    # a file or folder processed frame by frame has a known end; a camera, a URL, --loop or --realtime (frames
    # dropped) do not
    total = None if source.drop or source.loop or source.length is None else source.length
    if pipeline.max_frames is not None:
        total = min(total or pipeline.max_frames, pipeline.max_frames)
    bar = Progress(total, "frame", enabled=enabled)
    pipeline.listeners.append(lambda: bar.update(postfix=f"{pipeline.fps():.1f} FPS"))

    received = []

    def stop(signum, frame):
        print(f"\n{signal.Signals(signum).name}: stopping", file=sys.stderr)
        received.append(int(signum))
        pipeline.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        pipeline.run()
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else None
