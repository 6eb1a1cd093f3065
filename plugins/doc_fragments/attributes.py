# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attribute documentation shared by the collection's modules."""

from __future__ import annotations


class ModuleDocFragment:
    """The attributes of a module that only reads (hypervisor_info, migration_preflight, drain_progress)."""

    READ_ONLY = r"""
options: {}
attributes:
  check_mode:
    description: Read-only; runs the same in check mode.
    support: full
  diff_mode:
    description: Returns no diff.
    support: none
"""
