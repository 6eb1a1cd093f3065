# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""MigrationSpec: validation, and the mapping to libvirt flags and typed parameters."""

from __future__ import annotations

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import InvalidSpec
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import spec as specmod
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec
from hypothesis import given
from hypothesis import strategies as st

BASE = specmod.VIR_MIGRATE_LIVE | specmod.VIR_MIGRATE_PEER2PEER
GIB = 1024 ** 3


def test_defaults_are_live_p2p_persist_undefine_and_no_params():
    spec = MigrationSpec()
    assert spec.flags() == BASE | specmod.VIR_MIGRATE_PERSIST_DEST | specmod.VIR_MIGRATE_UNDEFINE_SOURCE
    assert spec.params() == {}
    assert not spec.postcopy_armed


def test_flag_numbers_match_the_libvirt_binding():
    libvirt = pytest.importorskip("libvirt")
    for name in ("LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "NON_SHARED_DISK", "NON_SHARED_INC",
                 "COMPRESSED", "AUTO_CONVERGE", "POSTCOPY", "TLS", "PARALLEL", "POSTCOPY_RESUME"):
        assert getattr(specmod, f"VIR_MIGRATE_{name}") == getattr(libvirt, f"VIR_MIGRATE_{name}"), name
    assert specmod.PARAM_URI == libvirt.VIR_MIGRATE_PARAM_URI
    assert specmod.PARAM_BANDWIDTH == libvirt.VIR_MIGRATE_PARAM_BANDWIDTH
    assert specmod.PARAM_BANDWIDTH_POSTCOPY == libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY
    assert specmod.PARAM_AUTO_CONVERGE_INITIAL == libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL
    assert specmod.PARAM_AUTO_CONVERGE_INCREMENT == libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT
    assert specmod.PARAM_COMPRESSION == libvirt.VIR_MIGRATE_PARAM_COMPRESSION
    assert specmod.PARAM_PARALLEL_CONNECTIONS == libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS
    assert specmod.PARAM_TLS_DESTINATION == libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION


def test_full_precopy_spec_maps_every_option():
    spec = MigrationSpec(migrate_uri="tcp://10.254.0.12", bandwidth_mib=50, auto_converge=True,
                         auto_converge_initial=20, auto_converge_increment=10, compression="xbzrle", tls=True,
                         tls_destination="hv2.example.com", copy_storage="all", persist_dest=True,
                         undefine_source=False)
    flags = spec.flags()
    for flag in (specmod.VIR_MIGRATE_AUTO_CONVERGE, specmod.VIR_MIGRATE_COMPRESSED, specmod.VIR_MIGRATE_TLS,
                 specmod.VIR_MIGRATE_NON_SHARED_DISK, specmod.VIR_MIGRATE_PERSIST_DEST):
        assert flags & flag
    assert not flags & specmod.VIR_MIGRATE_UNDEFINE_SOURCE
    assert not flags & specmod.VIR_MIGRATE_POSTCOPY
    assert spec.params() == {
        "migrate_uri": "tcp://10.254.0.12", "bandwidth": 50, "auto_converge.initial": 20,
        "auto_converge.increment": 10, "compression": "xbzrle", "tls.destination": "hv2.example.com",
    }


def test_parallel_zstd_maps_to_parallel_flag_and_params():
    spec = MigrationSpec(compression="zstd", parallel_connections=4)
    assert spec.flags() & specmod.VIR_MIGRATE_PARALLEL
    assert spec.params() == {"compression": "zstd", "parallel.connections": 4}


def test_copy_storage_incremental_flag():
    flags = MigrationSpec(copy_storage="incremental").flags()
    assert flags & specmod.VIR_MIGRATE_NON_SHARED_INC and not flags & specmod.VIR_MIGRATE_NON_SHARED_DISK


@pytest.mark.parametrize("kwargs, armed, ladder", [
    ({}, False, False),
    ({"mode": "postcopy"}, True, True),
    ({"mode": "postcopy_after_precopy"}, True, True),
    ({"on_timeout": "postcopy"}, True, False),
    ({"on_timeout": "suspend"}, False, False),
])
def test_postcopy_is_armed_only_when_it_may_be_used(kwargs, armed, ladder):
    spec = MigrationSpec(**kwargs)
    assert spec.postcopy_armed is armed
    assert spec.ladder_has_postcopy is ladder
    assert bool(spec.flags() & specmod.VIR_MIGRATE_POSTCOPY) is armed


def test_postcopy_bandwidth_only_sent_when_postcopy_armed():
    assert "bandwidth.postcopy" not in MigrationSpec(postcopy_bandwidth_mib=20).params()
    assert MigrationSpec(mode="postcopy", postcopy_bandwidth_mib=20).params()["bandwidth.postcopy"] == 20


def test_resume_flags_add_postcopy_and_resume_to_the_original_flags():
    spec = MigrationSpec(mode="postcopy_after_precopy", migrate_uri="tcp://10.0.0.2")
    assert spec.resume_flags() == spec.flags() | specmod.VIR_MIGRATE_POSTCOPY_RESUME
    assert spec.resume_flags() & specmod.VIR_MIGRATE_POSTCOPY


@pytest.mark.parametrize("kwargs, words", [
    ({"mode": "postcopy", "allow_postcopy": False}, ["mode=postcopy", "allow_postcopy"]),
    ({"on_timeout": "postcopy", "allow_postcopy": False}, ["on_timeout=postcopy", "allow_postcopy"]),
    ({"mode": "postcopy_after_precopy", "on_timeout": "postcopy", "allow_postcopy": False},
     ["mode=postcopy_after_precopy and on_timeout=postcopy"]),
    ({"mode": "postcopy", "parallel_connections": 4}, ["parallel_connections", "post-copy"]),
    ({"on_timeout": "postcopy", "parallel_connections": 2, "compression": "zstd"}, ["parallel_connections"]),
    ({"compression": "zstd"}, ["zstd", "parallel"]),
    ({"compression": "xbzrle", "parallel_connections": 2}, ["xbzrle", "parallel"]),
    ({"compression": "lz4"}, ["compression", "xbzrle, zstd"]),
    ({"mode": "fast"}, ["mode", "precopy"]),
    ({"on_timeout": "kill"}, ["on_timeout"]),
    ({"copy_storage": "some"}, ["copy_storage"]),
    ({"persist_dest": False, "undefine_source": True}, ["undefine_source", "persist_dest"]),
    ({"max_downtime_ms": 500, "max_downtime_cap_ms": 400}, ["max_downtime_cap_ms", "below"]),
    ({"max_downtime_ms": 0}, ["max_downtime_ms"]),
    ({"max_downtime_cap_ms": 3_000_000}, ["QEMU"]),
    ({"auto_converge_initial": 20}, ["auto_converge is off"]),
    ({"auto_converge": True, "auto_converge_increment": 150}, ["auto_converge_increment", "1 and 99"]),
    ({"tls_destination": "hv2"}, ["tls is off"]),
    ({"migrate_uri": "10.254.0.12"}, ["migrate_uri", "tcp://"]),
    ({"migrate_uri": "http://10.254.0.12"}, ["migrate_uri"]),
    ({"bandwidth_mib": 0}, ["bandwidth_mib"]),
    ({"parallel_connections": -1}, ["parallel_connections"]),
    ({"stats_interval_s": 0}, ["stats_interval_s"]),
    ({"stall_iterations": 0}, ["stall_iterations"]),
])
def test_impossible_combinations_are_rejected_with_the_option_named(kwargs, words):
    with pytest.raises(InvalidSpec) as info:
        MigrationSpec(**kwargs)
    text = str(info.value)
    for word in words:
        assert word in text
    assert info.value.hint, "every rejection says how to fix it"


def test_zstd_needs_libvirt_9_4_on_the_older_end():
    spec = MigrationSpec(compression="zstd", parallel_connections=4)
    with pytest.raises(InvalidSpec, match=r"9\.4\.0.*9\.0\.0"):
        spec.validate(libvirt_version=9000000)
    assert spec.validate(libvirt_version=9004000) is spec


def test_postcopy_needs_libvirt_with_postcopy_resume():
    with pytest.raises(InvalidSpec, match="resume"):
        MigrationSpec(mode="postcopy").validate(libvirt_version=8000000)
    MigrationSpec(mode="postcopy").validate(libvirt_version=9000000)
    MigrationSpec().validate(libvirt_version=8000000)  # pre-copy only: fine on old libvirt


@pytest.mark.parametrize("kwargs, ram, expected", [
    ({}, 512 * 1024 ** 2, 75.0),  # 150 s/GiB * 0.5 GiB
    ({}, 128 * 1024 ** 2, 60.0),  # floor
    ({}, 16 * GIB, 2400.0),
    ({"completion_timeout_per_gib_s": 800}, 2 * GIB, 1600.0),
    ({"completion_timeout_s": 30}, 16 * GIB, 30.0),
])
def test_deadline(kwargs, ram, expected):
    assert MigrationSpec(**kwargs).deadline_s(ram) == expected


@given(
    mode=st.sampled_from(specmod.MODES),
    on_timeout=st.sampled_from(specmod.ON_TIMEOUT),
    allow=st.booleans(),
    compression=st.sampled_from((None,) + specmod.COMPRESSIONS),
    parallel=st.sampled_from((None, 1, 4)),
    tls=st.booleans(),
    auto=st.booleans(),
)
def test_any_accepted_spec_has_coherent_flags(mode, on_timeout, allow, compression, parallel, tls, auto):
    try:
        spec = MigrationSpec(mode=mode, on_timeout=on_timeout, allow_postcopy=allow, compression=compression,
                             parallel_connections=parallel, tls=tls, auto_converge=auto)
    except InvalidSpec:
        return
    flags = spec.flags()
    assert flags & BASE == BASE
    assert not (flags & specmod.VIR_MIGRATE_POSTCOPY and flags & specmod.VIR_MIGRATE_PARALLEL)
    if flags & specmod.VIR_MIGRATE_POSTCOPY:
        assert allow
    assert bool(flags & specmod.VIR_MIGRATE_POSTCOPY) == spec.postcopy_armed
    assert bool(flags & specmod.VIR_MIGRATE_PARALLEL) == ("parallel.connections" in spec.params())
    if compression:
        assert spec.params()["compression"] == compression


def test_migrate_uri_for_builds_tcp_uris_and_refuses_uris():
    assert specmod.migrate_uri_for(None) is None
    assert specmod.migrate_uri_for("10.254.0.12") == "tcp://10.254.0.12"
    assert specmod.migrate_uri_for("hv2-mig:49200") == "tcp://hv2-mig:49200"
    assert specmod.migrate_uri_for("fd00::12") == "tcp://[fd00::12]"
    with pytest.raises(InvalidSpec, match="migration_address of hv2 'tcp://x' is a URI"):
        specmod.migrate_uri_for("tcp://x", "migration_address of hv2")


def test_destination_and_persistent_xml_become_libvirts_parameters():
    xml = "<domain type='qemu'><name>vm1</name><cputune><vcpupin vcpu='0' cpuset='0'/></cputune></domain>"
    spec = MigrationSpec(dest_xml=xml, persist_xml=xml)
    assert spec.params() == {"destination_xml": xml, "persistent_xml": xml}
    assert specmod.PARAM_DEST_XML == "destination_xml" and specmod.PARAM_PERSIST_XML == "persistent_xml"
    assert "destination XML and definition given" in spec.describe()
    assert MigrationSpec(dest_xml=xml).params() == {"destination_xml": xml}
    assert "destination" not in " ".join(MigrationSpec().params())


@pytest.mark.parametrize("kwargs, words", [
    (dict(dest_xml="vm1"), "dest_xml is not domain XML"),
    (dict(persist_xml="<cpu/>"), "persist_xml is not domain XML"),
    (dict(persist_xml="<domain/>", persist_dest=False, undefine_source=False), "persist_dest is off"),
])
def test_bad_destination_xml_is_refused_naming_the_field(kwargs, words):
    with pytest.raises(InvalidSpec, match=words):
        MigrationSpec(**kwargs)
