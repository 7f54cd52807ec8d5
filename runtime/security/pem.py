"""Read PEM certificates and Ed25519 keys, turning every way a file can be wrong into one
typed, one-line error that names the whole path and says what to do.

Shared by the code that issues certificates (which raises ``CertsError``) and the code that
loads a node's credentials (which raises ``ConfigError``), so the caller passes the error class.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.errors import DerechoError


def shown(path: str | os.PathLike[str]) -> str:
    """A path as messages show it: absolute and whole, so the user can find the file."""
    return str(Path(path).absolute())


def one_line(exc: BaseException) -> str:
    """An exception's text with whitespace collapsed, so a message stays on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_file(path: Path, what: str, hint: str, error: type[DerechoError]) -> bytes:
    """The bytes of ``path``; ``what`` names the file's role and ``hint`` what to do if it is
    missing."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{shown(path)}: {what} not found; {hint}") from None
    except PermissionError:
        raise error(
            f"{shown(path)}: cannot read the {what} (permission denied); run as the user that owns "
            "it or fix its permissions"
        ) from None
    except IsADirectoryError:
        raise error(f"{shown(path)}: is a directory, not the {what}; give the path of the file") from None
    except OSError as exc:
        raise error(f"{shown(path)}: cannot read the {what} ({one_line(exc)})") from None


def load_certificate(path: Path, what: str, hint: str, error: type[DerechoError]) -> x509.Certificate:
    """The one PEM certificate in ``path``."""
    data = read_file(path, what, hint, error)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise error(
            f"{shown(path)}: the {what} is not a PEM certificate (no readable "
            "'-----BEGIN CERTIFICATE-----' block); give the .crt file the cluster CA issued"
        ) from None
    if len(certs) != 1:
        raise error(f"{shown(path)}: the {what} holds {len(certs)} certificates; it must hold exactly one")
    return certs[0]


def load_private_key(path: Path, what: str, hint: str, error: type[DerechoError]) -> Ed25519PrivateKey:
    """The unencrypted PEM Ed25519 private key in ``path``."""
    data = read_file(path, what, hint, error)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise error(
            f"{shown(path)}: the {what} is encrypted; derecho reads unencrypted PKCS8 keys "
            "(protect the file with its 0600 permissions instead)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise error(
            f"{shown(path)}: the {what} is not a PEM private key; give the .key file written next to the certificate"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise error(
            f"{shown(path)}: the {what} is a {type(key).__name__.lstrip('_')}, but derecho keys are "
            "Ed25519; issue a new key and certificate from the cluster CA"
        )
    return key


__all__ = ["load_certificate", "load_private_key", "one_line", "read_file", "shown"]
