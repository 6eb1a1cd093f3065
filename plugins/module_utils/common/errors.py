# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions of the migration core.

Every error carries a `hint`: the operator reads one message and knows what to fix.
Modules turn these into a single fail_json; the core never calls Ansible.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class Outcome(Protocol):
    """What MigrationFailed needs of the engine's result (engine/ imports this module, not the reverse)."""

    @property
    def message(self) -> str: ...

    @property
    def recovery(self) -> str | None: ...


class HvfleetError(Exception):
    """Base of every error the core raises on purpose."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} Fix: {self.hint}"
        return self.message


class LibvirtConnectionError(HvfleetError):
    """A libvirt URI could not be opened (or timed out); names the URI."""

    def __init__(self, uri: object, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.uri = uri


class DomainNotFound(HvfleetError):
    """The named domain is not on the host we were told it is on."""

    def __init__(self, name: str, uri: str, known: Iterable[str] = (), hint: str | None = None) -> None:
        names = sorted(known)
        listed = ", ".join(names) if names else "none"
        super().__init__(
            f"Domain '{name}' not found on {uri} (domains there: {listed}).",
            hint or "check the domain name and the uri parameter (the host the VM runs on).",
        )
        self.name = name
        self.uri = uri
        self.known = names


class InvalidSpec(HvfleetError):
    """The requested migration options cannot work together (nothing was changed)."""


class UnsafeState(HvfleetError):
    """The domain is in a state where acting could create two copies or lose one."""


class MigrationFailed(HvfleetError):
    """The VM did not end up running on the destination; `result` says where it is."""

    def __init__(self, result: Outcome, hint: str | None = None) -> None:
        super().__init__(result.message, hint or result.recovery)
        self.result: Any = result  # the engine's MigrationResult, all of it (where the VM is, the steps)
