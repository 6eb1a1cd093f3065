"""Command line of the lab: `python tests/lab/lab.py <command>` (as root). Thin layer over hvlab.Lab."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from .lab import Lab, LabError, NotRoot, require_root
from .vm import VMSpec, boot_ids


def _label(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"label must be KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lab.py", description="hvfleet test lab: hypervisors in namespaces on one machine")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="build (or reuse/repair) the lab")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--guests", type=int, default=0, help="demo VMs demo1..demoN on hv1 (NBD disks)")
    up.add_argument(
        "--no-guest-bridge",
        action="append",
        default=[],
        metavar="HOST",
        help="do not create labbr0 on HOST (repeatable)",
    )
    up.add_argument(
        "--gen2",
        action="append",
        default=[],
        metavar="HOST",
        help="run HOST on the Debian 13 root (libvirt 11, QEMU 10) instead of the machine's own (repeatable)",
    )
    down = sub.add_parser("down", help="remove everything the lab recorded")
    down.add_argument("--purge", action="store_true", help="also delete the lab ssh key and CA")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    sub.add_parser("image", help="build or check the cached guest image")

    vs = sub.add_parser("vm-start", help="define and start a VM")
    vs.add_argument("name")
    vs.add_argument("--host", default="hv1")
    vs.add_argument("--memory", type=int, default=256, help="MiB")
    vs.add_argument("--vcpus", type=int, default=1)
    vs.add_argument("--dirty-mb", type=int, default=0)
    vs.add_argument("--dirty-rate", type=int, default=0, help="MiB/s")
    vs.add_argument("--disk", choices=["nbd", "local", "none"], default="nbd")
    vs.add_argument("--bridge", action="append", default=None, help="bridge for a NIC (repeatable; default labbr0)")
    vs.add_argument("--no-nic", action="store_true")
    vs.add_argument("--label", action="append", type=_label, default=[], help="KEY=VALUE (repeatable)")
    vs.add_argument("--uefi", action="store_true", help="boot through OVMF with an NVRAM file of its own")
    vs.add_argument("--tpm", nargs="?", const="crb", default="none", choices=["none", "crb", "tis"],
                    help="an emulated TPM 2.0 (swtpm): crb (what --tpm alone gives) or tis")
    rm = sub.add_parser("vm-rm")
    rm.add_argument("name")
    hb = sub.add_parser("heartbeat")
    hb.add_argument("name")
    hb.add_argument("--json", action="store_true")

    for name, helptext in (("shape", "cap a host's link (Mbit/s)"),):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("host")
        sp.add_argument("mbit", type=float)
    for name in ("unshape", "cut", "restore", "libvirtd-stop", "libvirtd-start"):
        sp = sub.add_parser(name)
        sp.add_argument("host")
    kq = sub.add_parser("kill-qemu")
    kq.add_argument("vm")
    sub.add_parser("restart-storage")
    br = sub.add_parser("add-bridge")
    br.add_argument("host")
    br.add_argument("bridge")
    rb = sub.add_parser("rm-bridge")
    rb.add_argument("host")
    rb.add_argument("bridge")
    ex = sub.add_parser("exec", help="run a command inside a host: exec hv1 -- virsh list")
    ex.add_argument("host")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    return p


def _print_status(s: dict) -> None:
    print(f"lab root: {s['root']}" + ("" if s["exists"] else " (no lab)"))
    for host, h in s["hosts"].items():
        flags = []
        if h["link_mbit"]:
            flags.append(f"shaped {h['link_mbit']} Mbit/s")
        if h["link_cut"]:
            flags.append("LINK CUT")
        procs = " ".join(
            f"{k}={h[k]['pid']}({'up' if h[k]['alive'] else 'DEAD'})" for k in ("holder", "libvirtd", "sshd")
        )
        gen = f"gen{h.get('generation', 1)}"
        pool = h.get("local_pool")
        if pool:
            flags.insert(0, f"pool={pool['name']}:{pool['path']}({'active' if pool['active'] else 'INACTIVE'})")
        print(f"  {host:8} {h['addr']:12} {gen} {procs} bridges={','.join(h['bridges']) or '-'} {' '.join(flags)}")
    if s["storage"]:
        q = s["storage"]["qsd"]
        print(
            f"  storage  {s['storage']['addr']:12} qemu-storage-daemon={q['pid']}({'up' if q['alive'] else 'DEAD'})"
            f" exports={','.join(s['storage']['exports']) or '-'}"
        )
    for vm, where in sorted(s["vms"].items()):
        print(f"  vm {vm:12} " + " ".join(f"{h}:{state}" for h, state in where.items()))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    lab = Lab()
    try:
        if args.cmd == "image":
            from .image import ensure_image

            img = ensure_image()
            print(f"kernel {img.kernel} ({img.kernel_version})\ninitrd {img.initrd}")
            return 0
        require_root()
        if args.cmd == "up":
            res = lab.up(args.hosts, args.guests, tuple(args.no_guest_bridge), gen2=tuple(args.gen2))
            print(
                f"lab up in {res['seconds']:.1f}s (hosts ready after {res['seconds_hosts']:.1f}s): "
                f"hosts {', '.join(res['hosts'])}; built {', '.join(res['built']) or 'none'}; "
                f"reused {', '.join(res['reused']) or 'none'}; "
                f"guests started {', '.join(res['guests_started']) or 'none'}"
            )
        elif args.cmd == "down":
            res = lab.down(purge=args.purge)
            print(
                f"lab down: removed hosts {', '.join(res['hosts']) or 'none'}{' and storage' if res['storage'] else ''}"
            )
        elif args.cmd == "status":
            s = lab.status()
            print(json.dumps(s, indent=2)) if args.json else _print_status(s)
        elif args.cmd == "vm-start":
            bridges = [] if args.no_nic else (args.bridge or ["labbr0"])
            spec = VMSpec(
                name=args.name,
                memory=args.memory,
                vcpus=args.vcpus,
                dirty_mb=args.dirty_mb,
                dirty_rate=args.dirty_rate,
                disk=args.disk,
                bridges=bridges,
                labels=dict(args.label),
                uefi=args.uefi,
                tpm=args.tpm,
            )
            lab.vm_start(spec, host=args.host)
            print(f"{args.name} started on {args.host}; console: {lab.console_path(args.name)}")
        elif args.cmd == "vm-rm":
            lab.vm_rm(args.name)
        elif args.cmd == "heartbeat":
            hb = lab.heartbeat(args.name)
            data = {
                "boot_id": hb.boot_id,
                "last_n": hb.last_n,
                "boots": boot_ids(hb),
                "running_on": lab.running_on(args.name),
                "last": hb.lines[-1] if hb.lines else None,
            }
            if args.json:
                print(json.dumps(data))
            else:
                print(
                    f"{args.name}: boot={hb.boot_id} n={hb.last_n} boots={len(data['boots'])} "
                    f"running on {','.join(data['running_on']) or 'nowhere'}"
                )
        elif args.cmd == "shape":
            lab.shape(args.host, args.mbit)
        elif args.cmd == "unshape":
            lab.unshape(args.host)
        elif args.cmd == "cut":
            lab.cut_link(args.host)
        elif args.cmd == "restore":
            lab.restore_link(args.host)
        elif args.cmd == "libvirtd-stop":
            lab.stop_libvirtd(args.host)
        elif args.cmd == "libvirtd-start":
            lab.start_libvirtd(args.host)
        elif args.cmd == "kill-qemu":
            print(f"killed QEMU pid {lab.kill_qemu(args.vm)}")
        elif args.cmd == "restart-storage":
            lab.restart_storage()
        elif args.cmd == "add-bridge":
            lab.add_bridge(args.host, args.bridge)
        elif args.cmd == "rm-bridge":
            lab.remove_bridge(args.host, args.bridge)
        elif args.cmd == "exec":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not argv:
                argv = ["/bin/bash"]
            full = lab.exec_argv(args.host, argv)
            os.execvp(full[0], full)
    except BrokenPipeError:  # `lab.py status | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - let the interpreter's final flush succeed
        return 0
    except NotRoot as exc:
        print(f"lab.py: {exc}", file=sys.stderr)
        return 2
    except (LabError, TimeoutError, RuntimeError, LookupError, ValueError) as exc:
        print(f"lab.py {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0
