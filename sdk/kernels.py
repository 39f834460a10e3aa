"""Loader of vosrt's CUDA kernel library (``plugins/kernels``) and of its CPU driver, via ctypes.

``libvosrt_kernels.so`` holds the D2Conv3D and L2MemoryReadout CUDA kernels behind the plain C API of
``plugins/kernels/include/vosrt_kernels.h``; ``libvosrt_kernels_cpu.so`` runs the same index,
interpolation, top-k and softmax math on host arrays (that is how CI checks the kernels without a GPU).
Build both with ``cmake -S plugins -B plugins/build && cmake --build plugins/build -j``.

The library is looked up, first hit wins, in:

1. ``$VOSRT_KERNELS_LIB``: the library file itself or a folder holding it;
2. the installed package: ``vosrt/sdk/lib/``;
3. the source tree: ``plugins/build/`` and then the other ``plugins/build*/`` folders, newest first.

numpy and ctypes only: the torch side lives in ``vosrt.training.ops.cuda_kernels``.
"""
from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from vosrt.sdk.errors import UserError

KERNELS_LIBRARY = "libvosrt_kernels.so"
CPU_DRIVER_LIBRARY = "libvosrt_kernels_cpu.so"
# The fp32 kernels' own code on host threads (CI's check of their indexing without a GPU): the C API of
# libvosrt_kernels.so on host pointers; fp16 answers "not supported".
EMULATION_LIBRARY = "libvosrt_kernels_emu.so"
ENV_VAR = "VOSRT_KERNELS_LIB"

# vosrtDataType_t
FLOAT32 = 0
FLOAT16 = 1

_STATUS = {0: "success", 1: "invalid value", 2: "not supported", 3: "CUDA error", 4: "workspace too small",
           5: "out of host memory or threads"}

_SDK_DIR = Path(__file__).resolve().parent
_REPO_PLUGINS = _SDK_DIR.parent / "plugins"


class D2Conv3DParams(ctypes.Structure):
    """Mirror of ``vosrtD2Conv3DParams``."""

    _fields_ = [("batch", ctypes.c_int), ("in_channels", ctypes.c_int), ("in_t", ctypes.c_int),
                ("in_h", ctypes.c_int), ("in_w", ctypes.c_int), ("out_channels", ctypes.c_int),
                ("groups", ctypes.c_int), ("kernel", ctypes.c_int * 3), ("stride", ctypes.c_int * 3),
                ("pad", ctypes.c_int * 3), ("dilation", ctypes.c_int * 3), ("has_modulation", ctypes.c_int),
                ("has_bias", ctypes.c_int)]


class L2ReadoutParams(ctypes.Structure):
    """Mirror of ``vosrtL2ReadoutParams``."""

    _fields_ = [("batch", ctypes.c_int), ("key_dim", ctypes.c_int), ("mem_size", ctypes.c_int),
                ("query_size", ctypes.c_int), ("value_dim", ctypes.c_int), ("top_k", ctypes.c_int),
                ("scale", ctypes.c_float)]


class KernelError(RuntimeError):
    """A kernel-library call returned a status other than VOSRT_SUCCESS."""


def check_status(status: int, call: str) -> None:
    """Raise :class:`KernelError` naming ``call`` unless ``status`` is VOSRT_SUCCESS (0)."""
    if status != 0:
        raise KernelError(f"{call} failed: {_STATUS.get(status, 'unknown status')} (vosrtStatus_t {status})")


def d2conv3d_params(x_shape: Sequence[int], weight_shape: Sequence[int], stride: Sequence[int],
                    padding: Sequence[int], dilation_base: Sequence[int], groups: int,
                    has_modulation: bool, has_bias: bool) -> D2Conv3DParams:
    """Parameters of one D2Conv3D call: x ``[N, C, T, H, W]``, weight ``[Cout, C/groups, kt, kh, kw]``."""
    n, c, t, h, w = (int(v) for v in x_shape)
    p = D2Conv3DParams(batch=n, in_channels=c, in_t=t, in_h=h, in_w=w, out_channels=int(weight_shape[0]),
                       groups=int(groups), has_modulation=int(bool(has_modulation)), has_bias=int(bool(has_bias)))
    for a in range(3):
        p.kernel[a] = int(weight_shape[2 + a])
        p.stride[a] = int(stride[a])
        p.pad[a] = int(padding[a])
        p.dilation[a] = int(dilation_base[a])
    return p


def l2_readout_params(mem_key_shape: Sequence[int], query_size: int, value_dim: int, top_k: int,
                      scale: float) -> L2ReadoutParams:
    """Parameters of one readout: mem_key ``[B, Ck, N]``, M queries, V value channels. k = min(top_k, N), so a
    top_k beyond N is passed as N: the field is a 32-bit int, in which 2**32 + 3 would read 3 entries."""
    b, ck, n = (int(v) for v in mem_key_shape)
    return L2ReadoutParams(batch=b, key_dim=ck, mem_size=n, query_size=int(query_size), value_dim=int(value_dim),
                           top_k=min(int(top_k), n), scale=float(scale))


def _candidates(name: str) -> list[Path]:
    found: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        env_path = Path(env)
        if env_path.is_dir():
            found.append(env_path / name)
        elif env_path.name == name:
            found.append(env_path)
        else:  # the variable names the kernel library; its CPU driver sits beside it
            found.append(env_path.parent / name)
    found.append(_SDK_DIR / "lib" / name)
    found.extend(sorted((_REPO_PLUGINS / "build").glob(f"**/{name}")))
    others = [p for d in _REPO_PLUGINS.glob("build*") if d.name != "build" for p in d.glob(f"**/{name}")]
    found.extend(sorted(others, key=lambda p: p.stat().st_mtime, reverse=True))
    return found


def find_library(name: str = KERNELS_LIBRARY) -> Path | None:
    """Path of the first ``name`` found (see the module docstring for the order), or None."""
    for path in _candidates(name):
        if path.is_file():
            return path
    return None


_VP = ctypes.c_void_p
_SIZE = ctypes.c_size_t
_INT = ctypes.c_int


def _declare_kernels(lib: ctypes.CDLL) -> None:
    d2c = ctypes.POINTER(D2Conv3DParams)
    l2r = ctypes.POINTER(L2ReadoutParams)
    signatures = {
        "vosrtD2Conv3DOutputShape": (_INT, [d2c, ctypes.POINTER(_INT)]),
        "vosrtD2Conv3DValidate": (_INT, [d2c]),
        "vosrtD2Conv3DWorkspaceSize": (_SIZE, [d2c, _INT]),
        "vosrtD2Conv3DMinWorkspaceSize": (_SIZE, [d2c, _INT]),
        "vosrtD2Conv3DBackwardWorkspaceSize": (_SIZE, [d2c, _INT]),
        "vosrtD2Conv3DForward": (_INT, [d2c, _INT, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _SIZE, _VP]),
        "vosrtD2Conv3DBackward": (_INT, [d2c, _INT, _VP, _VP, _VP, _VP, _VP,
                                         _VP, _VP, _VP, _VP, _VP, _VP, _SIZE, _VP]),
        "vosrtL2ReadoutValidate": (_INT, [l2r]),
        "vosrtL2ReadoutWorkspaceSize": (_SIZE, [l2r, _INT]),
        "vosrtL2ReadoutForward": (_INT, [l2r, _INT, _VP, _VP, _VP, _VP, _VP, _SIZE, _VP]),
        "vosrtL2ReadoutDeviceCheck": (_INT, [l2r, _INT, ctypes.POINTER(_SIZE), ctypes.POINTER(_SIZE)]),
        "vosrtGetStatusString": (ctypes.c_char_p, [_INT]),
        "vosrtKernelsVersion": (_INT, []),
        "vosrtL2ReadoutMaxTopK": (_INT, []),
    }
    for symbol, (restype, argtypes) in signatures.items():
        fn = getattr(lib, symbol)
        fn.restype, fn.argtypes = restype, argtypes


def _declare_cpu(lib: ctypes.CDLL) -> None:
    d2c = ctypes.POINTER(D2Conv3DParams)
    l2r = ctypes.POINTER(L2ReadoutParams)
    signatures = {
        "vosrtCpuD2Conv3DOutputShape": [d2c, ctypes.POINTER(_INT)],
        "vosrtCpuD2Conv3DForward": [d2c, _VP, _VP, _VP, _VP, _VP, _VP],
        "vosrtCpuD2Conv3DBackward": [d2c, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _VP],
        "vosrtCpuL2ReadoutForward": [l2r, _VP, _VP, _VP, _VP],
    }
    for symbol, argtypes in signatures.items():
        fn = getattr(lib, symbol)
        fn.restype, fn.argtypes = _INT, argtypes


@lru_cache(maxsize=None)
def _load(name: str, path: str | None) -> ctypes.CDLL:
    env = os.environ.get(ENV_VAR)
    if not path and env and not Path(env).exists():  # a typo must not load some other build instead
        raise UserError(f"${ENV_VAR} names {env}, which does not exist: point it at {KERNELS_LIBRARY} or the "
                        f"folder holding it, or unset it to search {_SDK_DIR / 'lib'} and {_REPO_PLUGINS}/build*/")
    resolved = Path(path) if path else find_library(name)
    if resolved is None:
        raise UserError(f"{name} not found (looked in ${ENV_VAR}, {_SDK_DIR / 'lib'} and {_REPO_PLUGINS}/build*/); "
                        f"build it with: cmake -S plugins -B plugins/build && cmake --build plugins/build -j")
    lib = ctypes.CDLL(str(resolved))
    (_declare_cpu if name == CPU_DRIVER_LIBRARY else _declare_kernels)(lib)
    return lib


def load_kernels(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """The CUDA kernel library with every C function's argument types declared (cached per path)."""
    return _load(KERNELS_LIBRARY, str(path) if path else None)


def load_emulation(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """The host emulation of the kernels (``libvosrt_kernels_emu.so``), declared like :func:`load_kernels`."""
    return _load(EMULATION_LIBRARY, str(path) if path else None)


def load_cpu_driver(path: str | os.PathLike | None = None) -> "CpuDriver":
    """The CPU driver wrapped for numpy arrays (cached per path)."""
    return CpuDriver(_load(CPU_DRIVER_LIBRARY, str(path) if path else None))


def _f32(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else np.ascontiguousarray(array, dtype=np.float32)


def _ptr(array: np.ndarray | None) -> int | None:
    return None if array is None else array.ctypes.data


class CpuDriver:
    """numpy front of ``libvosrt_kernels_cpu.so``: float32 in, float32 out, the kernels' math."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def _conv_params(self, x, weight, modulation, bias, stride, padding, dilation_base, groups):
        params = d2conv3d_params(x.shape, weight.shape, stride, padding, dilation_base, groups,
                                 modulation is not None, bias is not None)
        out = (_INT * 3)()
        check_status(self.lib.vosrtCpuD2Conv3DOutputShape(ctypes.byref(params), out), "vosrtCpuD2Conv3DOutputShape")
        return params, tuple(out)

    def d2conv3d_forward(self, x, dilation, modulation, weight, bias=None, stride=(1, 1, 1), padding=(0, 0, 0),
                         dilation_base=(1, 1, 1), groups=1) -> np.ndarray:
        """Y ``[N, Cout, To, Ho, Wo]`` of D2Conv3D (arguments as in ``vosrt.training.ops.d2conv3d``)."""
        x, dilation, modulation, weight, bias = (_f32(a) for a in (x, dilation, modulation, weight, bias))
        params, out_thw = self._conv_params(x, weight, modulation, bias, stride, padding, dilation_base, groups)
        y = np.empty((x.shape[0], weight.shape[0], *out_thw), dtype=np.float32)
        check_status(self.lib.vosrtCpuD2Conv3DForward(ctypes.byref(params), _ptr(x), _ptr(dilation), _ptr(modulation),
                                                      _ptr(weight), _ptr(bias), _ptr(y)), "vosrtCpuD2Conv3DForward")
        return y

    def d2conv3d_backward(self, x, dilation, modulation, weight, grad_y, stride=(1, 1, 1), padding=(0, 0, 0),
                          dilation_base=(1, 1, 1), groups=1, has_bias=True) -> dict[str, np.ndarray]:
        """Gradients ``{"x", "dilation", "modulation" (if given), "weight", "bias" (if has_bias)}`` for grad_y."""
        x, dilation, modulation, weight, grad_y = (_f32(a) for a in (x, dilation, modulation, weight, grad_y))
        params, _ = self._conv_params(x, weight, modulation, np.zeros(1) if has_bias else None,
                                      stride, padding, dilation_base, groups)
        grads = {"x": np.empty_like(x), "dilation": np.empty_like(dilation), "weight": np.empty_like(weight)}
        if modulation is not None:
            grads["modulation"] = np.empty_like(modulation)
        if has_bias:
            grads["bias"] = np.empty(weight.shape[0], dtype=np.float32)
        check_status(self.lib.vosrtCpuD2Conv3DBackward(
            ctypes.byref(params), _ptr(x), _ptr(dilation), _ptr(modulation), _ptr(weight), _ptr(grad_y),
            _ptr(grads["x"]), _ptr(grads["dilation"]), _ptr(grads.get("modulation")), _ptr(grads["weight"]),
            _ptr(grads.get("bias"))), "vosrtCpuD2Conv3DBackward")
        return grads

    def l2_memory_readout(self, mem_key, query_key, mem_value, top_k=20, scale=0.0) -> np.ndarray:
        """out ``[B, V, M]`` from mem_key ``[B, Ck, N]``, query_key ``[B, Ck, M]``, mem_value ``[B, V, N]``;
        scale <= 0 means 1/sqrt(Ck)."""
        mem_key, query_key, mem_value = (_f32(a) for a in (mem_key, query_key, mem_value))
        params = l2_readout_params(mem_key.shape, query_key.shape[2], mem_value.shape[1], top_k, scale)
        out = np.empty((mem_key.shape[0], mem_value.shape[1], query_key.shape[2]), dtype=np.float32)
        check_status(self.lib.vosrtCpuL2ReadoutForward(ctypes.byref(params), _ptr(mem_key), _ptr(query_key),
                                                       _ptr(mem_value), _ptr(out)), "vosrtCpuL2ReadoutForward")
        return out
