"""TLS to ``https://`` backends: verification on by default, a private CA, mutual TLS, ``verify: false``, health.

Certificates are made at test time with the ``openssl`` CLI: a CA; a server certificate it signs for 127.0.0.1 and
localhost (subject alternative names); one it signs for another host name; a self-signed one; and a client
certificate for mTLS. Every backend is a :class:`FakeUpstream` behind its own server TLS context, so a handshake
the gateway should refuse never reaches the handler, and the mTLS backend reports which client certificate it saw.
"""

from __future__ import annotations

import ssl
import string
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakeupstream import FakeUpstream
from tests.harness import Stack, require_tool

TOKEN = "tls-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CLIENT_CN = "gateway-client"

POLICY = """
version: 1
public_models: [assistant]
models:
  default-verify: {kind: base, backends: ["${self_signed}"]}
  no-verify:      {kind: base, backends: ["${self_signed}"], tls: {verify: false}}
  unknown-ca:     {kind: base, backends: ["${signed}"]}
  private-ca:     {kind: base, backends: ["${signed}"], tls: {ca_file: "${ca}"}}
  wrong-name:     {kind: base, backends: ["${other_name}"], tls: {ca_file: "${ca}"}}
  mtls-no-cert:   {kind: base, backends: ["${mtls}"], tls: {ca_file: "${ca}"}}
  mtls:
    kind: base
    backends: ["${mtls}"]
    tls: {ca_file: "${ca}", cert_file: "${client_cert}", key_file: "${client_key}"}
cohorts:
${cohorts}
routes:
${routes}
health: {interval_s: ${interval_s}, check_timeout_s: 2, unhealthy_after: 1, healthy_after: 1}
"""
MODELS = ("default-verify", "no-verify", "unknown-ca", "private-ca", "wrong-name", "mtls-no-cert", "mtls")
REFUSED = ("default-verify", "unknown-ca", "wrong-name", "mtls-no-cert")
ACCEPTED = ("no-verify", "private-ca", "mtls")


@dataclass(frozen=True)
class Certs:
    ca: Path
    signed: tuple[Path, Path]  # (cert, key) for 127.0.0.1 and localhost
    other_name: tuple[Path, Path]  # signed by the CA for a host the backend is not
    self_signed: tuple[Path, Path]
    client: tuple[Path, Path]


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
LEAF_EXTENSIONS = "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"


def _leaf(root: Path, name: str, cn: str, extensions: str) -> tuple[Path, Path]:
    """A certificate for ``cn`` signed by the CA in ``root``, with ``extensions`` (an openssl extension file)."""
    cert, key, csr, ext = (root / f"{name}.{suffix}" for suffix in ("pem", "key", "csr", "ext"))
    ext.write_text(extensions + LEAF_EXTENSIONS, encoding="utf-8")
    _openssl("req", "-new", *NEW_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    ca = ("-CA", root / "ca.pem", "-CAkey", root / "ca.key", "-CAcreateserial")
    _openssl("x509", "-req", "-in", csr, *ca, "-days", "2", "-out", cert, "-extfile", ext)
    return cert, key


def _self_signed(root: Path, name: str, subject: str, *extensions: str) -> tuple[Path, Path]:
    cert, key = root / f"{name}.pem", root / f"{name}.key"
    added = [arg for extension in extensions for arg in ("-addext", extension)]
    _openssl("req", "-x509", *NEW_KEY, "-days", "2", "-keyout", key, "-out", cert, "-subj", subject, *added)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require_tool("openssl", "install OpenSSL to make test certificates")
    root = tmp_path_factory.mktemp("tls")
    ca_extensions = ("basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign")
    ca, _ = _self_signed(root, "ca", "/CN=gateway test CA", *ca_extensions)
    names = "subjectAltName=IP:127.0.0.1,DNS:localhost"
    return Certs(
        ca=ca,
        signed=_leaf(root, "server", "127.0.0.1", names + "\nextendedKeyUsage=serverAuth\n"),
        other_name=_leaf(root, "other", "backend.example", "subjectAltName=DNS:backend.example\n"),
        self_signed=_self_signed(root, "self", "/CN=127.0.0.1", names),
        client=_leaf(root, "client", CLIENT_CN, "extendedKeyUsage=clientAuth\n"),
    )


def server_context(cert: tuple[Path, Path], client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


@dataclass
class Deployment:
    stack: Stack
    fakes: dict[str, FakeUpstream]


def policy(fakes: dict[str, FakeUpstream], certs: Certs, interval_s: float) -> str:
    cohorts = "\n".join(f"  - {{name: {m}, match: {{header: {{x-model: {m}}}}}}}" for m in MODELS)
    routes = "\n".join(f"  {m}: {{target: {m}}}" for m in MODELS)
    return string.Template(POLICY).substitute(
        {name: fake.url for name, fake in fakes.items()},
        ca=certs.ca,
        client_cert=certs.client[0],
        client_key=certs.client[1],
        cohorts=cohorts + "\n  - {name: other, default: true}",
        routes=routes + "\n  other: {target: private-ca}",
        interval_s=interval_s,
    )


@pytest.fixture(scope="module", autouse=True)
def admin_token() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
        yield


@contextmanager
def deployment(certs: Certs, interval_s: float) -> Iterator[Deployment]:
    with ExitStack() as running:
        fakes = {
            "self_signed": FakeUpstream(ssl_context=server_context(certs.self_signed)),
            "signed": FakeUpstream(ssl_context=server_context(certs.signed)),
            "other_name": FakeUpstream(ssl_context=server_context(certs.other_name)),
            "mtls": FakeUpstream(ssl_context=server_context(certs.signed, client_ca=certs.ca)),
        }
        for fake in fakes.values():
            running.enter_context(fake)
        stack = running.enter_context(Stack(policy(fakes, certs, interval_s), sims={}))
        yield Deployment(stack, fakes)


@pytest.fixture(scope="module")
def requests_only(certs: Certs) -> Iterator[Deployment]:
    """Health checks far apart, so every verdict below comes from the request's own handshake."""
    with deployment(certs, interval_s=3600) as gw:
        yield gw


def chat(stack: Stack, model: str) -> httpx.Response:
    body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, headers={"x-model": model}, timeout=20)


def backend_of(gw: Deployment, model: str) -> FakeUpstream:
    name = {"default-verify": "self_signed", "no-verify": "self_signed", "wrong-name": "other_name"}.get(model)
    return gw.fakes[name or ("mtls" if model.startswith("mtls") else "signed")]


@pytest.mark.parametrize("model", ACCEPTED)
def test_trusted_backends_answer(requests_only: Deployment, model: str) -> None:
    fake = backend_of(requests_only, model)
    before = len(fake.posts())
    response = chat(requests_only.stack, model)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-model"] == model
    assert len(fake.posts()) == before + 1
    if model == "mtls":
        assert fake.posts()[-1].client_cert_cn == CLIENT_CN


@pytest.mark.parametrize("model", REFUSED)
def test_unverifiable_backends_fail_cleanly_without_naming_the_backend(requests_only: Deployment, model: str) -> None:
    fake = backend_of(requests_only, model)
    before = len(fake.posts())
    started = time.monotonic()
    response = chat(requests_only.stack, model)
    assert response.status_code in (502, 503), response.text
    assert time.monotonic() - started < 5
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] and error["message"]
    for leak in (fake.url, f"127.0.0.1:{fake.port}"):
        assert leak not in response.text, response.text
    assert len(fake.posts()) == before  # the request never got past the handshake


def test_health_checks_use_the_models_tls_settings(certs: Certs) -> None:
    with deployment(certs, interval_s=0.2) as gw:

        def backends() -> dict[str, dict[str, Any]]:
            state = httpx.get(f"{gw.stack.url}/admin/state", headers=AUTH, timeout=5).json()
            return {b["model"]: b for b in state["backends"]}

        def settled() -> bool:
            state = backends()
            checked = all(gw.fakes[name].health_checks() >= 2 for name in ("self_signed", "signed", "mtls"))
            return checked and all(state[m]["healthy"] == (m in ACCEPTED) for m in MODELS)

        gw.stack.wait_for(settled, timeout=5)
        state = backends()
        errors = {m: state[m]["last_check_error"] for m in MODELS}
        assert {m: state[m]["healthy"] for m in MODELS} == {m: m in ACCEPTED for m in MODELS}, errors
        assert all(errors[m] == "" for m in ACCEPTED), errors
        checks = {name: fake.health_checks() for name, fake in gw.fakes.items()}
        assert all(checks[name] >= 2 for name in ("self_signed", "signed", "mtls")), checks
        mtls_checks = [s for s in gw.fakes["mtls"].seen if s.path == "/health"]
        assert {s.client_cert_cn for s in mtls_checks} == {CLIENT_CN}
        assert chat(gw.stack, "mtls").status_code == 200
