"""The metrics catalogue (docs/metrics.md) and the check that processes conform to it.

docs/metrics.md holds one markdown table row per metric:
`| name | type | labels | unit | process | meaning |`. Standard client collectors
(`process_*`, `python_*`) are documented as a group and not listed one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CATALOGUE = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
STANDARD_PREFIXES = ("process_", "python_")
_ROW = re.compile(r"^\|\s*`(?P<name>[a-z_:][a-z0-9_:]*)`\s*\|(?P<rest>.*)\|\s*$")
_NAME_OK = re.compile(r"^mekb_[a-z0-9_]+$")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str  # counter, gauge, histogram, summary, info
    labels: tuple[str, ...]
    unit: str
    process: str
    meaning: str


def load_catalogue(path: Path = CATALOGUE) -> dict[str, MetricSpec]:
    specs: dict[str, MetricSpec] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line.strip())
        if not match:
            continue
        cells = [c.strip() for c in match.group("rest").split("|")]
        if len(cells) != 5:
            raise ValueError(f"catalogue row needs 6 columns: {line}")
        kind, labels, unit, process, meaning = cells
        label_names = tuple(x.strip(" `") for x in labels.split(",") if x.strip(" `-"))
        name = match.group("name")
        if name in specs:
            raise ValueError(f"metric listed twice in the catalogue: {name}")
        specs[name] = MetricSpec(name, kind, label_names, unit, process, meaning)
    return specs


def exposed_metrics(exposition: str) -> dict[str, str]:
    """Metric family names and types in a Prometheus text exposition.

    Counters are reported with their `_total` sample name, as users query them.
    """
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, str] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name.startswith(STANDARD_PREFIXES):
            continue
        if family.type == "gauge" and family.name.endswith("_created"):
            continue  # creation timestamps of counters/histograms, not metrics of their own
        name = family.name + "_total" if family.type == "counter" else family.name
        kind = family.type
        if kind == "info" or (kind == "gauge" and name.endswith("_info")):
            # The text format carries Info metrics as gauges named *_info.
            name, kind = (name if name.endswith("_info") else name + "_info"), "info"
        found[name] = kind
    return found


def naming_problems(specs: dict[str, MetricSpec]) -> list[str]:
    """Prometheus naming conventions the catalogue must follow."""
    problems = []
    for spec in specs.values():
        if not _NAME_OK.match(spec.name):
            problems.append(f"{spec.name}: must match mekb_<area>_<name>")
        if spec.type == "counter" and not spec.name.endswith("_total"):
            problems.append(f"{spec.name}: counters end in _total")
        if spec.type != "counter" and spec.name.endswith("_total"):
            problems.append(f"{spec.name}: only counters end in _total")
        if spec.unit in ("seconds", "bytes") and not spec.name.endswith(
            (f"_{spec.unit}", f"_{spec.unit}_total")
        ):
            problems.append(f"{spec.name}: unit {spec.unit} must be the name's suffix")
    return problems


def conformance(process: str, exposition: str, specs: dict[str, MetricSpec]) -> list[str]:
    """Differences between what `process` exposes and what the catalogue lists for it."""
    exposed = exposed_metrics(exposition)
    listed = {n for n, s in specs.items() if process in {p.strip() for p in s.process.split(",")}}
    problems = [
        f"{process} exposes {n}, missing from docs/metrics.md"
        for n in sorted(set(exposed) - listed)
    ]
    problems += [
        f"docs/metrics.md lists {n} for {process}, not exposed"
        for n in sorted(listed - set(exposed))
    ]
    for name in sorted(set(exposed) & listed):
        want = specs[name].type
        if exposed[name] != want:
            problems.append(f"{name}: exposed as {exposed[name]}, catalogue says {want}")
    return problems
