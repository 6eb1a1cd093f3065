"""The destination's domain capabilities against the device models a VM uses (new -> old moves)."""

from ansible_collections.hvfleet.drain.plugins.module_utils.planning.device_support import unsupported

CAPS = """<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path><domain>qemu</domain>
<machine>pc-i440fx-7.2</machine><arch>x86_64</arch>
<devices>
  <disk supported='yes'>
    <enum name='diskDevice'><value>disk</value><value>cdrom</value></enum>
    <enum name='bus'><value>ide</value><value>virtio</value><value>sata</value></enum>
  </disk>
  <graphics supported='yes'><enum name='type'><value>vnc</value><value>spice</value></enum></graphics>
  <video supported='yes'><enum name='modelType'><value>vga</value><value>virtio</value></enum></video>
  <tpm supported='yes'>
    <enum name='model'><value>tpm-tis</value></enum>
    <enum name='backendModel'><value>emulator</value></enum>
    <enum name='backendVersion'><value>2.0</value></enum>
  </tpm>
  <filesystem supported='no'><enum name='driverType'/></filesystem>
</devices></domainCapabilities>"""


def domain(devices):
    return f"<domain type='qemu'><name>vm1</name><devices>{devices}</devices></domain>"


def test_a_vm_using_only_what_the_destination_lists_passes():
    xml = domain("<disk type='network' device='disk'><target dev='vda' bus='virtio'/></disk>"
                 "<graphics type='vnc'/><video><model type='virtio'/></video>"
                 "<tpm model='tpm-tis'><backend type='emulator' version='2.0'/></tpm>")
    assert unsupported(xml, CAPS) == []


def test_each_value_the_destination_lacks_is_named():
    xml = domain("<disk type='file' device='disk'><target dev='nvme0n1' bus='nvme'/></disk>"
                 "<disk type='file' device='disk'><target dev='nvme1n1' bus='nvme'/></disk>"
                 "<video><model type='bochs'/></video>"
                 "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>")
    assert unsupported(xml, CAPS) == ["disk bus 'nvme'", "video modelType 'bochs'", "tpm model 'tpm-crb'"]


def test_a_device_kind_marked_unsupported_is_named_and_an_undescribed_one_is_not_judged():
    xml = domain("<filesystem type='mount'><driver type='virtiofs'/><source dir='/srv'/><target dir='srv'/>"
                 "</filesystem><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
                 "<panic model='isa'/>")
    assert unsupported(xml, CAPS) == ["filesystem devices"]  # rng and panic: the capabilities say nothing
