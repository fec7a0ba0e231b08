"""Pool options: every default written once, with the rule each value must meet.

:class:`PoolOptions` is what a :class:`~gunicorn_pool.pool.ConnectionPool`
runs by. Each field carries its default and its :class:`Rule` (type and
range), and :func:`coerce` applies that rule to a value from a dict or a
URL's query string. :mod:`gunicorn_pool.config` adds the connection keys with
the same machinery, so a config is checked key by key when it is built, and a
bad value is a :class:`~gunicorn_pool.errors.ConfigError` naming the pool and
the key, never a ``TypeError`` or ``OverflowError`` at the first request.

Error texts never repeat a value given as text (it could be a password put
in the wrong key); they name the key, the rule and the value's type.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Optional

from .errors import ConfigError

__all__ = ["DEFAULTS", "PoolOptions", "Rule", "coerce", "pool_option_names"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("", "none", "null")
#: The longest wait a lock accepts (threading.TIMEOUT_MAX), a bound for every timeout.
_MAX_WAIT = min(threading.TIMEOUT_MAX, 365 * 24 * 3600.0)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one option accepts.

    *kind* is ``int``, ``float``, ``bool``, ``str`` or ``tuple`` (a list of
    strings). Numbers must lie in [*low*, *high*] (*low* excluded when
    *above* is set); ``inf`` only where *infinite* is set, never ``nan``.
    *optional* admits ``None`` (``none`` or an empty value in a URL).
    *secret* values are never described, not even by type.
    """

    kind: type
    optional: bool = False
    low: Optional[float] = None
    above: bool = False
    high: Optional[float] = None
    infinite: bool = False
    choices: tuple[str, ...] = ()
    secret: bool = False
    meaning: str = ""

    def describe(self, *, too_high: bool = False) -> str:
        """The rule in words, for error messages and docs (the upper bound only
        when *too_high*, or when there is no lower one)."""
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                tuple: "a list of strings"}.get(self.kind, self.kind.__name__)  # fmt: skip
        if self.choices:
            return "one of " + ", ".join(self.choices) + (" or none" if self.optional else "")
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.above else '>='} {self.low:g}")
        if self.high is not None and (too_high or not bounds):
            bounds.append(f"<= {self.high:g}")
        if not bounds:
            return kind + (" or none" if self.optional else "")
        return " and ".join(bounds) + (" or none" if self.optional else "") + f" ({kind})"


def _option(default: Any, rule: Rule) -> Any:
    return dataclasses.field(default=default, metadata={"rule": rule})


def _seconds(meaning: str, *, low: float = 0.0, above: bool = True, optional: bool = False,
             infinite: bool = False) -> Rule:  # fmt: skip
    return Rule(float, optional=optional, low=low, above=above, high=None if infinite else _MAX_WAIT,
                infinite=infinite, meaning=meaning)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """How a pool sizes, waits, checks and ages its connections (every default lives here).

    ``min_size``/``max_size`` of ``None`` take the defaults of the process the
    pool runs in (the worker profile's, see :meth:`sizes`).
    """

    min_size: Optional[int] = _option(None, Rule(int, optional=True, low=0, high=10_000,
                                                  meaning="connections opened at warm-up"))  # fmt: skip
    max_size: Optional[int] = _option(None, Rule(int, optional=True, low=1, high=10_000,
                                                  meaning="connections the pool may hold at once"))  # fmt: skip
    timeout: float = _option(10.0, _seconds("seconds to wait for a free connection (PoolTimeout)"))
    max_waiting: int = _option(0, Rule(int, low=0, high=1_000_000, meaning="callers allowed to queue; 0: no limit"))
    max_lifetime: float = _option(3600.0, _seconds("seconds before a connection is replaced (-10% jitter)",
                                                   infinite=True))  # fmt: skip
    max_idle: float = _option(600.0, _seconds("seconds an idle connection above min_size is kept", infinite=True))
    check_interval: float = _option(0.5, _seconds("ping on checkout when idle longer than this", above=False,
                                                  infinite=True))  # fmt: skip
    check_timeout: float = _option(2.0, _seconds("seconds the checkout ping may take"))
    probe_after: Optional[float] = _option(1e-4, _seconds("poll the socket on checkout when idle this long; none: off",
                                                          above=False, optional=True))  # fmt: skip
    reconnect_backoff_max: float = _option(2.0, _seconds("cap of the reconnect backoff", above=False))
    leak_timeout: Optional[float] = _option(None, _seconds("log a lease held longer than this (with where it was"
                                                           " taken); none: off", optional=True))  # fmt: skip
    reset_session: bool = _option(True, Rule(bool, meaning="reset a session the user changed before the next user"))
    owner_check: bool = _option(True, Rule(bool, meaning="refuse use of a lent connection by another thread or"
                                                         " greenlet, or after its return"))  # fmt: skip
    strict: bool = _option(False, Rule(bool, meaning="fail the server's first start if warm-up fails"))

    def sizes(self, defaults: tuple[int, int] = (1, 1)) -> tuple[int, int]:
        """``(min_size, max_size)``: explicit values win, *defaults* (``(min, max)``: the worker
        profile's, :meth:`gunicorn_pool.base.WorkerProfile.default_sizes`) fill the rest."""
        lo, hi = defaults
        if self.max_size is not None:
            hi, lo = self.max_size, min(lo, self.max_size)
        if self.min_size is not None:
            lo = self.min_size
            hi = max(hi, lo)
        return lo, hi

    def check(self, pool_name: str) -> None:
        """Cross-field rules (each field's own rule is applied by :func:`coerce`)."""
        lo, hi = self.min_size, self.max_size
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"pool {pool_name!r}: min_size ({lo}) is larger than max_size ({hi})")


#: A PoolOptions with every default.
DEFAULTS = PoolOptions()


def pool_option_names() -> tuple[str, ...]:
    """The names of :class:`PoolOptions`' fields."""
    return tuple(f.name for f in dataclasses.fields(PoolOptions))


def rule_of(field: dataclasses.Field[Any]) -> Rule:
    rule = field.metadata.get("rule")
    assert isinstance(rule, Rule), field.name
    return rule


def coerce(pool_name: str, key: str, value: Any, rule: Rule) -> Any:
    """*value* (from a dict, or text from a URL) as *rule* wants it, or ConfigError."""

    def bad(why: str = "", *, too_high: bool = False) -> ConfigError:
        got = "" if rule.secret else f"; got {why or _kind_of(value)}"
        return ConfigError(f"pool {pool_name!r}: {key} must be {rule.describe(too_high=too_high)}{got}")

    if value is None or (isinstance(value, str) and rule.kind is not str and value.strip().lower() in _NONE):
        if rule.optional:
            return None
        raise bad("none")
    if rule.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad()
    if rule.kind is str:
        if not isinstance(value, str):
            raise bad()
        if "\x00" in value:
            raise bad("a NUL character")
        if rule.choices:
            lowered = value.strip().lower()
            if lowered not in rule.choices:
                # Not echoed: a value in the wrong key may be a password (the key names the fix).
                raise bad(f"another {len(value)}-character value")
            return lowered
        return value
    if rule.kind is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) and "\x00" not in i for i in items):
            raise bad()
        return tuple(items)
    if rule.kind in (int, float):
        number = _number(value, integral=rule.kind is int)
        if number is None:
            raise bad()
        if math.isnan(number) or (math.isinf(number) and not rule.infinite):
            raise bad(str(number))
        if rule.low is not None and (number < rule.low or (rule.above and number == rule.low)):
            raise bad(f"{number:g}")
        if rule.high is not None and number > rule.high and not (math.isinf(number) and rule.infinite):
            raise bad(f"{number:g}", too_high=True)
        return int(number) if rule.kind is int else float(number)
    raise bad()


def _number(value: Any, *, integral: bool) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if integral else float(text)
        except ValueError:
            if not integral:
                return None
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, int):
        return value if not integral or abs(value) < 2**53 else None
    if isinstance(value, float):
        if integral and (not math.isfinite(value) or value != int(value)):
            return None
        return value
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, (bool, int, float)):
        return f"{value!r}"
    return f"a {type(value).__name__}"
