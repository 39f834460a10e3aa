"""Streaming sessions driven by long seeded random sequences of operations, as an application would drive them:
frames with and without masks, objects added and removed, resets and flushes, refused inputs and Ctrl-C at a
random line of the SDK mixed in. Session ``a`` gets everything; its twin ``b`` only the calls that took effect
(and, at a reset, is sometimes a new session instead). After every call both must give the same results bit for
bit: a refused or interrupted call leaves no trace (the interrupted one is then made again, as a user would),
a reset gives a session equivalent to a new one, every good frame comes out once, in order, with its index.
Real ONNX Runtime sessions on the tiny test packages; deterministic (fixed seeds)."""
from __future__ import annotations

import inspect
import random
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk import UserError, native_callbacks
from vosrt.sdk.tracker import Tracker

SDK = str(Path(vosrt.sdk.__file__).parent)
_SOURCE, _FIRST = inspect.getsourcelines(Tracker._step)
# Python can undo nothing once a step's state is committed: only its `return` is left there (and the returns of its
# callers), where Ctrl-C is not rolled back by any session. Those lines are not interrupted here.
_COMMITTED = _FIRST + next(k for k, line in enumerate(_SOURCE) if line.strip().startswith("self._commit("))


def _no_ctrl_c_here(frame) -> bool:
    """Lines where Ctrl-C is not tried: after a tracker's commit, and inside an ONNX Runtime run of Python operators,
    where a real signal is held until the run returns (sdk/native_callbacks.py; raised there, it would end the
    process)."""
    name = frame.f_code.co_name
    return name in ("locked", "push", "step", "add_objects") or (name == "_step" and frame.f_lineno > _COMMITTED) \
        or native_callbacks._main_depth > 0


class _CtrlC:
    """Ctrl-C's KeyboardInterrupt before the ``n``-th line the SDK's code runs (see :func:`_no_ctrl_c_here`), once."""

    def __init__(self, n: int):
        self.n, self.count, self.fired = n, 0, False

    def __enter__(self):
        def local(frame, event, arg):
            if event == "line" and not self.fired and not _no_ctrl_c_here(frame):
                self.count += 1
                if self.count >= self.n:
                    self.fired = True
                    raise KeyboardInterrupt(f"injected at {frame.f_code.co_name}:{frame.f_lineno}")
            return local

        sys.settrace(lambda frame, event, arg: local if not self.fired and frame.f_code.co_filename.startswith(SDK)
                     else None)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)


def _maybe_interrupted(pr: random.Random, call):
    """``call()``; half the time Ctrl-C lands at a random line of it first, and the call is made again."""
    if pr.random() < 0.5:
        return call()
    with _CtrlC(pr.randint(1, 300)):
        try:
            return call()
        except KeyboardInterrupt:
            pass
    return call()


def _frame(rng, size):
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _mask(rng, size, ids):
    """A label map holding every id of ``ids`` (one rectangle each, in its own band of columns)."""
    mask = np.zeros(size, np.uint8)
    band = size[1] // max(len(ids), 1)
    for k, obj in enumerate(ids):
        y, x = rng.integers(0, size[0] - 4), k * band + rng.integers(0, max(band - 3, 1))
        mask[y:y + rng.integers(2, 10), x:x + min(rng.integers(1, 10), band)] = obj
    return mask


def _bad_tracker_call(kind, rng, frame, size, tracked, max_objects):
    """Arguments of a push that must be refused with UserError."""
    g = frame.astype(np.float32) / 255
    free = [i for i in range(1, 256) if i not in tracked]
    if kind == "nan":
        g[1, 1, 0] = np.nan
        return (g,), {}
    return {
        "int32": ((frame.astype(np.int32),), {}),
        "float16": ((g.astype(np.float16),), {}),
        "0..255 float": ((frame.astype(np.float32),), {}),
        "grey": ((frame[:, :, 0],), {}),
        "bgra": ((np.dstack([frame, frame[:, :, :1]]),), {}),
        "none": ((None,), {}),
        "1x1": ((frame[:1, :1],), {}),
        "mask size": ((frame, np.ones((size[0] + 1, size[1]), np.uint8)), {}),
        "colour mask": ((frame, np.ones((*size, 3), np.uint8)), {}),
        "empty mask": ((frame, np.zeros(size, np.uint8)), {}),
        "objects=[]": ((frame, _mask(rng, size, [7])), {"objects": []}),
        "object not in mask": ((frame, _mask(rng, size, [7])), {"objects": [8]}),
        "object 0": ((frame, _mask(rng, size, [7])), {"objects": [0]}),
        "repeated object": ((frame, _mask(rng, size, [7])), {"objects": [7, 7]}),
        "objects=7": ((frame, _mask(rng, size, [7])), {"objects": 7}),
        "objects without mask": ((frame,), {"objects": [1]}),
        "fractional mask": ((frame, _mask(rng, size, [7]).astype(np.float32) + 0.5), {}),
        "id 300": ((frame, _mask(rng, size, [7]).astype(np.int16) * 43), {}),
        "too many objects": ((frame, _mask(rng, size, free[:max_objects + 1 - len(tracked)])), {}),
    }[kind]


BAD_TRACKER_CALLS = ["nan", "int32", "float16", "0..255 float", "grey", "bgra", "none", "1x1", "mask size",
                     "colour mask", "empty mask", "objects=[]", "object not in mask", "object 0", "repeated object",
                     "objects=7", "objects without mask", "fractional mask", "id 300", "too many objects",
                     "remove unknown", "remove 7"]


# seeds 3-5 in the slow tier (`pytest -m slow`): the first three already fail on each bug the driver found
@pytest.mark.parametrize("seed", [*range(3), *(pytest.param(s, marks=pytest.mark.slow) for s in range(3, 6))])
def test_a_tracker_under_random_operations_matches_a_twin_that_got_only_the_calls_that_took_effect(stcn_package,
                                                                                                   seed):
    rng, pr = np.random.default_rng(seed), random.Random(seed)
    max_objects = 4
    options = dict(threads=1, max_objects=max_objects, mem_every=pr.choice([1, 2, 5]),
                   memory_capacity=pr.choice([2, 3, 4]), top_k=pr.choice([0, 5]), color=pr.choice(["rgb", "bgr"]))
    a, b = vosrt.sdk.load(stcn_package, **options), vosrt.sdk.load(stcn_package, **options)
    sizes = [(32, 32), (40, 56), (24, 32)]
    tracked: list[int] = []
    index = -1
    ops = ["push"] * 6 + ["mask new", "mask tracked", "mask named", "probabilities", "remove", "reset", "flush"] \
        + ["bad"] * 4
    for step in range(300):
        op, size = pr.choice(ops), (pr.choice(sizes) if pr.random() < 0.3 else sizes[0])
        frame = _frame(rng, size)
        where = f"seed {seed}, step {step}: {op}"
        if op == "push":
            ra, rb = _maybe_interrupted(pr, lambda: a.push(frame)), b.push(frame)
            index += 1
            assert ra[0].index == rb[0].index == index, where
            assert np.array_equal(ra[0].labels, rb[0].labels), where
            assert set(np.unique(ra[0].labels).tolist()) <= {0, *tracked}, where
        elif op.startswith("mask"):
            free = [i for i in range(1, 256) if i not in tracked]
            if op == "mask new":
                ids, objects = pr.sample(free, min(pr.randint(1, 2), max_objects - len(tracked))), None
            elif op == "mask tracked":
                ids, objects = pr.sample(tracked, pr.randint(1, len(tracked))) if tracked else [], None
            else:   # objects= names some of the mask's ids: the others are ignored
                named = pr.sample(tracked, 1) if tracked and pr.random() < 0.5 or len(tracked) == max_objects \
                    else pr.sample(free, 1)
                ids, objects = named + pr.sample([i for i in free if i not in named], 1), named
            if not ids:
                continue
            mask = _mask(rng, size, ids)
            given = sorted(ids) if objects is None else objects   # the mask's ids, ascending
            if objects is not None and pr.random() < 0.5:
                objects = set(objects) if pr.random() < 0.5 else np.array(objects)
            if pr.random() < 0.3:
                (la, pa) = _maybe_interrupted(pr, lambda: a.step(frame, mask, objects, return_probabilities=True))
                lb, pb = b.step(frame, mask, objects, return_probabilities=True)
                assert np.array_equal(pa, pb), where
                assert pa.shape == (1 + len({*tracked, *given}), *size), where
            else:
                (ra,), (rb,) = _maybe_interrupted(pr, lambda: a.push(frame, mask, objects)), b.push(frame, mask, objects)
                la, lb = ra.labels, rb.labels
                assert ra.index == rb.index == index + 1, where
            index += 1
            tracked += [i for i in (sorted(given) if isinstance(objects, set) else given) if i not in tracked]
            assert np.array_equal(la, lb), where
            for obj in given:   # a given object is exactly its mask on the annotated frame
                assert np.array_equal(la == obj, mask == obj), where
        elif op == "probabilities":
            la, pa = _maybe_interrupted(pr, lambda: a.step(frame, return_probabilities=True))
            lb, pb = b.step(frame, return_probabilities=True)
            index += 1
            assert np.array_equal(la, lb) and np.array_equal(pa, pb), where
            assert pa.shape == (1 + len(tracked), *size), where
        elif op == "remove":
            if not tracked:
                continue
            gone = pr.sample(tracked, pr.randint(1, len(tracked)))
            _maybe_interrupted(pr, lambda: a.remove_objects(gone))
            b.remove_objects(gone)
            tracked = [i for i in tracked if i not in gone]
        elif op in ("reset", "flush"):
            if op == "reset":
                _maybe_interrupted(pr, a.reset)
            else:
                assert a.flush() == []
            if pr.random() < 0.5:
                b.reset()
            else:   # reset must give a session equivalent to a new one
                b.close()
                b = vosrt.sdk.load(stcn_package, **options)
            tracked, index = [], -1
        else:
            kind = pr.choice(BAD_TRACKER_CALLS)
            where += f" ({kind})"
            before = (list(a.objects), a.frame_index, a._since_memory, a.memory.snapshot())
            with pytest.raises(UserError):
                if kind == "remove unknown":
                    a.remove_objects([pr.choice([i for i in range(1, 256) if i not in tracked])])
                elif kind == "remove 7":
                    a.remove_objects(7)
                else:
                    args, kwargs = _bad_tracker_call(kind, rng, frame, size, tracked, max_objects)
                    getattr(a, pr.choice(["push", "step"]))(*args, **kwargs)
            after = (list(a.objects), a.frame_index, a._since_memory, a.memory.snapshot())
            assert after[:3] == before[:3] and all(x is y for x, y in zip(after[3], before[3])), where
        assert a.objects == b.objects == tracked, where
        assert a.frames_in == b.frames_in == index + 1, where
        assert a.memory.frames <= a.memory.capacity and a.memory.num_objects == len(tracked), where


def _blobs(rng, size):
    """Saturated colour squares on a dark noisy background (objects for the colour-embedding stem-seg package)."""
    frame = rng.integers(0, 30, (*size, 3), dtype=np.uint8)
    for c in range(rng.integers(1, 4)):
        y, x = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 8)
        frame[y:y + 12, x:x + 12, c % 3] = 255
    return frame


def _same(x, y) -> bool:
    return (x.index == y.index and x.labels.dtype == y.labels.dtype and np.array_equal(x.labels, y.labels)
            and (x.probability is None) == (y.probability is None)
            and (x.probability is None or np.array_equal(x.probability, y.probability)) and x.objects == y.objects)


@pytest.fixture(scope="module")
def colour_package(tmp_path_factory):
    from sdk_packages import colour_embedding_package
    return colour_embedding_package(tmp_path_factory.mktemp("colour") / "stem-seg")


@pytest.mark.parametrize("family, seed", [("3dc-seg", 0), ("3dc-seg", 1), ("stem-seg", 0), ("stem-seg", 1)])
def test_a_clip_session_under_random_operations_matches_a_twin_that_got_only_the_calls_that_took_effect(
        clip_package, colour_package, family, seed):
    package = clip_package if family == "3dc-seg" else colour_package
    rng, pr = np.random.default_rng(seed), random.Random(seed)
    a, b = vosrt.sdk.load(package, threads=1), vosrt.sdk.load(package, threads=1)
    height, width = a.size
    sizes = [(height, width), (height + 8, width + 24), (height - 8, width)]
    out: list = []        # a's finished frames of the current stream
    pushed = 0
    ops = ["push"] * 10 + ["flush", "flush twice", "reset", "bad", "bad"]
    for step in range(120):
        op, size = pr.choice(ops), (pr.choice(sizes) if pr.random() < 0.2 else sizes[0])
        frame = _blobs(rng, size)
        where = f"{family} seed {seed}, step {step}: {op}"
        if op == "push":
            ra, rb = _maybe_interrupted(pr, lambda: a.push(frame)), b.push(frame)
            pushed += 1
            assert len(ra) == len(rb) and all(map(_same, ra, rb)), where
            out += ra
            assert [d.index for d in out] == list(range(len(out))) and pushed - len(out) <= a.latency, where
        elif op.startswith("flush"):
            ra, rb = _maybe_interrupted(pr, a.flush), b.flush()
            assert len(ra) == len(rb) and all(map(_same, ra, rb)), where
            assert [d.index for d in out + ra] == list(range(pushed)), where   # each frame once, in order
            if op == "flush twice":
                assert a.flush() == [] and b.flush() == [], where
            out, pushed = [], 0
        elif op == "reset":
            a.reset()
            if family == "stem-seg" or pr.random() < 0.5:   # stem-seg ids are never reused: a new one differs
                b.reset()
            else:
                b.close()
                b = vosrt.sdk.load(package, threads=1)
            out, pushed = [], 0
        else:
            kind = pr.choice(["nan", "inf", "negative", "int32", "grey", "bgra", "none", "0..255 float", "1x1",
                              "mask", "objects", "float16"])
            where += f" ({kind})"
            g = frame.astype(np.float32) / 255
            g[0, 0, 0] = {"nan": np.nan, "inf": np.inf, "negative": -0.1}.get(kind, g[0, 0, 0])
            args, kwargs = {"int32": ((frame.astype(np.int32),), {}), "grey": ((frame[:, :, 0],), {}),
                            "bgra": ((np.dstack([frame, frame[:, :, :1]]),), {}), "none": ((None,), {}),
                            "0..255 float": ((frame.astype(np.float32),), {}), "1x1": ((frame[:1, :1],), {}),
                            "mask": ((frame, np.ones(size, np.uint8)), {}), "objects": ((frame,), {"objects": [1]}),
                            "float16": ((g.astype(np.float16),), {})}.get(kind, ((g,), {}))
            before = (a.frames_in, a.next_emit, a.last_clip_start, len(a._window))
            with pytest.raises(UserError):
                a.push(*args, **kwargs)
            assert (a.frames_in, a.next_emit, a.last_clip_start, len(a._window)) == before, where
        assert a.frames_in == b.frames_in == pushed, where
        assert len(a._window) <= a.clip_length and len(a._boxes) <= a.clip_length, where


@pytest.mark.slow
@pytest.mark.parametrize("family", ["stcn", "stem-seg"])
def test_random_operations_on_frames_of_ever_new_sizes_run_in_bounded_python_memory(stcn_package, colour_package,
                                                                                      family):
    rng, pr = np.random.default_rng(0), random.Random(0)
    if family == "stcn":
        session = vosrt.sdk.load(stcn_package, threads=1, mem_every=1, memory_capacity=4)
    else:
        session = vosrt.sdk.load(colour_package, threads=1)
    height, width = session.size
    tracked: list[int] = []
    samples = []
    tracemalloc.start()
    try:
        for n in range(6001):
            size = (height + pr.randrange(40), width + pr.randrange(40))
            frame = _frame(rng, size) if family == "stcn" else _blobs(rng, size)
            r = pr.random()
            if family == "stem-seg":
                session.flush() if r < 0.01 else session.reset() if r < 0.015 else session.push(frame)
            elif r < 0.05 and len(tracked) < 6:
                new = pr.choice([i for i in range(1, 256) if i not in tracked])
                session.push(frame, _mask(rng, size, [new]))
                tracked.append(new)
            elif r < 0.08 and tracked:
                gone = tracked.pop(pr.randrange(len(tracked)))
                session.remove_objects([gone])
            elif r < 0.085:
                session.reset()
                tracked = []
            else:
                session.push(frame)
            if n >= 1000 and n % 1000 == 0:
                samples.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert max(samples) - samples[0] < 256 * 1024, [s // 1024 for s in samples]
