"""Unit tests for the pure parts of the generation-2 root builder and the gen2 host wiring (no root, no apt)."""

from pathlib import Path

from hvlab import hosts, rootfs

STATUS = """Package: libvirt-daemon
Status: install ok installed
Version: 11.3.0-3+deb13u3

Package: qemu-system-x86
Status: deinstall ok config-files
Version: 1:9.2.0+ds-1

Package: qemu-system-x86
Status: install ok installed
Version: 1:10.0.13+ds-0+deb13u1
"""


def test_cache_key_changes_with_what_the_root_is_made_of():
    base = rootfs.cache_key("trixie", ("a", "b"), "http://m/debian")
    assert base.startswith("trixie-")
    assert rootfs.cache_key("trixie", ("b", "a"), "http://m/debian") == base  # order does not matter
    assert rootfs.cache_key("trixie", ("a", "b", "c"), "http://m/debian") != base
    assert rootfs.cache_key("forky", ("a", "b"), "http://m/debian") != base
    assert rootfs.cache_key("trixie", ("a", "b"), "http://other/debian") != base


def test_mirror_from_deb822_and_one_line_sources():
    deb822 = (
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert rootfs.mirror_from_sources(deb822) == "http://mirror.example/debian"
    assert rootfs.mirror_from_sources("deb [arch=amd64] https://m.example/debian bookworm main\n") == (
        "https://m.example/debian"
    )
    assert rootfs.mirror_from_sources("deb https://packages.cloud.google.com/apt cloud-sdk main\n") is None


def test_dpkg_version_reads_only_installed_packages():
    assert rootfs.dpkg_version(STATUS, "libvirt-daemon") == "11.3.0-3+deb13u3"
    assert rootfs.dpkg_version(STATUS, "qemu-system-x86") == "1:10.0.13+ds-0+deb13u1"
    assert rootfs.dpkg_version(STATUS, "openssh-server") is None


def test_gen2_daemons_and_exec_run_chrooted_into_the_host_root():
    holder = {"pid": 42}
    assert hosts.in_root(["/usr/sbin/libvirtd"], None) == ["/usr/sbin/libvirtd"]
    assert hosts.in_root(["/usr/sbin/libvirtd"], "/r") == ["/usr/sbin/chroot", "/r", "/usr/sbin/libvirtd"]
    assert hosts.nsenter_argv(holder, ["virsh"], "/r")[-3:] == ["/usr/sbin/chroot", "/r", "virsh"]
    assert hosts.nsenter_argv(holder, ["virsh"])[-2:] == ["--", "virsh"]


def test_gen2_binds_target_the_root_and_bring_lab_paths_along(tmp_path, monkeypatch):
    gen_root = tmp_path / "gen2root"
    (gen_root / "etc" / "libvirt" / "qemu" / "networks").mkdir(parents=True)
    (gen_root / "etc" / "libvirt" / "libvirt-11-only.conf").write_text("x")
    noted = []
    monkeypatch.setattr(hosts, "GUEST_IMAGE_CACHE", str(tmp_path / "image-cache"))
    (tmp_path / "pki").mkdir()
    binds = hosts.prepare_dirs(tmp_path, "hv9", "10.254.0.19", noted.append, str(gen_root))
    assert noted == []  # nothing is created outside LAB_ROOT for a gen2 host
    targets = dict((t, s) for s, t in binds)
    assert targets["/run/libvirt"] == str(tmp_path / "hosts" / "hv9" / "run-libvirt")
    assert targets[str(tmp_path)] == str(tmp_path)  # LAB_ROOT at the same path inside the root
    assert str(tmp_path / "image-cache") in targets
    assert (Path(targets["/etc/libvirt"]) / "libvirt-11-only.conf").exists()  # config from the root's /etc
    assert targets["/var/log/swtpm"] == str(tmp_path / "hosts" / "hv9" / "log-swtpm")  # each host's TPM logs


def test_gen2_root_has_what_uefi_and_tpm_guests_need():
    assert {"ovmf", "swtpm", "swtpm-tools"} <= set(rootfs.PACKAGES)
    assert rootfs.cache_key("trixie", rootfs.PACKAGES, "m") != rootfs.cache_key("trixie", rootfs.PACKAGES[:-1], "m")
