"""Every allowed range declared once, next to its type in the schema, and one check of all.

    jitter_p: float = declared("[0, 1]")                    # a probability
    temperature: float = declared("(0, inf)")               # positive
    warmup_epochs: float = declared("[0, inf)")             # non-negative
    crop_scale: List[float] = declared("(0, 1]", pair=True) # an ordered (low, high) pair
    std: List[float] = declared("(0, inf)", length=3)       # each of 3 values
    device: str = declared(choices=("auto", "cpu", "cuda"))
    subset: Optional[int] = declared("[1, inf)")            # null allowed: only a value is checked

The interval is written as in mathematics: `[` and `]` include the bound, `(` and `)` leave
it out, `inf` is no bound. `check_ranges(cfg)` walks a composed config together with its
schemas (OmegaConf keeps each node's dataclass) and stops at the first value out of range
with one line naming the key, the value and what is allowed. The entry points run it
before anything is read, trained or written (sslcifar.cli), and every command again
before it starts (a multirun's jobs, train(cfg) called from Python).
"""
import dataclasses
import math
import re
from typing import Any, Optional, Sequence

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from .errors import UserError

_INTERVAL = re.compile(r"^\s*([\[(])\s*([-+]?[\w.]+)\s*,\s*([-+]?[\w.]+)\s*([\])])\s*$")


@dataclasses.dataclass(frozen=True)
class Interval:
    low: float
    high: float
    low_open: bool
    high_open: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> "Interval":
        m = _INTERVAL.match(text)
        if not m:
            raise ValueError(f"bad interval {text!r}: write it as [0, 1], (0, inf), [1, inf) ...")
        lo, hi = float(m.group(2)), float(m.group(3))
        return cls(lo, hi, m.group(1) == "(", m.group(4) == ")", text.strip())

    def __contains__(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return False
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def describe(self) -> str:
        """`> 0`, `>= 1`, `a value in [0, 1]`, ..."""
        if math.isinf(self.high) and not math.isinf(self.low):
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if math.isinf(self.low) and not math.isinf(self.high):
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return f"a value in {self.text}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def declared(interval: Optional[str] = None, *, choices: Optional[Sequence[str]] = None,
             pair: bool = False, length: Optional[int] = None, default: Any = MISSING):
    """A schema field with its allowed values: an `interval` (for a list: of each element),
    `choices`, an ordered (low, high) `pair`, a fixed `length`. The default stays MISSING
    (values live in the YAML files) except where a schema's neutral value is its meaning
    (a view group's null: inherit)."""
    if interval is not None:
        Interval.parse(interval)                     # a typo fails at import, not at use
    meta = {"interval": interval, "choices": tuple(choices) if choices else None,
            "pair": pair, "length": 2 if pair else length}
    return dataclasses.field(default=default, metadata={"allowed": meta})


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value)


def check_value(key: str, value, allowed: dict) -> None:
    """UserError, one line, when `value` is not allowed by a declared() field's metadata."""
    if value is None:
        return
    def fail(what: str):
        raise UserError(f"{key}={_show(value)} is not allowed: {what}")
    if allowed["choices"] is not None and value not in allowed["choices"]:
        fail("use one of " + ", ".join(allowed["choices"]))
    interval = Interval.parse(allowed["interval"]) if allowed["interval"] else None
    if isinstance(value, (list, tuple)):
        if allowed["length"] is not None and len(value) != allowed["length"]:
            fail(f"needs {allowed['length']} values" + (" (low, high)" if allowed["pair"] else ""))
        if interval is not None and not all(v in interval for v in value):
            fail(f"needs each value {interval.describe().removeprefix('a value ')}")
        if allowed["pair"] and value[0] > value[1]:
            fail("needs low <= high")
    elif interval is not None and value not in interval:
        fail(f"needs {interval.describe()}")


def check_ranges(cfg, prefix: str = "") -> None:
    """Every declared field of cfg (and of every config below it) within its range."""
    schema = OmegaConf.get_type(cfg) if isinstance(cfg, DictConfig) else None
    fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    for key in cfg.keys():
        node = cfg._get_node(key)
        if node._is_missing():
            continue
        if isinstance(node, DictConfig) and not node._is_none():
            check_ranges(node, f"{prefix}{key}.")
            continue
        if isinstance(node, ListConfig) and not node._is_none() and \
                any(isinstance(v, DictConfig) for v in node):
            for i, item in enumerate(node):
                if isinstance(item, DictConfig):
                    check_ranges(item, f"{prefix}{key}.{i}.")
            continue
        f = fields.get(key)
        if f is not None and "allowed" in f.metadata:
            value = node._value() if not isinstance(node, ListConfig) else \
                OmegaConf.to_container(node, resolve=True)
            check_value(f"{prefix}{key}", cfg[key] if not isinstance(node, ListConfig) else value,
                        f.metadata["allowed"])


def declared_choices(schema, name: str) -> Sequence[str]:
    """The choices declared for `schema.name` (for messages and code that branches on them)."""
    f = next(f for f in dataclasses.fields(schema) if f.name == name)
    return f.metadata["allowed"]["choices"]
