# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt connection options of every module that talks to libvirt, in one place.

A module merges `connection_argument_spec()` into its argument spec, documents the options with the
`hvfleet.drain.libvirt_connection` doc fragment (same names, types and defaults), and opens its
connections with `connection.connect(uri, **connect_options(params))`. The modules of the action
group `hvfleet.drain.libvirt` (meta/runtime.yml) all take these options, so one
`module_defaults: {group/hvfleet.drain.libvirt: {...}}` serves every one of them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection import DEFAULT_CONNECT_TIMEOUT_S
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import InvalidSpec

DEFAULT_URI = "qemu:///system"
DEFAULT_CONNECT_TIMEOUT = int(DEFAULT_CONNECT_TIMEOUT_S)

CONNECTION_OPTIONS: dict[str, dict[str, Any]] = {
    "uri": {"type": "str", "default": DEFAULT_URI},
    "connect_timeout": {"type": "int", "default": DEFAULT_CONNECT_TIMEOUT},
    "auth_username": {"type": "str"},
    "auth_password": {"type": "str", "no_log": True},
}


def connection_argument_spec() -> dict[str, dict[str, Any]]:
    """A fresh copy of the connection options' argument spec, to merge into a module's own."""
    return copy.deepcopy(CONNECTION_OPTIONS)


def connect_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """connection.connect() / connect_all() keyword arguments from a module's parameters."""
    timeout = params["connect_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise InvalidSpec(f"connect_timeout={timeout!r} must be a whole number of seconds >= 1.",
                          f"give connect_timeout at least 1 (the default is {DEFAULT_CONNECT_TIMEOUT}).")
    return {"timeout_s": params["connect_timeout"], "username": params.get("auth_username"),
            "password": params.get("auth_password")}
