"""hvlab: a fleet of libvirt hypervisors on one machine, out of real parts, for hvfleet.drain's tests.

Each host is a network + mount + UTS namespace with its own libvirtd and sshd; a
qemu-storage-daemon serves shared NBD disks; guests run under TCG and print a heartbeat.
Use it as `from hvlab import Lab` (tests put tests/lab on sys.path) or via tests/lab/lab.py.

Modules: state (what was made, pids + start times), netns (bridge/veths/shaping), hosts (holder,
private dirs, libvirtd, sshd), holder (the process that is a host), storage (NBD), tls (lab CA),
vm (domain XML, heartbeat), inventory (Ansible), faults, lab (the Lab class), cli, rootfs (the cached
Debian 13 root of generation-2 hosts: `up --gen2 HOST`), controller (the controller-side tests on
Debian 13's Python).
"""

from .lab import Lab, LabError, NotRoot
from .state import lab_root
from .vm import Heartbeat, VMSpec, domain_xml, parse_heartbeats

__all__ = ["Heartbeat", "Lab", "LabError", "NotRoot", "VMSpec", "domain_xml", "lab_root", "parse_heartbeats"]
