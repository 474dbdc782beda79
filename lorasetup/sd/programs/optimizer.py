"""One step of a bitsandbytes optimizer on a tiny tensor on the expected device (the device gate's
device.features). Its own process: a hung CUDA kernel must not take the shared stack probe with it.

params: {"device": "auto" | "cpu" | "cuda" | "mps" | "xpu", "optimizer": "AdamW8bit" | "module.Class" | ...}
answer: device, bitsandbytes (its version), optimizer_class, step_s, finite (no NaN/inf after the step), error.

Standard library only at module level; syntax old interpreters parse.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable
from typing import Any


def errline(exc: BaseException) -> str:
    """The last line of an exception as Python prints it."""
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def usable(torch: Any) -> dict[str, bool]:
    xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "xpu": xpu}


def pick_device(torch: Any, asked: str) -> str:
    """`auto`: what accelerate picks (MPS, then CUDA, then XPU, else the CPU)."""
    found = usable(torch)
    return next((d for d in ("mps", "cuda", "xpu") if found[d]), "cpu") if asked == "auto" else asked


def optimizer_class(bnb: Any, name: str) -> tuple[Any, dict[str, Any]]:
    """The class sd-scripts builds for `name` (library/train_util.py get_optimizer), and its extra kwargs."""
    kwargs: dict[str, Any] = {}
    if "." in name:
        module, attr = name.rsplit(".", 1)
        space = importlib.import_module(module)
    else:
        space, attr = bnb.optim, name
    if attr.lower() == "sgdnesterov8bit":  # get_optimizer: SGD8bit with nesterov
        attr, kwargs = "SGD8bit", {"momentum": 0.9, "nesterov": True}
    klass = next((getattr(space, n) for n in dir(space) if n.lower() == attr.lower()), None)
    if klass is None:
        raise AttributeError("bitsandbytes " + getattr(bnb, "__version__", "unknown") + " has no optimizer " + attr)
    return klass, kwargs


def one_step(torch: Any, dev: str, klass: Any, kwargs: dict[str, Any], answer: dict[str, Any]) -> None:
    param = torch.nn.Parameter(torch.randn(4096, device=dev))  # 8-bit state needs >= 4096 elements
    opt = klass([param], lr=1e-3, **kwargs)
    start = time.perf_counter()
    (param * param).sum().backward()
    opt.step()
    if dev == "cuda":
        torch.cuda.synchronize()
    elif dev == "mps":
        torch.mps.synchronize()
    answer["step_s"] = round(time.perf_counter() - start, 4)
    answer["finite"] = bool(torch.isfinite(param.detach()).all().item())


def main(params: dict[str, Any], checkpoint: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    answer: dict[str, Any] = {"device": None, "bitsandbytes": None, "optimizer_class": None, "step_s": None,
                              "finite": None, "error": None}
    try:
        torch = importlib.import_module("torch")
        answer["device"] = dev = pick_device(torch, params["device"])
        if not usable(torch).get(dev, False):
            raise RuntimeError("torch cannot use " + dev + " here")
        bnb = importlib.import_module("bitsandbytes")
        answer["bitsandbytes"] = getattr(bnb, "__version__", "unknown")
        klass, kwargs = optimizer_class(bnb, params["optimizer"])
        answer["optimizer_class"] = klass.__module__ + "." + klass.__name__
        one_step(torch, dev, klass, kwargs, answer)
    except (Exception, SystemExit) as exc:
        answer["error"] = errline(exc)
    return answer
