# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host generations as placement compares them: a (QEMU, libvirt) stack of libvirt's version integers.

A VM goes to a host of the same or a newer generation than its source when one fits (an older QEMU may lack
its machine type); these helpers say whether a stack is known, older, and how it compares, in words.
"""

from __future__ import annotations

Stack = tuple[int, int]  # (QEMU, libvirt) versions as libvirt's integers; (0, 0) unknown


def known(stack: Stack) -> bool:
    return bool(stack[0] and stack[1])


def older(stack: Stack, than: Stack) -> bool:
    """`stack` is known and older than `than` (QEMU first, then libvirt)."""
    return known(stack) and known(than) and stack < than


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def generation(source: Stack, host: Stack) -> str | None:
    """How the destination's generation compares with the source's, for the reason; None when unknown."""
    if not (known(source) and known(host)):
        return None
    stack = f"QEMU {_version(host[0])}, libvirt {_version(host[1])}"
    if host == source:
        return f"same generation as the source ({stack})"
    if host > source:
        return f"newer generation than the source ({stack})"
    return (f"older generation than the source ({stack} < QEMU {_version(source[0])}, libvirt "
            f"{_version(source[1])}): no host of the same or a newer generation fits")
