"""Live video: a latest-frame source, box selection, the live pipeline and its browser viewer.

    vosrt live PKG --source 0                  # camera 0, viewer on http://127.0.0.1:8765/
    vosrt live PKG --source clip.mp4 --headless --select box:40,30,80,60 --out masks/

:mod:`.source` reads a camera, stream, file or folder in its own thread and hands inference the
newest frame (stale frames are dropped and counted); :mod:`.select` turns a box drawn by the user into
a mask (GrabCut, replaceable); :mod:`.pipeline` drives a session through
:func:`vosrt.sdk.streaming.stream` and takes the viewer's commands; :mod:`.server` (needs the
``vosrt[live]`` extra, aiohttp) serves the page. Only :mod:`.server` imports aiohttp, so headless use
needs no extra.
"""
