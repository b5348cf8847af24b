"""Shaping what callers pass (lists, numpy arrays, torch tensors, dicts by objective)
into the JSON the service accepts, and encoding large bodies compactly. Pure functions:
the sync and async clients share them, and nothing here needs numpy.

Report arrays given as numpy arrays or torch tensors go out as *typed arrays*
(`{"dtype", "shape", "data"}`: the raw little-endian bytes, base64 in JSON): turning a
1024 x 8 x 3 array into nested lists and back took far longer than sending it."""

from __future__ import annotations

import binascii
import functools
import gzip
import json
import math
import numbers
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, SupportsIndex

from paceline.errors import InvalidInput

_b64encode: Callable[[bytes], bytes]
try:  # SIMD base64 (libbase64): a report's 16 KB of arrays in 1 us instead of 26 us
    from pybase64 import b64encode as _b64encode
except ImportError:  # the client alone installs without it (extras "numpy", "all")
    _b64encode = functools.partial(binascii.b2a_base64, newline=False)

__all__ = [
    "COMPRESS_OVER",
    "ReportEncoding",
    "check_finite",
    "curriculum_spec",
    "encode_body",
    "plain",
    "report_body",
    "run_metadata",
]

ReportEncoding = Literal["json", "msgpack"]
#: Bodies larger than this many bytes are gzip-compressed.
COMPRESS_OVER = 64 * 1024
#: Element types the service takes as typed arrays (numpy's dtype.str spelling).
TYPED_DTYPES = frozenset({"<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4",
                          "<u2", "|u1", "|b1"})


def _invalid(message: str) -> InvalidInput:
    return InvalidInput("INVALID_REPORT", message, {"field": "rewards"})


def plain(value: Any) -> Any:
    """JSON-ready data from arrays (numpy, torch, anything with `tolist`), tuples and
    nested sequences of them."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def typed_array(value: Any) -> dict[str, Any] | None:
    """A numpy array or torch tensor as a typed array, or None for anything else (lists,
    scalars, element types the service does not take, tensors numpy cannot hold)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        try:
            value = value.detach().cpu().numpy()
        except (TypeError, RuntimeError):  # e.g. bfloat16
            return None
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    code = getattr(dtype, "str", None)
    if code not in TYPED_DTYPES or not isinstance(shape, tuple) or not shape \
            or not hasattr(value, "tobytes"):
        return None
    return {"dtype": code, "shape": [int(n) for n in shape], "data": value.tobytes()}


def _array(value: Any) -> Any:
    return typed_array(value) or plain(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):  # a typed array's data
        return _b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


#: `json.dumps(value, separators=(",", ":"), default=_json_default)`, built once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)


def json_bytes(value: Any) -> bytes:
    """Compact JSON of a body, byte for byte what `_ENCODER` writes, with bytes as
    base64 strings. Objects with text keys are written here and bytes go straight in:
    base64 needs no escaping, and running a report's tens of KB of it through json's
    string escaper took about as long as the rest of the encoding."""
    if isinstance(value, bytes):
        return b'"' + _b64encode(value) + b'"'
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return b"{" + b",".join([_ENCODER.encode(key).encode() + b":" + json_bytes(item)
                                 for key, item in value.items()]) + b"}"
    return _ENCODER.encode(value).encode()


# ------------------------------------------------------------------- curricula
def _layout(distributions: Any, labels: Any, names: Sequence[str] | None) -> dict[str, Any]:
    if labels is not None:
        if names is None:
            if distributions is None or isinstance(distributions, Mapping):
                raise InvalidInput("INVALID_SPEC", "a label layout needs `names`: the "
                                   "distribution name of each label value", {"field": "names"})
            names = [d if isinstance(d, str) else d["name"] for d in distributions]
        return {"labels": plain(labels), "names": list(names)}
    if distributions is None:
        raise InvalidInput("INVALID_SPEC", "give `distributions` (names and sizes) or "
                           "`labels` with `names`", {"field": "distributions"})
    if isinstance(distributions, Mapping):
        items = [{"name": str(k), "size": int(v)} for k, v in distributions.items()]
    else:
        items = []
        for item in distributions:
            if isinstance(item, Mapping):
                items.append({"name": item["name"], "size": int(item["size"])})
            elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
                items.append({"name": str(item[0]), "size": int(item[1])})
            else:
                raise InvalidInput("INVALID_SPEC", "each distribution is {'name', 'size'} or "
                                   f"a (name, size) pair; got {item!r}",
                                   {"field": "distributions"})
    return {"distributions": items}


def curriculum_spec(name: str, *, distributions: Any = None, labels: Any = None,
                    names: Sequence[str] | None = None, objectives: Sequence[Any],
                    sampler: str | Mapping[str, Any] | None = None,
                    weighting: str | Mapping[str, Any] | None = None, batch_size: int = 64,
                    seed: int = 0, zero_variance: bool | Mapping[str, Any] | None = None,
                    primary_objective: str | None = None) -> dict[str, Any]:
    """The spec as the service expects it (`layout` + the rest). A sampler or weighting
    left as None is not sent: the service fills in its recommended default."""
    if isinstance(objectives, str):
        objectives = [objectives]
    spec: dict[str, Any] = {
        "name": name,
        "layout": _layout(distributions, labels, names),
        "objectives": plain(list(objectives)),
        "batch_size": int(batch_size),
        "seed": int(seed),
    }
    if sampler is not None:
        spec["sampler"] = plain(sampler)
    if weighting is not None:
        spec["weighting"] = plain(weighting)
    if zero_variance is not None:
        spec["zero_variance"] = plain(zero_variance)
    if primary_objective is not None:
        spec["primary_objective"] = primary_objective
    for key, value in spec.items():  # the codes the service gives the same values
        check_finite(value, "INVALID_PARAMS" if key in ("sampler", "weighting")
                     else "INVALID_SPEC", key)
    return spec


def run_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's metadata as sent (a copy; non-finite numbers refused as the service
    refuses them, `INVALID_REQUEST`)."""
    document = dict(metadata or {})
    check_finite(document, "INVALID_REQUEST", "metadata")
    return document


def check_finite(document: Any, code: str, where: str = "") -> None:
    """Refuse NaN and infinities in a spec or run metadata with `InvalidInput(code)`,
    whatever the transport: JSON cannot carry them (HTTP refused them with a bare
    ValueError from its encoder, gRPC sent them for the service to refuse), and a
    non-finite number is never a valid setting."""
    if isinstance(document, Mapping):
        for key, value in document.items():
            check_finite(value, code, f"{where}.{key}" if where else str(key))
    elif isinstance(document, list | tuple):
        for i, value in enumerate(document):
            check_finite(value, code, f"{where}[{i}]")
    elif isinstance(document, numbers.Real) and not isinstance(document, numbers.Integral) \
            and not math.isfinite(float(document)):
        raise InvalidInput(code, f"{where or 'the value'} must be a finite number; got "
                           f"{float(document)!r}", {"field": where})


# ------------------------------------------------------------------- reports
def _stack_last(parts: list[Any], where: str) -> Any:
    """Stack equal-shaped nested lists along a new last axis ([n, g] x k -> [n, g, k])."""
    first = parts[0]
    if isinstance(first, list):
        if any(not isinstance(p, list) or len(p) != len(first) for p in parts):
            raise _invalid(f"the rewards of every objective must have the same shape "
                           f"(mismatch at {where or 'the top level'})")
        return [_stack_last([p[i] for p in parts], f"{where}[{i}]")
                for i in range(len(first))]
    if any(isinstance(p, list) for p in parts):
        raise _invalid("the rewards of every objective must have the same shape")
    return list(parts)


def _rewards(rewards: Any, objectives: Sequence[str]) -> Any:
    if not isinstance(rewards, Mapping):
        return _array(rewards)
    unknown = sorted(set(map(str, rewards)) - set(objectives))
    missing = [o for o in objectives if o not in rewards]
    if unknown or missing:
        raise InvalidInput("INVALID_REPORT", f"rewards by objective must name exactly the "
                           f"objectives {list(objectives)}; missing {missing}, unknown "
                           f"{unknown}", {"field": "rewards", "missing": missing,
                                          "unknown": unknown})
    return _stack_last([plain(rewards[o]) for o in objectives], "")


def report_body(*, run_id: str, step: SupportsIndex, indices: Any, rewards: Any,
                objectives: Sequence[str], advantages: Any = None, group_ids: Any = None,
                dropped: Any = None,
                grad_products: Any = None, eval_objectives: Any = None,
                unserved: str | None = None) -> dict[str, Any]:
    """The report in the dense form (`indices` [n], `rewards` [n, g, k]) or, when
    `group_ids` is given, the flat form (one row per rollout: `rollout_indices` [m],
    `rewards` [m, k], `group_ids` [m]) that allows groups of different sizes. Arrays and
    tensors become typed arrays, lists stay lists."""
    body: dict[str, Any] = {"run_id": run_id, "step": operator.index(step)}
    if group_ids is None:
        body["indices"] = _array(indices)
    else:
        body["rollout_indices"] = _array(indices)
        body["group_ids"] = _array(group_ids)
    body["rewards"] = _rewards(rewards, objectives)
    if advantages is not None:
        body["advantages"] = _array(advantages)
    if grad_products is not None:
        body["grad_products"] = _array(grad_products)
    if eval_objectives is not None:
        body["eval_objectives"] = plain(eval_objectives)  # k numbers or a mapping
    if dropped is not None:
        body["dropped"] = plain(dropped)  # sample indices of groups not trained on
    if unserved is not None:
        body["unserved"] = unserved
    return body


def encode_body(body: Any, *, encoding: ReportEncoding = "json",
                compress_over: int | None = COMPRESS_OVER) -> tuple[bytes, dict[str, str]]:
    """Bytes and headers for a body: JSON (NaN passes through, for the service to reject
    with a clear error; typed arrays' bytes as base64) or msgpack, gzip-compressed (fast
    level) when larger than `compress_over`."""
    if encoding == "msgpack":
        msgpack = import_msgpack()
        try:
            data: bytes = msgpack.packb(body, use_bin_type=True)
        except OverflowError as exc:  # JSON carries it, for the service to refuse
            raise InvalidInput("INVALID_REPORT", f"msgpack cannot carry an integer "
                               f"beyond 64 bits ({exc})", {}) from None
        headers = {"Content-Type": "application/msgpack"}
    else:
        data = json_bytes(body)
        headers = {"Content-Type": "application/json"}
    if compress_over is not None and len(data) > compress_over:
        data = gzip.compress(data, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return data, headers


def import_msgpack() -> Any:
    """msgpack is optional (`pip install 'paceline-client[msgpack]'`)."""
    try:
        import msgpack  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("report_encoding='msgpack' needs msgpack: pip install "
                          "'./client[msgpack]' from a checkout of the repository (the "
                          "distribution paceline-client, extra msgpack)") from exc
    return msgpack
