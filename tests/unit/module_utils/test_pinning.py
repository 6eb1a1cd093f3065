"""Pins of a VM against a destination's topology: the parser, the fit, and the re-mapping into a destination XML
(property tests: the re-mapped XML names only the destination's CPUs and nodes, keeps what fit, and changes
nothing but the pin sets)."""

import xml.etree.ElementTree as ET

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import pinning as PN
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import FactsError, parse_domain_xml
from hypothesis import given, settings
from hypothesis import strategies as st

# The lab hosts' topology as libvirt 9.0 reports it (one node, two CPUs)...
LAB_CAPS = """<capabilities><host><uuid>u1</uuid><cpu><arch>x86_64</arch></cpu>
  <topology><cells num='1'><cell id='0'><memory unit='KiB'>24683784</memory>
    <pages unit='KiB' size='4'>6170946</pages><pages unit='KiB' size='2048'>64</pages>
    <pages unit='KiB' size='1048576'>0</pages>
    <cpus num='2'><cpu id='0' socket_id='0' die_id='0' core_id='0' siblings='0'/>
      <cpu id='1' socket_id='0' die_id='0' core_id='1' siblings='1'/></cpus></cell></cells></topology>
</host></capabilities>"""
# ...and a two-socket host: node 0 CPUs 0-3, node 1 CPUs 4-7.
BIG_CAPS = """<capabilities><host><topology><cells num='2'>
  <cell id='0'><pages unit='KiB' size='4'>3000000</pages><pages unit='KiB' size='2048'>512</pages>
    <cpus num='4'><cpu id='0'/><cpu id='1'/><cpu id='2'/>
    <cpu id='3'/></cpus></cell>
  <cell id='1'><pages unit='KiB' size='4'>3000000</pages><pages unit='KiB' size='2048'>512</pages>
    <cpus num='4'><cpu id='4'/><cpu id='5'/><cpu id='6'/>
    <cpu id='7'/></cpus></cell></cells></topology></host></capabilities>"""

LAB = PN.topology(ET.fromstring(LAB_CAPS))
BIG = PN.topology(ET.fromstring(BIG_CAPS))

PINNED = """<domain type='qemu' xmlns:hvfleet='https://hvfleet.example/labels'><name>vm1</name>
  <metadata><hvfleet:label name='tier'>db</hvfleet:label></metadata>
  <memory unit='KiB'>262144</memory><vcpu placement='static' cpuset='4-7'>2</vcpu>
  <cputune><vcpupin vcpu='0' cpuset='5'/><vcpupin vcpu='1' cpuset='6-7'/><emulatorpin cpuset='4'/>
    <iothreadpin iothread='1' cpuset='1'/></cputune>
  <numatune><memory mode='strict' nodeset='1'/><memnode cellid='0' mode='strict' nodeset='1'/></numatune>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""


def test_topology_from_capabilities():
    assert LAB.cells == ((0, (0, 1)),) and LAB.describe() == "CPUs 0-1 in NUMA nodes 0"
    assert BIG.cpus == tuple(range(8)) and BIG.nodes == (0, 1)
    assert PN.topology(ET.fromstring("<capabilities><host/></capabilities>")) is None
    assert PN.Topology.from_dict(BIG.as_dict()) == BIG


@pytest.mark.parametrize("text, ids", [("0", (0,)), ("0-3,^2,8", (0, 1, 3, 8)), ("1, 3", (1, 3)), ("2-2", (2,))])
def test_cpuset_syntax(text, ids):
    assert PN.parse_cpuset(text) == ids


@pytest.mark.parametrize("text", ["", "a", "3-1", "^1", "1-", "0,^0"])
def test_bad_cpusets_are_refused(text):
    with pytest.raises(PN.CpusetError) as failed:
        PN.parse_cpuset(text)
    assert f"'{text}'" in failed.value.message and "0-3,^2,8" in failed.value.hint


@given(st.sets(st.integers(0, 300), min_size=1))
def test_cpuset_round_trip(ids):
    assert PN.parse_cpuset(PN.format_cpuset(ids)) == tuple(sorted(ids))


def test_domain_pins_and_what_a_destination_lacks():
    pins = parse_domain_xml(PINNED).pins
    assert pins.cpus == (("vcpu", (4, 5, 6, 7)), ("vcpupin vcpu 0", (5,)), ("vcpupin vcpu 1", (6, 7)),
                         ("emulatorpin", (4,)), ("iothreadpin iothread 1", (1,)))
    assert pins.nodes == (("memory", (1,)), ("memnode cellid 0", (1,)))
    assert PN.misfits(pins, BIG) == []
    lacking = PN.misfits(pins, LAB)
    assert "vcpupin vcpu 0 -> CPUs 5 (lacks 5)" in lacking and "memory -> nodes 1 (lacks 1)" in lacking
    assert not any("iothreadpin" in line for line in lacking)  # CPU 1 exists on the lab hosts
    assert not parse_domain_xml("<domain><name>x</name></domain>").pins


def test_a_pin_libvirt_would_refuse_is_a_facts_error_naming_the_domain():
    with pytest.raises(FactsError, match="vm1"):
        parse_domain_xml(PINNED.replace("cpuset='5'", "cpuset='x'"))


def test_adapt_remaps_onto_the_lab_topology_and_keeps_the_rest():
    out = PN.adapt_xml(PINNED, LAB)
    root = ET.fromstring(out)
    assert PN.misfits(PN.domain_pins(root), LAB) == []
    assert root.find("cputune/iothreadpin").get("cpuset") == "1"  # fitted: kept
    assert root.find("numatune/memory").get("nodeset") == "0"
    assert "hvfleet:label" in out and "ns0" not in out  # metadata keeps its prefix
    assert PN.adapt_xml(PINNED, BIG) is None  # everything fits: nothing to adapt
    with pytest.raises(PN.CpusetError):
        PN.adapt_xml(PINNED, PN.Topology())


def _strip_pins(root):
    for element, _where, attribute, _nodes in PN._places(root):
        del element.attrib[attribute]
    return ET.tostring(root, encoding="unicode")


topologies = st.builds(
    lambda layout: PN.Topology(tuple((node, tuple(range(start, start + n)))
                                     for node, (start, n) in enumerate(layout))),
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=3).map(
        lambda cells: [(i * 8 + s, n) for i, (s, n) in enumerate(cells)]))
cpusets = st.sets(st.integers(0, 31), min_size=1, max_size=5)


@st.composite
def pinned_domains(draw):
    vcpus = draw(st.integers(1, 4))
    pins = "".join(f"<vcpupin vcpu='{v}' cpuset='{PN.format_cpuset(draw(cpusets))}'/>"
                   for v in range(vcpus) if draw(st.booleans()))
    if draw(st.booleans()):
        pins += f"<emulatorpin cpuset='{PN.format_cpuset(draw(cpusets))}'/>"
    numa = ""
    if draw(st.booleans()):
        nodeset = PN.format_cpuset(draw(st.sets(st.integers(0, 5), min_size=1)))
        numa = f"<numatune><memory mode='strict' nodeset='{nodeset}'/></numatune>"
    vcpu_set = f" cpuset='{PN.format_cpuset(draw(cpusets))}'" if draw(st.booleans()) else ""
    return (f"<domain type='qemu'><name>p</name><memory unit='KiB'>65536</memory><vcpu placement='static'{vcpu_set}>"
            f"{vcpus}</vcpu><cputune>{pins}</cputune>{numa}<devices/></domain>")


@settings(max_examples=300, deadline=None)
@given(pinned_domains(), topologies)
def test_adapted_xml_fits_keeps_what_fit_and_changes_only_pins(xml, dest):
    before = ET.fromstring(xml)
    out = PN.adapt_xml(xml, dest)
    pins = PN.domain_pins(before)
    if not PN.misfits(pins, dest):
        assert out is None
        return
    after = ET.fromstring(out)
    new = PN.domain_pins(after)
    assert PN.misfits(new, dest) == []  # every pin names a CPU / node the destination has
    assert [w for w, _ids in new.cpus] == [w for w, _ids in pins.cpus]  # the same pins, in the same places
    for have, was, now in ((set(dest.cpus), pins.cpus, new.cpus), (set(dest.nodes), pins.nodes, new.nodes)):
        for (_where, old), (_same, ids) in zip(was, now, strict=True):
            assert ids  # never an empty set
            assert set(old) & have <= set(ids)  # what the destination has stays pinned
            assert len(ids) <= len(old)  # a missing id becomes one id, never more
    assert _strip_pins(before) == _strip_pins(after)  # nothing but the pin sets changed
    assert PN.adapt_xml(out, dest) is None  # adapting again changes nothing


class XmlDom:
    """A domain's XMLDesc by flags, the flags asked for, and whether it is persistent."""

    def __init__(self, live, inactive=None, persistent=True):
        self.live, self.inactive, self.persistent, self.asked = live, inactive or live, persistent, []

    def XMLDesc(self, flags):
        self.asked.append(flags)
        return self.inactive if flags & PN.VIR_DOMAIN_XML_INACTIVE else self.live

    def isPersistent(self):
        return self.persistent


class CapsConn:
    def __init__(self, caps):
        self.caps = caps

    def getCapabilities(self):
        return self.caps


def test_adapted_xmls_reads_the_migratable_live_and_inactive_xml_and_remaps_both():
    inactive = PINNED.replace("<vcpupin vcpu='0' cpuset='5'/>", "<vcpupin vcpu='0' cpuset='1'/>")
    dom = XmlDom(PINNED, inactive)
    live, kept = PN.adapted_xmls(dom, CapsConn(LAB_CAPS))
    assert dom.asked == [PN.VIR_DOMAIN_XML_MIGRATABLE, PN.VIR_DOMAIN_XML_MIGRATABLE | PN.VIR_DOMAIN_XML_INACTIVE]
    assert ET.fromstring(live).find("cputune/vcpupin").get("cpuset") == "0"  # CPU 5 -> the lab's first free one
    assert ET.fromstring(kept).find("cputune/vcpupin").get("cpuset") == "1"  # fitted in the definition: kept
    assert PN.misfits(PN.domain_pins(ET.fromstring(kept)), LAB) == []


def test_adapted_xmls_nothing_when_pins_fit_no_definition_when_transient_refused_without_topology():
    assert PN.adapted_xmls(XmlDom(PINNED), CapsConn(BIG_CAPS)) == (None, None)
    transient = XmlDom(PINNED, persistent=False)
    live, kept = PN.adapted_xmls(transient, CapsConn(LAB_CAPS))
    assert live is not None and kept is None and transient.asked == [PN.VIR_DOMAIN_XML_MIGRATABLE]
    with pytest.raises(PN.CpusetError, match="no NUMA topology"):
        PN.adapted_xmls(XmlDom(PINNED), CapsConn("<capabilities><host/></capabilities>"))
