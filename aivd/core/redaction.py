"""Secrets out of what aivd records, reports and logs: command lines and URLs with passwords, keys and tokens.

A command line is stored with each run (database, report.html, a pack's card) and URLs appear in error
messages that end up in records; `redact_command` and `redact_url` replace each secret with `***` and keep the
rest readable, so a record still says what was run and against which host.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

MASK = "***"
# An option or query parameter named like this holds a secret. A count of tokens (--max-new-tokens) is none.
SECRET_NAME = re.compile(r"key|token(?!s)|secret|passw", re.IGNORECASE)
# scheme://... up to the next blank; found anywhere in an argument, such as --db=postgresql://user:pw@host/db.
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
# ?password=pw or &api_key=pw in a URL's query.
QUERY_SECRET = re.compile(r"(?P<name>[?&][^=&#\s]+)=(?P<value>[^&#\s]*)")


def redact_url(url: str) -> str:
    """`url` with the password of its user info and the values of secret-named query parameters as `***`:
    `postgresql+psycopg://user:pw@host/db` -> `postgresql+psycopg://user:***@host/db`.

    The user info is split with urllib at the last `@` of the host part, so a password holding an unencoded `@`
    is hidden whole (SQLAlchemy's `make_url` would take the text after its first `@` as the host and show it).
    """
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # an invalid IPv6 host: no user info can be told apart, so the host part goes
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{MASK}" if rest else url
    userinfo, at, host = netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if at and colon:
        start = url.index("//") + 2  # where urlsplit found the host part
        url = f"{url[:start]}{user}:{MASK}@{host}{url[start + len(netloc):]}"
    return QUERY_SECRET.sub(_redact_parameter, url)


def _redact_parameter(match: re.Match) -> str:
    name = match["name"]
    return f"{name}={MASK}" if SECRET_NAME.search(name) else match[0]


def redact_command(argv: Sequence[str]) -> str:
    """The command line `argv` as one line to record, with every secret as `***`: the value of an option whose
    name says key, token, secret or password (`--api-key X`, `--api-key=X`), and the passwords of URLs."""
    shown: list[str] = []
    value_is_secret = False
    for argument in map(str, argv):
        if value_is_secret:
            shown.append(MASK)
            value_is_secret = False
            continue
        if argument.startswith("-") and SECRET_NAME.search(argument.partition("=")[0]):
            name, equals, _value = argument.partition("=")
            shown.append(f"{name}={MASK}" if equals else name)
            value_is_secret = not equals
            continue
        shown.append(URL.sub(lambda match: redact_url(match[0]), argument))
    return " ".join(shown)
