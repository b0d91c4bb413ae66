"""Federation certificates: a CA per federation, one certificate per peer whose identity is the peer id.

A peer certificate carries its identity three ways: the subject CN (the id), a SAN URI
``p2pgan://<federation>/<id>`` (what servers read to know who called), and a SAN DNS name
``<id>.<federation>.p2pgan`` (what a client asks gRPC's TLS hostname check for, so the handshake itself
proves it reached the peer it meant to). Host names and IP addresses may be added for other tools.
Keys are EC P-256 and written with permissions 0600. Fingerprints are SHA-256 of the DER certificate.

Layout on disk: a CA directory holds ``ca.pem`` and ``ca.key``; a peer directory holds ``ca.pem``,
``peer.pem`` and ``peer.key`` (see :func:`peer_files`).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2pgan.errors import ConfigError, SecurityError
from p2pgan.wire.config import TLSFiles

#: peer ids and federation names: they become DNS labels and URI parts, so keep them plain
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
URI_SCHEME = "p2pgan"
IDENTITY_DNS_SUFFIX = "p2pgan"
CA_DAYS = 3650
PEER_DAYS = 825
CA_CERT, CA_KEY = "ca.pem", "ca.key"
PEER_CERT, PEER_KEY = "peer.pem", "peer.key"


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid peer id / federation name, else raise :class:`ConfigError`."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError(
            f"{what} {value!r} is not allowed: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return value


def identity_dns(federation: str, peer_id: str) -> str:
    """The SAN DNS name that proves ``peer_id``'s identity in ``federation`` during the TLS handshake."""
    return f"{peer_id}.{federation}.{IDENTITY_DNS_SUFFIX}"


def identity_uri(federation: str, peer_id: str) -> str:
    return f"{URI_SCHEME}://{federation}/{peer_id}"


def fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 of the DER certificate, lowercase hex (what rosters pin)."""
    if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
    else:
        der = cert_pem_or_der
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(fp: str) -> str:
    """Accept ``AB:CD:...`` or ``abcd...``; return lowercase hex without separators."""
    out = fp.replace(":", "").replace(" ", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", out):
        raise ConfigError(f"fingerprint {fp!r} is not a SHA-256 hex digest (64 hex digits, colons allowed)")
    return out


def peer_identity(cert: x509.Certificate | bytes) -> tuple[str, str]:
    """``(federation, peer_id)`` from a certificate's ``p2pgan://`` SAN URI; :class:`SecurityError` if absent."""
    if isinstance(cert, bytes):
        cert = (
            x509.load_pem_x509_certificate(cert)
            if cert.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_certificate(cert)
        )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise SecurityError("certificate has no subjectAltName, so it names no p2pgan peer") from None
    prefix = f"{URI_SCHEME}://"
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(prefix):
            fed, _, pid = uri[len(prefix) :].partition("/")
            if fed and pid:
                return fed, pid
    raise SecurityError(f"certificate names no peer: no SAN URI of the form {prefix}<federation>/<id>")


def _write(path: Path, data: bytes, *, private: bool) -> None:
    mode = 0o600 if private else 0o644
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write {path} ({exc.strerror or exc}); give a folder you can write to") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _refuse_overwrite(paths: Iterable[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")


def init_ca(out: str | Path, federation: str, *, force: bool = False) -> Path:
    """Make a federation CA in ``out`` (``ca.pem``, ``ca.key`` 0600); return the certificate path."""
    check_name(federation, "federation")
    out = Path(out)
    _refuse_overwrite((out / CA_CERT, out / CA_KEY), force)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"p2pgan federation {federation} CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(out / CA_KEY, _key_pem(key), private=True)
    _write(out / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return out / CA_CERT


def load_ca(ca_dir: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    """``(certificate, key, federation)`` of the CA in ``ca_dir``."""
    ca_dir = Path(ca_dir)
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"{ca_dir}: not a federation CA directory ({exc.filename} is missing)") from None
    except ValueError as exc:
        raise ConfigError(f"{ca_dir}: unreadable CA certificate or key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_dir / CA_KEY}: expected an EC private key")
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not orgs:
        raise ConfigError(f"{ca_dir / CA_CERT}: the CA certificate names no federation (subject O)")
    return cert, key, str(orgs[0].value)


def peer_files(peer_dir: str | Path) -> TLSFiles:
    """The :class:`TLSFiles` of a peer directory written by :func:`issue_peer`."""
    d = Path(peer_dir)
    return TLSFiles(ca=d / CA_CERT, cert=d / PEER_CERT, key=d / PEER_KEY)


def issue_peer(
    ca_dir: str | Path,
    peer_id: str,
    out: str | Path,
    *,
    hosts: Sequence[str] = (),
    ips: Sequence[str] = (),
    force: bool = False,
) -> TLSFiles:
    """Issue ``peer_id``'s certificate from the CA in ``ca_dir`` into ``out``; return its files."""
    check_name(peer_id, "peer id")
    ca_cert, ca_key, federation = load_ca(ca_dir)
    files = peer_files(out)
    _refuse_overwrite((files.cert, files.key), force)
    try:
        ip_objs = [ipaddress.ip_address(a) for a in ips]
    except ValueError as exc:
        raise ConfigError(f"--ip: {exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    san: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(identity_uri(federation, peer_id)),
        x509.DNSName(identity_dns(federation, peer_id)),
        *(x509.DNSName(h) for h in hosts),
        *(x509.IPAddress(a) for a in ip_objs),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, peer_id),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=PEER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.key, _key_pem(key), private=True)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return files


def make_federation(
    directory: str | Path,
    federation: str,
    peer_ids: Sequence[str],
    *,
    hosts: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
) -> dict[str, TLSFiles]:
    """A throw-away federation for tests, the harness and ``p2pgan selftest``.

    Writes the CA to ``directory/ca`` and each peer's files to ``directory/peers/<id>``.
    """
    root = Path(directory)
    init_ca(root / "ca", federation, force=True)
    return {pid: issue_peer(root / "ca", pid, root / "peers" / pid, hosts=hosts, ips=ips, force=True) for pid in peer_ids}


def read_tls(files: TLSFiles) -> tuple[bytes, bytes, bytes]:
    """``(ca, cert, key)`` PEM bytes; :class:`ConfigError` naming the missing file."""
    out = []
    for field, path in (("tls.ca", files.ca), ("tls.cert", files.cert), ("tls.key", files.key)):
        try:
            out.append(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None
    return out[0], out[1], out[2]


def _load_pem_cert(path: Path, field: str, data: bytes) -> x509.Certificate:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{field}: {path} is not a PEM certificate (no BEGIN CERTIFICATE block); "
                          "use the files written by `p2pgan certs init/issue`")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"{field}: {path} holds an unreadable PEM certificate ({exc})") from None


#: permission bits a private key file must not have: none for group or others (0600 or 0400, as ssh asks)
KEY_FORBIDDEN_MODE = 0o077


def _user_name(uid: int) -> str:
    """The login name of ``uid``, or the number where it has none."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def check_key_file(path: Path, *, field: str = "security.key") -> None:
    """Refuse (:class:`ConfigError` with the command to run) a private key that is not private: readable or
    writable by group or others, or owned by another user than the one running this process (the
    service user under systemd, which maps other owners away: a root-owned key would be unreadable)."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None
    mode = st.st_mode & 0o777
    if mode & KEY_FORBIDDEN_MODE:
        raise ConfigError(f"{field}: {path} is readable by group or others (mode {mode:04o}); "
                          f"a private key must be private: run `chmod 600 {path}`")
    uid = os.geteuid() if hasattr(os, "geteuid") else st.st_uid
    if st.st_uid != uid:
        owner, me = _user_name(st.st_uid), _user_name(uid)
        raise ConfigError(f"{field}: {path} is owned by {owner} (uid {st.st_uid}), but this daemon runs as {me} "
                          f"(uid {uid}); the key must belong to the user that runs the daemon: run "
                          f"`chown {me} {path}` and keep it mode 0600")


def check_own_tls(files: TLSFiles, federation: str, peer_id: str, *, source: str = "security",
                  now: datetime.datetime | None = None) -> None:
    """Check this peer's own TLS files before anything listens or dials, with one-line errors.

    Refuses (with :class:`ConfigError` naming the field and file): unreadable or non-PEM files, a
    private key readable by group or others or owned by another user (:func:`check_key_file`), a key
    that does not belong to the certificate, a certificate not issued by the CA, expired or not yet
    valid, or naming another peer id or federation than the config.
    """
    check_key_file(files.key, field=f"{source}.key")  # before reading: an unreadable key says why
    ca_pem, cert_pem, key_pem = read_tls(files)
    ca = _load_pem_cert(Path(files.ca), f"{source}.ca", ca_pem)
    cert = _load_pem_cert(Path(files.cert), f"{source}.cert", cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}.key: {files.key} is not an unencrypted PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise ConfigError(f"{source}.key: {files.key} does not match the certificate {files.cert} "
                          "(copy the key that was issued together with that certificate)")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{source}.cert: {files.cert} was not issued by the CA in {files.ca} "
                          "(wrong ca.pem, or a certificate of another federation)") from None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        raise ConfigError(f"{source}.cert: {files.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                          "issue a new one with `p2pgan certs issue --force`")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"{source}.cert: {files.cert} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                          "(check this machine's clock)")
    try:
        fed, pid = peer_identity(cert)
    except SecurityError as exc:
        raise ConfigError(f"{source}.cert: {files.cert}: {exc}") from None
    if (fed, pid) != (federation, peer_id):
        raise ConfigError(f"{source}.cert: {files.cert} is the certificate of peer {pid!r} of federation {fed!r}, "
                          f"but this config is peer.id {peer_id!r} of {federation!r}")


def describe_certificate(path: Path) -> list[str]:
    """Lines for ``p2pgan certs show``; :class:`ConfigError` when the file is not a PEM/DER certificate."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN CERTIFICATE-----" in data
                else x509.load_der_x509_certificate(data))
    except ValueError:
        raise ConfigError(f"{path} is not a certificate (expected a PEM or DER X.509 file such as peer.pem or ca.pem)") from None
    try:
        fed, pid = peer_identity(cert)
        who = f"peer {pid!r} of federation {fed!r}"
    except SecurityError:
        who = "not a peer certificate (no p2pgan:// identity; a CA certificate?)"
    der = cert.public_bytes(serialization.Encoding.DER)
    return [who, f"valid {cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d} UTC",
            f"fingerprint sha256:{fingerprint(der)}"]
