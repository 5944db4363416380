"""
When to renew a certificate and how long to wait after a failure (pure).

Renewal starts 30 days before expiry, which for Let's Encrypt's 90-day
certificates is at two thirds of the lifetime, leaving 30 days (about 45
retries at the longest back-off below) to get through an outage of the CA
or of our own HTTP listener.  A short-lived certificate (a 6-day one, or
Pebble's test certificates of a few seconds) would be "due" before it was
issued by that rule, so it renews at two thirds of its lifetime instead:
the later of the two instants.

Failures back off exponentially from two minutes, doubling, to at most six
hours.  Two minutes is chosen against Let's Encrypt's failed-validation
limit of 5 per hour per account and name: attempts at 0, 2, 6, 14 and 30
minutes make five, the sixth comes at 62 minutes, so a server whose name
or port 80 is misconfigured never trips the limit, and one whose problem
is fixed recovers within minutes (or at once on ``SIGHUP``).  From the
ninth failure on, an attempt every six hours keeps trying through a long
outage, within the 30 days before expiry.  A ``Retry-After`` from the CA
is always respected when it is longer, and a rate-limit answer without one
waits at least an hour.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

RENEW_BEFORE = timedelta(days=30)
SHORT_LIVED_FRACTION = 2 / 3

BACKOFF_FIRST = 120.0
BACKOFF_MAX = 6 * 3600.0
RATE_LIMIT_MIN = 3600.0


def renewal_time(not_before: datetime, not_after: datetime) -> datetime:
    """
    When a certificate valid from C{not_before} to C{not_after} is renewed.

    The later of 30 days before expiry and two thirds of its lifetime.
    """
    lifetime = not_after - not_before
    return max(not_after - RENEW_BEFORE, not_before + lifetime * SHORT_LIVED_FRACTION)


def backoff(failures: int, *, first: float = BACKOFF_FIRST,
            longest: float = BACKOFF_MAX) -> float:
    """
    Seconds to wait after the C{failures}-th failure in a row (1, 2, ...).
    """
    if failures < 1:
        return 0.0
    return min(first * 2 ** min(failures - 1, 32), longest)


def retry_delay(failures: int, retry_after: float | None, rate_limited: bool, *,
                first: float = BACKOFF_FIRST, longest: float = BACKOFF_MAX) -> float:
    """
    Seconds until the next attempt after a failure.

    :param retry_after: seconds the CA asked us to wait (C{Retry-After}), if any.
    :param rate_limited: the CA answered ``rateLimited``.
    """
    delay = backoff(failures, first=first, longest=longest)
    if rate_limited:
        delay = max(delay, RATE_LIMIT_MIN)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """
    Seconds from C{now} that a C{Retry-After} header value asks for.

    Both forms of RFC 9110 section 10.2.3 (delay-seconds, HTTP-date);
    L{None} for a missing or unreadable value.  Capped at a week, so a
    broken header cannot stop renewal for good.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(int(value))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), 7 * 86400.0)
