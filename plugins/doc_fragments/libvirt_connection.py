# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt connection options shared by the modules that talk to libvirt.

The argument spec side is plugins/module_utils/common/connection_spec.py (same names, types, defaults).
"""

from __future__ import annotations


class ModuleDocFragment:
    """uri, connect_timeout, auth_username, auth_password and what libvirt needs on the managed host."""

    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt URI of the hypervisor the module opens first (the one it runs on, by default).
      - For example V(qemu:///system) on the hypervisor itself, V(qemu+tls://hv1.example.com/system) or
        V(qemu+ssh://root@hv1/system) from elsewhere. SSH URIs get C(no_tty=1), so a password prompt fails at once
        instead of hanging.
    type: str
    default: qemu:///system
  connect_timeout:
    description:
      - Seconds to wait for each libvirt connection to open (at least 1). Open connections are watched with
        libvirt keepalive, so a dead peer turns into an error instead of a hang.
    type: int
    default: 30
  auth_username:
    description:
      - SASL user name for every libvirt connection the module opens, when the daemons ask for one (for example
        C(auth_tcp = "sasl") in C(libvirtd.conf)).
      - Without O(auth_username) and O(auth_password) libvirt authenticates as it is configured to (Unix socket
        permissions, polkit, TLS certificates, SSH keys), and never prompts.
    type: str
  auth_password:
    description:
      - SASL password for every libvirt connection the module opens. Never logged.
    type: str
requirements:
  - libvirt-python (python3-libvirt) on the host that runs the module
  - the libvirt client library (libvirt0 on Debian, libvirt-libs on RHEL), which libvirt-python loads
notes:
  - The connection options are shared by the modules of the action group C(hvfleet.drain.libvirt); set them once
    with C(module_defaults) and C(group/hvfleet.drain.libvirt).
"""
