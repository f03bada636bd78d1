"""Several hosts on one machine: network namespaces joined by veth pairs, and a PKI for them.

Addresses (10.231.0.0/16) live only inside the namespaces made here; names are unique per run
and everything is removed by close(), which a fixture calls even when a test fails.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NETNS_ETC = Path("/etc/netns")
WORKERS_NAME = "workers.tg"
_IP_TIMEOUT_S = 30


def refused() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "`ip netns add` needs root"
    return None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Hosts:
    """A gateway namespace and one namespace per worker, each worker on its own veth link."""

    def __init__(self, workers: int) -> None:
        self.tag = secrets.token_hex(3)  # unique per run: runs may overlap on one machine
        self.gateway = f"tg-gw-{self.tag}"
        self.workers = [f"tg-w{i}-{self.tag}" for i in range(workers)]
        self.made: list[str] = []

    @staticmethod
    def worker_ip(i: int) -> str:
        return f"10.231.{i}.2"

    def link(self, i: int) -> str:
        """The worker-side interface of worker i's link (15 characters at most)."""
        return f"tgw{i}{self.tag}"

    def create(self) -> None:
        for ns in (self.gateway, *self.workers):
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for i, ns in enumerate(self.workers):
            near = f"tgg{i}{self.tag}"
            ip("link", "add", near, "netns", self.gateway, "type", "veth", "peer", "name",
               self.link(i), "netns", ns)
            ip("-n", self.gateway, "addr", "add", f"10.231.{i}.1/24", "dev", near)
            ip("-n", ns, "addr", "add", f"{self.worker_ip(i)}/24", "dev", self.link(i))
            ip("-n", self.gateway, "link", "set", near, "up")
            ip("-n", ns, "link", "set", self.link(i), "up")
        self.name(range(len(self.workers)))

    def name(self, workers: range | list[int]) -> None:
        """Let WORKERS_NAME resolve, in the gateway's namespace, to these workers' addresses."""
        # NOTE: `ip netns exec` binds this file over /etc/hosts; rewritten in place, the
        # gateway's next lookup reads the new one.
        etc = NETNS_ETC / self.gateway
        etc.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", *(f"{self.worker_ip(i)} {WORKERS_NAME}" for i in workers)]
        (etc / "hosts").write_text("\n".join(lines) + "\n")

    def set_link(self, i: int, up: bool) -> None:
        ip("-n", self.workers[i], "link", "set", self.link(i), "up" if up else "down")

    def exec(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        """Remove what was made; deleting a namespace deletes its veth ends too."""
        shutil.rmtree(NETNS_ETC / self.gateway, ignore_errors=True)
        errors = []
        for ns in reversed(self.made):
            try:
                ip("netns", "del", ns)
            except OSError as exc:
                errors.append(str(exc))
        self.made.clear()
        if errors:
            raise OSError("; ".join(errors))


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]


def make_pki(directory: Path, ips: list[str]) -> Pki:
    """A CA, a server certificate for `ips` (and 127.0.0.1) and a client certificate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _subject("tensorgate-netns-ca")
    ca = _builder(ca_name, ca_name, ca_key, ca=True).sign(ca_key, hashes.SHA256())
    names = [x509.IPAddress(ipaddress.ip_address(a)) for a in [*ips, "127.0.0.1"]]
    pems = {}
    for who, extension in (("server", x509.SubjectAlternativeName(names)), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(_subject(who), ca_name, key, ca=False)
        if extension is not None:
            builder = builder.add_extension(extension, critical=False)
        pems[who] = _write(directory, who, builder.sign(ca_key, hashes.SHA256()), key)
    _write(directory, "ca", ca, ca_key)
    return Pki(directory / "ca.crt", pems["server"], pems["client"])


def _subject(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             ca: bool) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))


def _write(directory: Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem
