"""A lab certificate authority (GnuTLS certtool) so the lab can show a real TLS setup: libvirtd
listening on 16514, `qemu+tls://` URIs from the controller, and an encrypted migration stream.

Layout under LAB_ROOT/pki (kept across `down`, regenerated only if missing):
    ca/cakey.pem, ca/cacert.pem           the lab CA
    hosts/<name>/{key,cert}.pem           one cert per host, server AND client purpose, with the
                                          host's name and lab IP in the subjectAltName
    controller/{cacert,clientcert,clientkey}.pem
                                          the controller's client cert in libvirt's `pkipath`
                                          layout: qemu+tls://ADDR/system?pkipath=LAB_ROOT/pki/controller
Each host's /etc/pki (a private bind mount) gets the files where libvirtd and QEMU look for them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def _certtool(args: list[str], template: str | None = None) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as tmpl:
        if template is not None:
            tmpl.write(template)
            tmpl.flush()
            args = [*args, "--template", tmpl.name]
        res = subprocess.run(["certtool", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"certtool {' '.join(args)} failed: {res.stderr.strip()}")


def _key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _certtool(["--generate-privkey", "--key-type=rsa", "--bits=2048", "--outfile", str(path)])
    path.chmod(0o600)


def ca_template() -> str:
    return 'cn = "hvfleet lab CA (LAB ONLY)"\nca\ncert_signing_key\nexpiration_days = 3650\n'


def host_template(name: str, addr: str) -> str:
    """One certificate usable as libvirtd/QEMU server and as client for outgoing migrations."""
    return (
        f'organization = "hvfleet lab"\ncn = "{name}"\n'
        f'dns_name = "{name}"\nip_address = "{addr}"\n'
        "tls_www_server\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 3650\n"
    )


def client_template(name: str) -> str:
    return (
        f'organization = "hvfleet lab"\ncn = "{name}"\n'
        "tls_www_client\nencryption_key\nsigning_key\nexpiration_days = 3650\n"
    )


def ensure_ca(pki: Path) -> tuple[Path, Path]:
    key, cert = pki / "ca" / "cakey.pem", pki / "ca" / "cacert.pem"
    if not (key.exists() and cert.exists()):
        _key(key)
        _certtool(["--generate-self-signed", "--load-privkey", str(key), "--outfile", str(cert)], ca_template())
    return key, cert


def _signed(pki: Path, key: Path, cert: Path, template: str) -> None:
    cakey, cacert = ensure_ca(pki)
    if key.exists() and cert.exists():
        return
    _key(key)
    _certtool(
        [
            "--generate-certificate",
            "--load-privkey",
            str(key),
            "--load-ca-certificate",
            str(cacert),
            "--load-ca-privkey",
            str(cakey),
            "--outfile",
            str(cert),
        ],
        template,
    )


def ensure_host_cert(pki: Path, name: str, addr: str) -> tuple[Path, Path]:
    d = pki / "hosts" / name
    _signed(pki, d / "key.pem", d / "cert.pem", host_template(name, addr))
    # A cert made for another address (hosts are renumbered only by code changes) is replaced.
    text = subprocess.run(
        ["certtool", "-i", "--infile", str(d / "cert.pem")], capture_output=True, text=True, check=False
    ).stdout
    if addr not in text:
        (d / "cert.pem").unlink()
        _signed(pki, d / "key.pem", d / "cert.pem", host_template(name, addr))
    return d / "key.pem", d / "cert.pem"


def ensure_controller(pki: Path) -> Path:
    """The controller's client cert directory, usable as `?pkipath=` in a qemu+tls URI."""
    d = pki / "controller"
    _signed(pki, d / "clientkey.pem", d / "clientcert.pem", client_template("controller"))
    shutil.copyfile(pki / "ca" / "cacert.pem", d / "cacert.pem")
    return d


def install_host_pki(pki: Path, name: str, addr: str, etc_pki: Path) -> None:
    """Fill a host's private /etc/pki with what libvirtd (server + client for p2p migration) and
    QEMU (migrate_tls_x509_cert_dir = /etc/pki/qemu) read."""
    cacert = ensure_ca(pki)[1]
    key, cert = ensure_host_cert(pki, name, addr)
    files = {
        "CA/cacert.pem": cacert,
        "libvirt/servercert.pem": cert,
        "libvirt/private/serverkey.pem": key,
        "libvirt/clientcert.pem": cert,
        "libvirt/private/clientkey.pem": key,
        "qemu/ca-cert.pem": cacert,
        "qemu/server-cert.pem": cert,
        "qemu/server-key.pem": key,
        "qemu/client-cert.pem": cert,
        "qemu/client-key.pem": key,
    }
    for rel, src in files.items():
        dst = etc_pki / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        if "key" in rel:
            dst.chmod(0o600)
