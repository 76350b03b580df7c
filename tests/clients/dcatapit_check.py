"""The catalogue as Italian harvesters and the EU HVD validator read it.

rdflib: for every dataset, the temporal coverage in the forms ckanext-dcatapit
(schema:startDate) and ckanext-dcat (time:hasBeginning/time:inXSDDateTime) read
besides dcat:startDate; dct:spatial with dcatapit:geographicalIdentifier; the HVD
properties on the kinds' datasets, their distributions and the data service; the
indicator datasets with SDG keywords and JSON and CSV distributions, and no HVD
claim. Then pySHACL with the official DCAT-AP HVD shapes.

usage: dcatapit_check.py CATALOG_TTL GEO_ID HVD_SHAPES
"""
import sys

import rdflib
from pyshacl import validate

path, geo_id, shapes = sys.argv[1:4]
g = rdflib.Graph().parse(path, format="turtle")
PFX = """
PREFIX dcat: <http://www.w3.org/ns/dcat#>
PREFIX dct: <http://purl.org/dc/terms/>
PREFIX schema: <http://schema.org/>
PREFIX time: <http://www.w3.org/2006/time#>
PREFIX dcatapit: <http://dati.gov.it/onto/dcatapit#>
PREFIX dcatap: <http://data.europa.eu/r5r/>
"""
HVD = rdflib.URIRef("http://data.europa.eu/eli/reg_impl/2023/138/oj")


def q(text, **bind):
    return list(g.query(PFX + text, initBindings={k: rdflib.URIRef(v) if isinstance(v, str) else v for k, v in bind.items()}))


datasets = [r[0] for r in q("SELECT ?d WHERE { ?d a dcat:Dataset }")]
assert datasets, "no dataset"
with_data = 0
indicators = 0
register = 0
for d in datasets:
    starts = q("SELECT ?s ?b WHERE { ?d dct:temporal ?p . ?p schema:startDate ?s ; time:hasBeginning/time:inXSDDateTime ?b ; dcat:startDate ?x }", d=d)
    if starts:
        with_data += 1
        s, b = starts[0]
        assert str(s) == str(b), (d, s, b)
    ids = [str(r[0]) for r in q("SELECT ?id WHERE { ?d dct:spatial ?l . ?l dcatapit:geographicalIdentifier ?id }", d=d)]
    assert ids == [geo_id], (d, ids)
    if "/catalog/indicator/" in str(d):
        # The mandate's indicators: statistics the city derives, not high-value
        # datasets themselves; they carry their plan line and SDG targets instead.
        indicators += 1
        assert not q("ASK { ?d dcatap:hvdCategory ?c }", d=d)[0], f"{d}: claims an HVD category"
        kws = [str(r[0]) for r in q("SELECT ?k WHERE { ?d dcat:keyword ?k }", d=d)]
        assert any(k.startswith("SDG ") for k in kws), (d, kws)
        formats = sorted(str(r[0]).rsplit("/", 1)[1] for r in q("SELECT ?f WHERE { ?d dcat:distribution/dct:format ?f }", d=d))
        assert formats == ["CSV", "JSON"], (d, formats)
        continue
    if str(d).endswith("/catalog/register"):
        # The public sensor register: about the sensors, not a high-value dataset.
        register += 1
        assert not q("ASK { ?d dcatap:hvdCategory ?c }", d=d)[0], f"{d}: claims an HVD category"
        formats = sorted(str(r[0]).rsplit("/", 1)[1] for r in q("SELECT ?f WHERE { ?d dcat:distribution/dct:format ?f }", d=d))
        assert formats == ["CSV", "GEOJSON"], (d, formats)
        continue
    assert q("ASK { ?d dcatap:applicableLegislation ?law ; dcatap:hvdCategory ?c }", d=d, law=HVD)[0], f"{d}: no HVD tags"
    for (dist,) in q("SELECT ?x WHERE { ?d dcat:distribution ?x }", d=d):
        assert (dist, rdflib.URIRef("http://data.europa.eu/r5r/applicableLegislation"), HVD) in g, f"{dist}: no applicable legislation"
assert with_data, "no dataset has a temporal coverage"
assert indicators, "no indicator dataset"
assert register == 1, "no public sensor register dataset"
services = q("SELECT ?s WHERE { ?s a dcat:DataService ; dcatap:applicableLegislation ?law ; dcatap:hvdCategory ?c }", law=HVD)
assert services, "the data service has no HVD tags"
print(f"rdflib: {len(datasets)} datasets ({with_data} with data) have the temporal forms and the geographical identifier; {len(datasets) - indicators - register} carry HVD tags, {indicators} indicators their SDG targets, and the sensor register is there")

# The HVD shapes hold every dataset of the graph to the HVD rules: give them the
# HVD part of the catalogue (the indicators and the register are not high-value datasets).
hvd = rdflib.Graph()
for t in g:
    if not any("/catalog/indicator/" in str(x) or "/catalog/register" in str(x) for x in (t[0], t[2])):
        hvd.add(t)
ok, _, text = validate(hvd, shacl_graph=rdflib.Graph().parse(shapes, format="turtle"), inference="none", abort_on_first=False)
print(text if not ok else "pySHACL: the catalogue conforms to the DCAT-AP HVD shapes")
sys.exit(0 if ok else 1)
