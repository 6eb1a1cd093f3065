"""The lab's guest image: a Debian cloud kernel plus a tiny busybox initramfs running hvguest.

The initramfs also carries the few kernel modules the guest loads itself (GUEST_MODULES: efivarfs,
which the cloud kernel builds as a module, for the EFI variable a UEFI guest keeps in its NVRAM).

`ensure_image()` builds it once and caches it under /var/cache/hvfleet-lab/image/<key>/, where
<key> hashes everything the image is made of (hvguest.c, the init script, /bin/busybox and the
kernel package name+version). A warm cache costs a few milliseconds: no apt, no gcc.

Layout of the cache root:
    <key>/vmlinuz, <key>/initrd.img, <key>/image.json   one complete image per key
    kernels/<package>_<version>/vmlinuz, *.ko           extracted kernels (+ GUEST_MODULES), shared
    resolved.json                                       last kernel resolution + apt lists stamp
    .build-*/                                           builds in progress (renamed into place)

`kernel_cmdline()` builds the matching kernel command line (the guest reads hvlab.* keys).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE_ROOT = "/var/cache/hvfleet-lab/image"
GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
BUSYBOX = "/bin/busybox"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
APT_LISTS = "/var/lib/apt/lists"
# Bump when the way the image is assembled changes (it is part of the cache key).
IMAGE_FORMAT = "2"
# Modules from the kernel package that go into the initramfs as lib/modules/<file name>.
GUEST_MODULES = ("kernel/fs/efivarfs/efivarfs.ko",)

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_SETUP_HINT = "run scripts/setup (or: apt-get install {pkg})"


class ImageError(RuntimeError):
    """The guest image cannot be built; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class GuestImage:
    kernel: str
    initrd: str
    kernel_version: str


# ---------------------------------------------------------------------------------------------
# Pure parts


def kernel_cmdline(name: str, dirty_mb: int = 0, dirty_rate: int = 0, hb_ms: int = 500, pti: bool = True) -> str:
    """Kernel command line for a lab guest called `name` (see guest/hvguest.c for the keys).
    `pti=False` leaves out the TCG workaround below (only to check whether a QEMU still needs it)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"guest name must match [A-Za-z0-9_.-]+, got {name!r}")
    for key, value in (("dirty_mb", dirty_mb), ("dirty_rate", dirty_rate), ("hb_ms", hb_ms)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
    if hb_ms == 0:
        raise ValueError("hb_ms must be > 0")
    # pti=on: QEMU 7.2's TCG loses writes through TLB entries cached across a dirty-bitmap sync (its
    # fast sync path never re-arms TCG's write tracking), so a busy guest came out of a multi-pass
    # pre-copy with stale kernel pages and oopsed (10 of 10 migrations). Page-table isolation
    # switches CR3 on every kernel/user crossing, which flushes TCG's TLB: 0 of 20, 0 pages differing.
    # QEMU 10.0 (the lab's Debian 13 hosts) does not need it (benchmarks/tcg_pti_check.py: 0 of 10 without
    # it there, 3 of 3 hung on QEMU 7.2); it stays on while a lab has QEMU 7.2 hosts.
    return (
        "console=ttyS0,115200 quiet loglevel=1 panic=-1 oops=panic"
        + (" pti=on" if pti else "")
        + f" hvlab.name={name} hvlab.dirty_mb={dirty_mb} hvlab.dirty_rate={dirty_rate} hvlab.hb_ms={hb_ms}"
    )


def cache_key(c_source: bytes, init_script: bytes, busybox: bytes, kernel_package: str, kernel_version: str) -> str:
    """Hash of everything an image is made of; any change gives a different key."""
    h = hashlib.sha256(f"hvlab-image-{IMAGE_FORMAT}\0".encode())
    for part in (c_source, init_script, busybox, kernel_package.encode(), kernel_version.encode()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:20]


def control_field(text: str, field: str) -> str | None:
    """Value of `field` in the first stanza of apt-cache/dpkg control text, or None."""
    match = re.search(rf"^{re.escape(field)}:[ \t]*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def kernel_dependency(depends: str) -> str:
    """The versioned linux-image package named in a meta package's Depends field."""
    for alternative in re.split(r"[,|]", depends):
        pkg = alternative.strip().split(" ", 1)[0].split(":", 1)[0]
        if re.fullmatch(r"linux-image-\d[\w.+-]*", pkg):
            return pkg
    raise ImageError(f"no versioned linux-image package in Depends: {depends!r}")


def cpio_newc(entries: Iterable[tuple[str, int, bytes, int]]) -> bytes:
    """A cpio 'newc' archive of (path, mode, data, rdev) entries; data is a symlink's target.

    Owners are root, times are zero: the same entries always give the same bytes.
    """
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (path, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], start=1):
        name = path.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(name), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        pad()
        out.write(data)
        pad()
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Building


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {cmd[0]} not found") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-5:]
        raise ImageError(f"{what} failed ({' '.join(cmd)}):\n  " + "\n  ".join(detail)) from exc


def _require(program: str, package: str) -> None:
    if shutil.which(program) is None:
        raise ImageError(f"{program} is not installed (package {package}): " + _SETUP_HINT.format(pkg=package))


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02":  # 64-bit ELF only (the busybox we need)
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i : i + 4], "little") != 3 for i in range(0, len(table), phentsize))


def _read_inputs(guest_dir: Path, busybox: str) -> tuple[bytes, bytes, bytes]:
    missing = [str(p) for p in (guest_dir / "hvguest.c", guest_dir / "init") if not p.is_file()]
    if missing:
        raise ImageError(f"guest sources missing: {', '.join(missing)} (is the checkout complete?)")
    if not os.path.isfile(busybox):
        hint = _SETUP_HINT.format(pkg="busybox-static")
        raise ImageError(f"busybox-static is not installed ({busybox} missing): {hint}")
    return (guest_dir / "hvguest.c").read_bytes(), (guest_dir / "init").read_bytes(), Path(busybox).read_bytes()


def _apt_lists_stamp() -> str:
    """Changes whenever `apt-get update` changes the package lists (so the candidate may change)."""
    try:
        entries = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(APT_LISTS) if e.is_file())
    except FileNotFoundError:
        entries = []
    return hashlib.sha256(repr(entries).encode()).hexdigest()


def _resolve_with_apt(meta: str) -> tuple[str, str]:
    """(versioned kernel package, its candidate version) that `meta` currently depends on."""
    _require("apt-cache", "apt")
    shown = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", meta], capture_output=True, text=True, check=False
    )
    depends = control_field(shown.stdout, "Depends") if shown.returncode == 0 else None
    if not depends:
        raise ImageError(f"apt does not know {meta} (no package lists?): run apt-get update")
    package = kernel_dependency(depends)
    shown = _run(["apt-cache", "show", "--no-all-versions", package], f"apt-cache show {package}")
    version = control_field(shown.stdout, "Version")
    if not version:
        raise ImageError(f"apt-cache show {package} gave no Version")
    return package, version


def _resolve_kernel(root: Path, refresh: bool = False) -> tuple[str, str]:
    """Resolve the kernel package, reusing the last answer while the apt lists are unchanged."""
    record = root / "resolved.json"
    stamp = _apt_lists_stamp()
    if not refresh:
        with contextlib.suppress(OSError, ValueError, KeyError):
            saved = json.loads(record.read_text())
            if saved["stamp"] == stamp and saved["meta"] == KERNEL_META_PACKAGE:
                return saved["package"], saved["version"]
    try:
        resolved = _resolve_with_apt(KERNEL_META_PACKAGE)
    except ImageError:
        if refresh:
            raise
        _apt_update()
        return _resolve_kernel(root, refresh=True)
    with contextlib.suppress(OSError):  # only a speed-up; a read-only cache still works
        _write_atomic(
            record,
            json.dumps(
                {
                    "stamp": _apt_lists_stamp(),
                    "meta": KERNEL_META_PACKAGE,
                    "package": resolved[0],
                    "version": resolved[1],
                }
            ).encode(),
        )
    return resolved


def _apt_update() -> None:
    _require("apt-get", "apt")
    _run(["apt-get", "update", "-q"], "apt-get update (needed to find the guest kernel package; run as root)")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _download_kernel(package: str, version: str, workdir: Path) -> tuple[bytes, str, dict[str, bytes]]:
    """(vmlinuz bytes, kernel release, {module file name: bytes}) from the package's .deb; only
    boot/vmlinuz-* and the GUEST_MODULES are extracted."""
    _require("apt-get", "apt")
    _require("dpkg-deb", "dpkg")
    cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"]
    _run(cmd, f"downloading the guest kernel {package}={version}", cwd=workdir)
    debs = list(workdir.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise ImageError(f"apt-get download left {debs} in {workdir}, expected one {package} .deb")
    found = None
    modules: dict[str, bytes] = {}
    wanted = {m.rsplit("/", 1)[-1]: m for m in GUEST_MODULES}
    # Stops reading once it has them all: dpkg-deb then dies of SIGPIPE, so its stderr only matters on failure.
    dpkg = ["dpkg-deb", "--fsys-tarfile", str(debs[0])]
    with subprocess.Popen(dpkg, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    match = re.fullmatch(r"(?:\./)?boot/vmlinuz-(.+)", member.name)
                    if match and member.isfile():
                        found = (tar.extractfile(member).read(), match.group(1))
                    module = member.name.rsplit("/", 1)[-1]
                    if module in wanted and member.isfile() and member.name.endswith("/" + wanted[module]):
                        modules[module] = tar.extractfile(member).read()
                    if found and len(modules) == len(wanted):
                        break
        except tarfile.TarError as exc:
            raise ImageError(f"cannot read {debs[0].name} with dpkg-deb --fsys-tarfile: {exc}") from exc
        finally:
            proc.stdout.close()
            errors = proc.stderr.read().decode(errors="replace").strip()
    debs[0].unlink()
    if found is None:
        raise ImageError(f"{debs[0].name} contains no boot/vmlinuz-* {errors}".strip())
    missing = sorted(set(wanted) - set(modules))
    if missing:
        raise ImageError(f"{debs[0].name} contains no {', '.join(missing)} (GUEST_MODULES in image.py)")
    return found[0], found[1], modules


def _kernel(root: Path, package: str, version: str, workdir: Path) -> tuple[Path, str, dict[str, bytes]]:
    """The extracted kernel and GUEST_MODULES for package=version, downloading it once into kernels/."""
    kdir = root / "kernels" / f"{package}_{version}"
    names = [m.rsplit("/", 1)[-1] for m in GUEST_MODULES]
    if not (kdir / "vmlinuz").is_file():
        data, release, modules = _download_kernel(package, version, workdir)
        tmp = Path(tempfile.mkdtemp(prefix=".build-kernel-", dir=root))
        (tmp / "vmlinuz").write_bytes(data)
        (tmp / "release").write_text(release + "\n")
        for module, blob in modules.items():
            (tmp / module).write_bytes(blob)
        tmp.chmod(0o755)
        kdir.parent.mkdir(exist_ok=True)
        try:
            os.rename(tmp, kdir)
        except OSError:  # already there
            shutil.rmtree(tmp, ignore_errors=True)
    elif not all((kdir / module).is_file() for module in names):  # extracted before the modules were wanted
        modules = _download_kernel(package, version, workdir)[2]
        for module, blob in modules.items():
            _write_atomic(kdir / module, blob)
    return kdir / "vmlinuz", (kdir / "release").read_text().strip(), {m: (kdir / m).read_bytes() for m in names}


def _compile_hvguest(source: Path, out: Path) -> None:
    _require("gcc", "gcc")
    cmd = ["gcc", "-O2", "-static", "-pthread", "-Wall", "-o", str(out), str(source)]
    try:
        _run(cmd, "compiling the guest program hvguest")
    except ImageError as exc:
        hint = _SETUP_HINT.format(pkg="libc6-dev")
        raise ImageError(f"{exc}\n(static linking needs libc6-dev: {hint})") from exc


def _initramfs(
    busybox: str, busybox_data: bytes, init_script: bytes, hvguest: bytes, modules: dict[str, bytes] | None = None
) -> bytes:
    if not _is_static_elf(busybox):
        raise ImageError(
            f"{busybox} is not statically linked (the dynamic 'busybox' package?): "
            + _SETUP_HINT.format(pkg="busybox-static")
        )
    applets = _run([busybox, "--list-full"], "listing busybox applets").stdout.split()
    dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root", "lib",
            "lib/modules"]
    entries = [(d, 0o040755, b"", 0) for d in dirs]
    entries[dirs.index("tmp")] = ("tmp", 0o041777, b"", 0)
    entries += [
        ("dev/console", 0o020600, b"", os.makedev(5, 1)),
        ("dev/null", 0o020666, b"", os.makedev(1, 3)),
        ("bin/busybox", 0o100755, busybox_data, 0),
        ("bin/hvguest", 0o100755, hvguest, 0),
        ("init", 0o100755, init_script, 0),
    ]
    entries += [(f"lib/modules/{module}", 0o100644, blob, 0) for module, blob in sorted((modules or {}).items())]
    taken = {e[0] for e in entries}
    for path in applets:
        path = path.strip("/")
        if path not in taken and os.path.dirname(path) in dirs:
            entries.append((path, 0o120777, b"/bin/busybox", 0))
            taken.add(path)
    return gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0)


def _image_from(dirpath: Path) -> GuestImage | None:
    try:
        meta = json.loads((dirpath / "image.json").read_text())
        version = meta["kernel_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return GuestImage(kernel=str(dirpath / "vmlinuz"), initrd=str(dirpath / "initrd.img"), kernel_version=version)


def ensure_image(
    cache_root: str = DEFAULT_CACHE_ROOT, guest_dir: str | os.PathLike = GUEST_DIR, busybox: str = BUSYBOX
) -> GuestImage:
    """Return the cached guest image, building it first if needed (needs root for apt)."""
    root, guest = Path(cache_root), Path(guest_dir)
    c_source, init_script, busybox_data = _read_inputs(guest, busybox)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create the image cache {root}: {exc} (run as root, or pass cache_root)") from exc

    package, version = _resolve_kernel(root)
    image = _image_from(root / cache_key(c_source, init_script, busybox_data, package, version))
    if image:
        return image

    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait, then find it built
        with tempfile.TemporaryDirectory(prefix=".work-", dir=root) as work:
            return _build(root, Path(work), guest, busybox, (c_source, init_script, busybox_data), package, version)


def _build(
    root: Path, work: Path, guest: Path, busybox: str, inputs: tuple[bytes, bytes, bytes], package: str, version: str
) -> GuestImage:
    for attempt in (1, 2):
        final = root / cache_key(*inputs, package, version)
        image = _image_from(final)
        if image:  # built meanwhile by another process
            return image
        try:
            vmlinuz, release, modules = _kernel(root, package, version, work)
            break
        except ImageError:
            if attempt == 2:
                raise
            # Stale or missing package lists: refresh them; the candidate version may move.
            _apt_update()
            package, version = _resolve_kernel(root, refresh=True)

    _compile_hvguest(guest / "hvguest.c", work / "hvguest")
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        initrd = _initramfs(busybox, inputs[2], inputs[1], (work / "hvguest").read_bytes(), modules)
        (build / "initrd.img").write_bytes(initrd)
        try:
            os.link(vmlinuz, build / "vmlinuz")
        except OSError:
            shutil.copyfile(vmlinuz, build / "vmlinuz")
        meta = {
            "kernel_version": release,
            "kernel_package": package,
            "kernel_package_version": version,
            "format": IMAGE_FORMAT,
        }
        (build / "image.json").write_text(json.dumps(meta, indent=1) + "\n")
        for p in ("initrd.img", "image.json"):
            (build / p).chmod(0o644)
        build.chmod(0o755)
        os.rename(build, final)  # atomic: the image appears complete or not at all
    finally:
        shutil.rmtree(build, ignore_errors=True)
    image = _image_from(final)
    if image is None:
        raise ImageError(f"image build finished but {final}/image.json is unreadable")
    return image


if __name__ == "__main__":
    print(ensure_image())
