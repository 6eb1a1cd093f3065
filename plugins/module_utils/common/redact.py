# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keep credentials out of what the collection writes and returns.

libvirt takes credentials through its auth callback (the modules' `auth_password`, which is
`no_log`), never from a URI; but an operator may still write `qemu+tcp://user:secret@host/system`.
Such a URI is passed to libvirt unchanged, while everything written down - the journal, the
progress events, the plan file - gets `scrub()`bed (`user:***@`), and the modules add the password
to Ansible's no_log values (`uri_passwords`) so it is masked in results and messages as well.
"""

from __future__ import annotations

import re
from typing import TypeVar, cast
from urllib.parse import urlsplit

T = TypeVar("T")

MASK = "***"
# scheme://user:password@  - the password part is anything up to the '@' that is not a separator
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"<>]*):(?P<password>[^\s/@'\"<>]+)@")


def scrub_text(text: str) -> str:
    """The text with the password of every URI in it replaced by ***."""
    if not isinstance(text, str) or "@" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)


def scrub(value: T) -> T:
    """A copy of `value` (str, or lists / tuples / dicts of them) with URI passwords masked."""
    if isinstance(value, str):
        return cast(T, scrub_text(value))
    if isinstance(value, dict):
        return cast(T, {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return cast(T, type(value)(scrub(v) for v in value))
    return value


def uri_passwords(value: object) -> set[str]:
    """Every password found in URIs inside `value` (for AnsibleModule.no_log_values)."""
    found: set[str] = set()
    if isinstance(value, str):
        for match in _USERINFO.finditer(value):
            found.add(match.group("password"))
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.add(password)
    elif isinstance(value, dict):
        for item in value.values():
            found |= uri_passwords(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found |= uri_passwords(item)
    return found
