"""Unit tests for the pure parts of the lab guest image builder (no root, no apt, no QEMU)."""

import gzip
import os

import pytest
from hvlab import image

BASE = (
    b"int main(void){}",
    b"#!/bin/sh\nexec /bin/hvguest\n",
    b"\x7fELF busybox",
    "linux-image-6.1.0-1-cloud-amd64",
    "6.1.1-1",
)


def test_cmdline_defaults():
    line = image.kernel_cmdline("vm1")
    words = line.split()
    assert "console=ttyS0,115200" in words
    assert any(w.startswith("panic=") for w in words)
    assert "quiet" in words
    for word in ("hvlab.name=vm1", "hvlab.dirty_mb=0", "hvlab.dirty_rate=0", "hvlab.hb_ms=500"):
        assert word in words


def test_cmdline_values():
    words = image.kernel_cmdline("web-01.lab_x", dirty_mb=128, dirty_rate=50, hb_ms=200).split()
    for word in ("hvlab.name=web-01.lab_x", "hvlab.dirty_mb=128", "hvlab.dirty_rate=50", "hvlab.hb_ms=200"):
        assert word in words


@pytest.mark.parametrize("name", ["", "a b", "vm;reboot", "x=y", "é", "a\nb", None, 5])
def test_cmdline_rejects_bad_names(name):
    with pytest.raises(ValueError):
        image.kernel_cmdline(name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dirty_mb": -1},
        {"dirty_rate": -5},
        {"hb_ms": -1},
        {"hb_ms": 0},
        {"dirty_mb": 1.5},
        {"dirty_mb": "8"},
        {"dirty_rate": True},
    ],
)
def test_cmdline_rejects_bad_numbers(kwargs):
    with pytest.raises(ValueError):
        image.kernel_cmdline("vm1", **kwargs)


def test_cache_key_is_stable():
    assert image.cache_key(*BASE) == image.cache_key(*BASE)
    assert len(image.cache_key(*BASE)) >= 16


@pytest.mark.parametrize("index", range(len(BASE)))
def test_cache_key_changes_with_each_input(index):
    changed = list(BASE)
    changed[index] = changed[index] + (b"!" if isinstance(changed[index], bytes) else "!")
    assert image.cache_key(*changed) != image.cache_key(*BASE)


def test_cache_key_has_no_boundary_ambiguity():
    # Moving bytes from one input to the next must not give the same key.
    a = (b"ab", b"c", *BASE[2:])
    b = (b"a", b"bc", *BASE[2:])
    assert image.cache_key(*a) != image.cache_key(*b)


def test_kernel_dependency_picks_versioned_image():
    assert (
        image.kernel_dependency("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)") == "linux-image-6.1.0-56-cloud-amd64"
    )
    assert (
        image.kernel_dependency("linux-base (>= 4), linux-image-6.1.0-9-cloud-amd64-unsigned | foo")
        == "linux-image-6.1.0-9-cloud-amd64-unsigned"
    )
    with pytest.raises(image.ImageError):
        image.kernel_dependency("linux-base, kmod")


def test_control_field():
    text = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-x (= 1)\n\nVersion: 0\n"
    assert image.control_field(text, "Version") == "6.1.192-2"
    assert image.control_field(text, "Depends") == "linux-image-x (= 1)"
    assert image.control_field(text, "Pre-Depends") is None


def _parse_newc(data):
    entries, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize + (-(pos + namesize) % 4)
        body = data[pos : pos + filesize]
        pos += filesize + (-(pos + filesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (fields[1], body, os.makedev(fields[9], fields[10]))


def test_cpio_newc_round_trip_and_determinism():
    entries = [
        ("bin", 0o040755, b"", 0),
        ("bin/sh", 0o120777, b"/bin/busybox", 0),
        ("init", 0o100755, b"#!/bin/sh\n", 0),
        ("dev/console", 0o020600, b"", os.makedev(5, 1)),
    ]
    archive = image.cpio_newc(entries)
    assert archive == image.cpio_newc(entries)
    parsed = _parse_newc(archive)
    assert parsed["bin/sh"] == (0o120777, b"/bin/busybox", 0)
    assert parsed["init"][1] == b"#!/bin/sh\n"
    assert parsed["dev/console"][2] == os.makedev(5, 1)
    assert gzip.decompress(gzip.compress(archive, mtime=0)) == archive


def test_warm_cache_needs_no_tools(tmp_path, monkeypatch):
    """A complete image under the right key is returned without running apt, gcc or busybox."""
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "hvguest.c").write_bytes(BASE[0])
    (guest / "init").write_bytes(BASE[1])
    busybox = tmp_path / "busybox"
    busybox.write_bytes(BASE[2])
    root = tmp_path / "cache"
    monkeypatch.setattr(image, "_resolve_kernel", lambda _root, refresh=False: (BASE[3], BASE[4]))

    def forbidden(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess: {args}")

    monkeypatch.setattr(image.subprocess, "run", forbidden)
    monkeypatch.setattr(image.subprocess, "Popen", forbidden)
    final = root / image.cache_key(*BASE)
    final.mkdir(parents=True)
    (final / "image.json").write_text('{"kernel_version": "6.1.0-1-cloud-amd64"}')

    got = image.ensure_image(str(root), guest_dir=guest, busybox=str(busybox))
    assert got == image.GuestImage(str(final / "vmlinuz"), str(final / "initrd.img"), "6.1.0-1-cloud-amd64")


def test_missing_busybox_is_explained(tmp_path):
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "hvguest.c").write_bytes(BASE[0])
    (guest / "init").write_bytes(BASE[1])
    with pytest.raises(image.ImageError, match="busybox-static is not installed.*scripts/setup"):
        image.ensure_image(str(tmp_path / "cache"), guest_dir=guest, busybox=str(tmp_path / "nope"))


def test_guest_sources_exist():
    assert (image.GUEST_DIR / "hvguest.c").is_file()
    assert os.access(image.GUEST_DIR / "init", os.X_OK)


def test_kernel_resolution_is_reused_until_apt_lists_change(tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "x_Packages").write_text("a")
    monkeypatch.setattr(image, "APT_LISTS", str(lists))
    calls = []

    def fake_resolve(meta):
        calls.append(meta)
        return "linux-image-6.1.0-1-cloud-amd64", f"6.1.{len(calls)}-1"

    monkeypatch.setattr(image, "_resolve_with_apt", fake_resolve)
    root = tmp_path / "cache"
    root.mkdir()
    assert image._resolve_kernel(root) == ("linux-image-6.1.0-1-cloud-amd64", "6.1.1-1")
    assert image._resolve_kernel(root) == ("linux-image-6.1.0-1-cloud-amd64", "6.1.1-1")
    assert len(calls) == 1
    (lists / "x_Packages").write_text("changed by apt-get update")
    assert image._resolve_kernel(root) == ("linux-image-6.1.0-1-cloud-amd64", "6.1.2-1")
    assert len(calls) == 2


def test_cmdline_pti_workaround_can_be_left_out_for_the_check():
    assert "pti=on" in image.kernel_cmdline("vm1").split()
    assert "pti=on" not in image.kernel_cmdline("vm1", pti=False).split()


def test_guest_modules_go_into_the_initramfs(monkeypatch):
    monkeypatch.setattr(image, "_is_static_elf", lambda _path: True)
    monkeypatch.setattr(image, "_run", lambda *a, **k: type("R", (), {"stdout": "/bin/sh\n/sbin/insmod\n"})())
    archive = gzip.decompress(image._initramfs("/bin/busybox", b"bb", b"#!/bin/sh\n", b"hv", {"efivarfs.ko": b"ko"}))
    entries = _parse_newc(archive)
    assert entries["lib/modules/efivarfs.ko"] == (0o100644, b"ko", 0)
    assert entries["sbin/insmod"][1] == b"/bin/busybox"
    assert "lib/modules/efivarfs.ko" not in _parse_newc(gzip.decompress(
        image._initramfs("/bin/busybox", b"bb", b"#!/bin/sh\n", b"hv")))


def test_init_loads_the_module_it_is_given():
    init = (image.GUEST_DIR / "init").read_text()
    for module in image.GUEST_MODULES:
        assert f"insmod /lib/modules/{module.rsplit('/', 1)[-1]}" in init
    assert "mount -t efivarfs efivarfs /sys/firmware/efi/efivars" in init


def test_a_kernel_extracted_without_the_modules_gets_them_once(tmp_path, monkeypatch):
    kdir = tmp_path / "kernels" / "linux-image-x_1"
    kdir.mkdir(parents=True)
    (kdir / "vmlinuz").write_bytes(b"kernel")
    (kdir / "release").write_text("6.1.0-x\n")
    downloads = []

    def fake_download(package, version, workdir):
        downloads.append((package, version))
        return b"kernel", "6.1.0-x", {"efivarfs.ko": b"module"}

    monkeypatch.setattr(image, "_download_kernel", fake_download)
    for _round in (1, 2):
        vmlinuz, release, modules = image._kernel(tmp_path, "linux-image-x", "1", tmp_path)
        assert (vmlinuz.read_bytes(), release, modules) == (b"kernel", "6.1.0-x", {"efivarfs.ko": b"module"})
    assert downloads == [("linux-image-x", "1")]
