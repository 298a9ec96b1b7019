#!/usr/bin/env python3
"""Renders the red-team results (tests/Moat.RedTeam/results/TIER.json, written by the suite)
as the attack x tier table in docs/security.md, between the results markers.

    dotnet test tests/Moat.RedTeam -c Debug && /usr/bin/python3 tests/Moat.RedTeam/render-results.py
"""
import json
import pathlib
import sys

here = pathlib.Path(__file__).resolve().parent
results = here / "results"
doc = here.parent.parent / "docs" / "security.md"
tiers = ["container", "gvisor", "microvm"]

runs = {t: json.loads((results / f"{t}.json").read_text()) for t in tiers if (results / f"{t}.json").exists()}
if not runs:
    sys.exit(f"no results in {results}: run the red-team suite first")
attacks = []
for t in tiers:
    for v in runs.get(t, []):
        if (v["category"], v["attack"]) not in attacks:
            attacks.append((v["category"], v["attack"]))
verdict = {(v["attack"], t): v for t in runs for v in runs[t]}

lines = ["| category | attack | " + " | ".join(tiers) + " |", "|---|---|" + "---|" * len(tiers)]
for category, attack in attacks:
    cells = []
    for t in tiers:
        v = verdict.get((attack, t))
        if v is None:
            cells.append("not run")
        elif not v["contained"]:
            cells.append("**escaped**")
        elif v["evidence"].startswith("the API answered AgentUnavailableException"):
            # The attack ended its own sandbox (the catalogue's safe outcome for exhaustion): only that sandbox failed.
            cells.append("contained (sandbox ended)")
        elif v["evidence"].startswith("the API answered"):
            # The program did not run (the API refused it or the sandbox was already broken): nothing reached the host, but nothing was tried either.
            cells.append("contained (not executed)")
        else:
            cells.append("contained")
    lines.append(f"| {category} | `{attack}` | " + " | ".join(cells) + " |")
total = sum(len(r) for r in runs.values())
contained = sum(v["contained"] for r in runs.values() for v in r)
skipped = sum(v["contained"] and v["evidence"].startswith("the API answered") and "AgentUnavailable" not in v["evidence"] for r in runs.values() for v in r)
lines.append("")
lines.append(f"{total} attack runs on {len(runs)} tiers, {contained} contained ({skipped} of them not executed), {total - contained} escaped.")
table = "\n".join(lines)

start, end = "<!-- redteam-results:start -->", "<!-- redteam-results:end -->"
text = doc.read_text()
if start not in text:
    sys.exit(f"{doc} has no {start} marker")
head, rest = text.split(start, 1)
_, tail = rest.split(end, 1)
doc.write_text(head + start + "\n" + table + "\n" + end + tail)
print(table)
