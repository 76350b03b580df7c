"""Validates the hub's DCAT-AP_IT catalogue against the official DCAT-AP 3.0.1 SHACL shapes.

usage: dcat_shacl.py SHAPES_DIR CATALOG_URL...

Each URL (Turtle, JSON-LD or RDF/XML, by its Content-Type) is parsed with rdflib;
all must give the same graph. The mandatory shapes (dcat-ap-SHACL.ttl, whose property
shapes live partly in ranges.ttl, so both are loaded) must conform: any violation
exits 1. The recommended shapes (shapes_recommended.ttl) are reported, not enforced.
Prints one JSON summary line.
"""
import json
import sys
import urllib.request

import pyshacl
import rdflib
from rdflib.compare import isomorphic

FORMATS = {
    "text/turtle": "turtle",
    "application/ld+json": "json-ld",
    "application/rdf+xml": "xml",
}


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
        return r.read(), FORMATS[ctype]


DANGLING = []


def shapes(*paths):
    """The shapes graph, minus sh:property links to shapes no file defines (the 3.0.1
    release has some: ranges.ttl points at property shapes that have no sh:path anywhere,
    which pySHACL refuses to run with). What was dropped is reported."""
    g = rdflib.Graph()
    for p in paths:
        g.parse(p, format="turtle")
    sh = rdflib.Namespace("http://www.w3.org/ns/shacl#")
    for node, prop in list(g.subject_objects(sh.property)):
        if g.value(prop, sh.path) is None:
            g.remove((node, sh.property, prop))
            DANGLING.append(str(prop))
    return g


def results(report_graph):
    sh = rdflib.Namespace("http://www.w3.org/ns/shacl#")
    out = []
    for r in report_graph.subjects(rdflib.RDF.type, sh.ValidationResult):
        out.append({
            "severity": str(report_graph.value(r, sh.resultSeverity)).rsplit("#", 1)[-1],
            "focus": str(report_graph.value(r, sh.focusNode)),
            "path": str(report_graph.value(r, sh.resultPath)),
            "message": str(report_graph.value(r, sh.resultMessage)),
        })
    return out


def main():
    shapes_dir, urls = sys.argv[1], sys.argv[2:]
    graphs = []
    for u in urls:
        body, fmt = fetch(u)
        g = rdflib.Graph()
        g.parse(data=body, format=fmt)
        graphs.append((u, fmt, g))
    first = graphs[0][2]
    same = all(isomorphic(first, g) for _, _, g in graphs[1:])
    mandatory = shapes(f"{shapes_dir}/dcat-ap-SHACL.ttl", f"{shapes_dir}/ranges.ttl")
    conforms, report, _ = pyshacl.validate(first, shacl_graph=mandatory, inference="none",
                                           allow_warnings=True)
    violations = [r for r in results(report) if r["severity"] == "Violation"]
    warnings = [r for r in results(report) if r["severity"] != "Violation"]
    rec = shapes(f"{shapes_dir}/shapes_recommended.ttl")
    _, rec_report, _ = pyshacl.validate(first, shacl_graph=rec, inference="none", allow_warnings=True)
    recommended = results(rec_report)
    summary = {
        "triples": len(first),
        "syntaxes": [f for _, f, _ in graphs],
        "syntaxes_agree": same,
        "mandatory_conforms": not violations,
        "mandatory_violations": violations,
        "mandatory_warnings": len(warnings),
        "recommended_findings": len(recommended),
        "recommended_by_property": {p: sum(1 for r in recommended if r["path"] == p)
                                    for p in sorted({r["path"] for r in recommended})},
        "shapes_dropped_undefined": sorted(set(DANGLING)),
        "datasets": len(set(first.subjects(rdflib.RDF.type, rdflib.URIRef("http://www.w3.org/ns/dcat#Dataset")))),
    }
    print(json.dumps(summary))
    sys.exit(0 if same and not violations else 1)


if __name__ == "__main__":
    main()
