"""The Dockerfile cannot be built here (no Docker engine): check its shape."""

from __future__ import annotations

import re

from conftest import ROOT


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["rust:${RUST_VERSION}-bookworm", "debian:bookworm-slim"]
    assert re.search(r"^ARG RUST_VERSION=1\.95$", text, re.M)
    assert re.search(r"^ARG PG_MAJOR=15$", text, re.M)
    assert '"postgresql-client-${PG_MAJOR}"' in text
    assert "--locked" in text
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert 'ENTRYPOINT ["/usr/local/bin/palisade"]' in text
    assert text.rstrip().splitlines()[-1] == 'CMD ["controller"]'


def test_dockerignore_keeps_the_workspace():
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"target", ".git"} <= ignored
    # Cargo.toml's workspace members and declared targets must stay in the context.
    for needed in ("src", "testkit", "e2e", "tests", "Cargo.toml", "Cargo.lock"):
        assert needed not in ignored, needed
    assert (ROOT / "Cargo.lock").exists()
