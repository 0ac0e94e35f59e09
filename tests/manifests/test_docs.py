"""The documentation a user gets with a clone: every relative link in README.md,
the chart README and docs/ resolves to a file in the repository, and none of
them points outside it."""

from __future__ import annotations

import re

from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "charts" / "palisade" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_relative_links_resolve_inside_the_repository():
    for doc in DOCS:
        # Code spans hold patterns such as `^[a-z]([-a-z]*)?$`, not links.
        text = re.sub(r"`[^`\n]*`", "``", doc.read_text())
        assert "../shared" not in doc.read_text(), f"{doc.relative_to(ROOT)} points outside the repository"
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc.relative_to(ROOT)}: {target} leaves the repository"
            assert path.exists(), f"{doc.relative_to(ROOT)}: {target} does not exist"


def test_readme_links_the_api_reference_and_every_sample_kind():
    readme = (ROOT / "README.md").read_text()
    assert "docs/API.md" in readme
    kinds = set()
    for sample in (ROOT / "config" / "samples").glob("*.yaml"):
        kinds |= set(re.findall(r"^kind: (\w+)$", sample.read_text(), re.M))
    assert {"Tenant", "RolePolicy", "BackupSchedule"} <= kinds
