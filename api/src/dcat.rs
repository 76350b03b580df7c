//! The DCAT-AP_IT catalogue (`/catalog`, `.jsonld`, `.ttl`, `.rdf`): one dataset per
//! kind with its GeoJSON, CSV and OGC API distributions, built as an RDF graph and
//! written by the oxigraph serialisers, so every syntax says the same thing.
//!
//! Each node carries its class explicitly (`dct:LicenseDocument`, `dct:Frequency`,
//! `skos:Concept`, ...): the DCAT-AP SHACL range shapes check classes, and harvesters
//! do not infer them.

use crate::cache::cached;
use crate::error::{ApiError, ApiResult};
use crate::params::{BaseUrl, NoParams, StrictQuery};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use chrono::{DateTime, Utc};
use cityhub_core::indicators::Indicator;
use cityhub_core::Kind;
use cityhub_store::query::{self, KindExtent};
use oxrdf::vocab::{rdf, xsd};
use oxrdf::{Literal, NamedNode, NamedOrBlankNode, Term, Triple};
use std::collections::HashMap;

const DCAT: &str = "http://www.w3.org/ns/dcat#";
const DCT: &str = "http://purl.org/dc/terms/";
const DCATAPIT: &str = "http://dati.gov.it/onto/dcatapit#";
const FOAF: &str = "http://xmlns.com/foaf/0.1/";
const VCARD: &str = "http://www.w3.org/2006/vcard/ns#";
const SKOS: &str = "http://www.w3.org/2004/02/skos/core#";
const LOCN: &str = "http://www.w3.org/ns/locn#";
const GSP: &str = "http://www.opengis.net/ont/geosparql#";
const RDFS: &str = "http://www.w3.org/2000/01/rdf-schema#";
const DCATAP: &str = "http://data.europa.eu/r5r/";
const EU: &str = "http://publications.europa.eu/resource/authority/";
const SCHEMA: &str = "http://schema.org/";
const TIME: &str = "http://www.w3.org/2006/time#";
const ELI: &str = "http://data.europa.eu/eli/ontology#";
/// Commission Implementing Regulation (EU) 2023/138, the high-value datasets.
const HVD_REGULATION: &str = "http://data.europa.eu/eli/reg_impl/2023/138/oj";
const HVD_SCHEME: &str = "http://data.europa.eu/bna/asd487ae75";

const PREFIXES: &[(&str, &str)] = &[
    ("dcat", DCAT),
    ("dct", DCT),
    ("dcatapit", DCATAPIT),
    ("foaf", FOAF),
    ("vcard", VCARD),
    ("skos", SKOS),
    ("locn", LOCN),
    ("gsp", GSP),
    ("xsd", "http://www.w3.org/2001/XMLSchema#"),
    ("rdfs", RDFS),
    ("dcatap", DCATAP),
    ("schema", SCHEMA),
    ("time", TIME),
    ("eli", ELI),
];

/// English and Italian labels of the EU data-theme vocabulary.
pub fn theme_labels(code: &str) -> Option<(&'static str, &'static str)> {
    Some(match code {
        "AGRI" => (
            "Agriculture, fisheries, forestry and food",
            "Agricoltura, pesca, silvicoltura e prodotti alimentari",
        ),
        "ECON" => ("Economy and finance", "Economia e finanze"),
        "EDUC" => (
            "Education, culture and sport",
            "Istruzione, cultura e sport",
        ),
        "ENER" => ("Energy", "Energia"),
        "ENVI" => ("Environment", "Ambiente"),
        "GOVE" => ("Government and public sector", "Governo e settore pubblico"),
        "HEAL" => ("Health", "Salute"),
        "INTR" => ("International issues", "Tematiche internazionali"),
        "JUST" => (
            "Justice, legal system and public safety",
            "Giustizia, sistema giuridico e sicurezza pubblica",
        ),
        "REGI" => ("Regions and cities", "Regioni e città"),
        "SOCI" => ("Population and society", "Popolazione e società"),
        "TECH" => ("Science and technology", "Scienza e tecnologia"),
        "TRAN" => ("Transport", "Trasporti"),
        _ => return None,
    })
}

struct Graph {
    triples: Vec<Triple>,
}

fn iri(s: &str) -> ApiResult<NamedNode> {
    NamedNode::new(s).map_err(|e| ApiError::Internal(format!("catalogue IRI {s:?}: {e}")))
}

fn v(ns: &str, local: &str) -> NamedNode {
    NamedNode::new_unchecked(format!("{ns}{local}"))
}

impl Graph {
    fn add(&mut self, s: &NamedNode, p: NamedNode, o: impl Into<Term>) {
        self.triples
            .push(Triple::new(NamedOrBlankNode::from(s.clone()), p, o.into()));
    }
    fn typed(&mut self, s: &NamedNode, classes: &[NamedNode]) {
        for c in classes {
            self.add(s, rdf::TYPE.into_owned(), c.clone());
        }
    }
    fn text(&mut self, s: &NamedNode, p: NamedNode, value: &str, lang: &str) {
        let lit = Literal::new_language_tagged_literal_unchecked(value, lang);
        self.add(s, p, lit);
    }
    fn plain(&mut self, s: &NamedNode, p: NamedNode, value: &str) {
        self.add(s, p, Literal::new_simple_literal(value));
    }
    fn date(&mut self, s: &NamedNode, p: NamedNode, t: DateTime<Utc>) {
        let lit = Literal::new_typed_literal(t.format("%Y-%m-%d").to_string(), xsd::DATE);
        self.add(s, p, lit);
    }
    fn datetime(&mut self, s: &NamedNode, p: NamedNode, t: DateTime<Utc>) {
        let lit = Literal::new_typed_literal(
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            xsd::DATE_TIME,
        );
        self.add(s, p, lit);
    }
}

/// `dct:spatial`: the configured gazetteer place, the place as DCAT-AP_IT names it
/// (`dcatapit:geographicalIdentifier`, which Italian harvesters read), and the
/// sensors' bounding box with its centroid.
fn spatial(
    g: &mut Graph,
    node: &NamedNode,
    s: &AppState,
    base: &str,
    bbox: Option<query::Bbox>,
    area_iri: &str,
) -> ApiResult<()> {
    let c = &s.settings.catalog;
    if let Some(u) = c.spatial_uri.as_deref() {
        let place = iri(u)?;
        g.add(node, v(DCT, "spatial"), place.clone());
        g.typed(&place, &[v(DCT, "Location")]);
    }
    if let Some(id) = c.geographical_identifier.as_deref() {
        let place = iri(&format!("{base}/catalog#place"))?;
        g.add(node, v(DCT, "spatial"), place.clone());
        g.typed(&place, &[v(DCT, "Location")]);
        g.plain(&place, v(DCATAPIT, "geographicalIdentifier"), id);
        g.text(
            &place,
            v(LOCN, "geographicalName"),
            &c.geographical_name,
            "it",
        );
    }
    if let Some(b) = bbox {
        let area = iri(area_iri)?;
        g.add(node, v(DCT, "spatial"), area.clone());
        g.typed(&area, &[v(DCT, "Location")]);
        let wkt = format!(
            "POLYGON(({a} {b}, {c} {b}, {c} {d}, {a} {d}, {a} {b}))",
            a = b.min_lon,
            b = b.min_lat,
            c = b.max_lon,
            d = b.max_lat
        );
        g.add(
            &area,
            v(DCAT, "bbox"),
            Literal::new_typed_literal(wkt, v(GSP, "wktLiteral")),
        );
        let centroid = format!(
            "POINT({} {})",
            (b.min_lon + b.max_lon) / 2.0,
            (b.min_lat + b.max_lat) / 2.0
        );
        g.add(
            &area,
            v(DCAT, "centroid"),
            Literal::new_typed_literal(centroid, v(GSP, "wktLiteral")),
        );
    }
    Ok(())
}

/// `dct:temporal` in the forms harvesters read: DCAT 2's `dcat:startDate` and
/// `dcat:endDate` (DCAT-AP), `schema:startDate`/`schema:endDate` (ckanext-dcatapit,
/// DCAT-AP_IT 1.x), and OWL-Time instants (`time:hasBeginning`, ckanext-dcat).
fn temporal(
    g: &mut Graph,
    ds: &NamedNode,
    period_iri: &str,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
) -> ApiResult<()> {
    let period = iri(period_iri)?;
    g.add(ds, v(DCT, "temporal"), period.clone());
    g.typed(&period, &[v(DCT, "PeriodOfTime")]);
    g.datetime(&period, v(DCAT, "startDate"), first);
    g.datetime(&period, v(DCAT, "endDate"), last);
    g.datetime(&period, v(SCHEMA, "startDate"), first);
    g.datetime(&period, v(SCHEMA, "endDate"), last);
    for (edge, t) in [("hasBeginning", first), ("hasEnd", last)] {
        let instant = iri(&format!("{period_iri}-{}", &edge[3..].to_lowercase()))?;
        g.add(&period, v(TIME, edge), instant.clone());
        g.typed(&instant, &[v(TIME, "Instant")]);
        g.datetime(&instant, v(TIME, "inXSDDateTimeStamp"), t);
        g.datetime(&instant, v(TIME, "inXSDDateTime"), t);
    }
    Ok(())
}

/// An HVD category as the concept of the EU vocabulary it is.
fn hvd_category(g: &mut Graph, c: cityhub_core::HvdCategory) -> ApiResult<NamedNode> {
    let node = iri(c.uri())?;
    g.typed(&node, &[v(SKOS, "Concept")]);
    g.add(&node, v(SKOS, "inScheme"), iri(HVD_SCHEME)?);
    let (en, it) = c.labels();
    g.text(&node, v(SKOS, "prefLabel"), en, "en");
    g.text(&node, v(SKOS, "prefLabel"), it, "it");
    Ok(node)
}

/// The nodes every dataset points to.
struct Shared {
    catalog: NamedNode,
    service: NamedNode,
    /// The SensorThings API, a second data service of every dataset.
    sta: NamedNode,
    /// The NGSI-LD API, a data service of the datasets whose kind has a Smart Data Model.
    ngsi: NamedNode,
    publisher: NamedNode,
    holder: NamedNode,
    contact: NamedNode,
    licence: NamedNode,
    themes: NamedNode,
    frequency: NamedNode,
    availability: NamedNode,
    /// Implementing Regulation (EU) 2023/138, for high-value datasets.
    hvd_law: NamedNode,
    now: DateTime<Utc>,
}

/// Builds the whole catalogue for the kinds configured now and the data stored now.
fn build(s: &AppState, base: &str, extents: &HashMap<String, KindExtent>) -> ApiResult<Graph> {
    let mut g = Graph {
        triples: Vec::new(),
    };
    let sh = catalog_node(&mut g, s, base, extents)?;
    for kind in s.catalog.iter() {
        let ext = extents.get(kind.name.as_str()).cloned().unwrap_or_default();
        dataset(&mut g, &sh, base, kind, &ext, s)?;
    }
    for ind in crate::indicators::available(s) {
        let ext = extents.get(ind.kind).cloned().unwrap_or_default();
        indicator_dataset(&mut g, &sh, base, ind, &ext, s)?;
    }
    register_dataset(&mut g, &sh, base, extents, s)?;
    Ok(g)
}

/// The public sensor register: every sensor's purpose, responsible party, personal
/// data and legal basis, as GeoJSON and CSV.
fn register_dataset(
    g: &mut Graph,
    sh: &Shared,
    base: &str,
    extents: &HashMap<String, KindExtent>,
    s: &AppState,
) -> ApiResult<()> {
    let c = &s.settings.catalog;
    let ds = iri(&format!("{base}/catalog/register"))?;
    g.add(&sh.catalog, v(DCAT, "dataset"), ds.clone());
    g.typed(&ds, &[v(DCAT, "Dataset"), v(DCATAPIT, "Dataset")]);
    g.plain(
        &ds,
        v(DCT, "identifier"),
        &format!("{}:register", c.publisher_ipa),
    );
    g.text(&ds, v(DCT, "title"), "Registro pubblico dei sensori", "it");
    g.text(&ds, v(DCT, "title"), "Public sensor register", "en");
    g.text(
        &ds,
        v(DCT, "description"),
        "Per ogni sensore della città: a cosa serve, chi ne risponde e come contattarlo, cosa misura, se può raccogliere dati personali e su quale base giuridica (GDPR), per quanto tempo se ne conservano le letture.",
        "it",
    );
    g.text(
        &ds,
        v(DCT, "description"),
        "For every sensor of the city: what it is for, who answers for it and how to reach them, what it measures, whether it can capture personal data and on what legal basis (GDPR), how long its readings are kept.",
        "en",
    );
    let theme = theme_node(g, &sh.themes, "GOVE")?;
    g.add(&ds, v(DCAT, "theme"), theme);
    g.add(&ds, v(DCT, "accrualPeriodicity"), sh.frequency.clone());
    g.add(&ds, v(DCT, "publisher"), sh.publisher.clone());
    g.add(&ds, v(DCT, "rightsHolder"), sh.holder.clone());
    g.add(&ds, v(DCAT, "contactPoint"), sh.contact.clone());
    let last = extents.values().filter_map(|e| e.last).max();
    g.date(&ds, v(DCT, "modified"), last.unwrap_or(sh.now));
    if let Some(first) = extents.values().filter_map(|e| e.first).min() {
        g.date(&ds, v(DCT, "issued"), first);
    }
    for l in &c.languages {
        g.add(&ds, v(DCT, "language"), iri(&format!("{EU}language/{l}"))?);
    }
    for kw in ["sensor register", "registro sensori", "GDPR", "trasparenza"] {
        g.plain(&ds, v(DCAT, "keyword"), kw);
    }
    let landing = iri(&format!("{base}/register/sensors.geojson"))?;
    g.add(&ds, v(DCAT, "landingPage"), landing.clone());
    g.typed(&landing, &[v(FOAF, "Document")]);
    spatial(
        g,
        &ds,
        s,
        base,
        None,
        &format!("{base}/catalog/register#area"),
    )?;
    for (suffix, format, media, what_it, what_en) in [
        (
            "geojson",
            "GEOJSON",
            "application/geo+json",
            "GeoJSON",
            "GeoJSON",
        ),
        ("csv", "CSV", "text/csv", "CSV", "CSV"),
    ] {
        distribution(
            g,
            sh,
            &ds,
            &Dist {
                node: &format!("{base}/catalog/register/{suffix}"),
                url: &format!("{base}/register/sensors.{suffix}"),
                download: true,
                format,
                media,
                title: (
                    &format!("Registro dei sensori ({what_it})"),
                    &format!("Sensor register ({what_en})"),
                ),
                description: (
                    &format!("Una riga per sensore: scopo, responsabile, contatto, grandezze misurate, dati personali e base giuridica, conservazione ({what_it})."),
                    &format!("One row per sensor: purpose, responsible party, contact, what it measures, personal data and legal basis, retention ({what_en})."),
                ),
                modified: last.unwrap_or(sh.now),
                service: None,
            },
        )?;
    }
    Ok(())
}

/// The catalogue, its publisher, rights holder, contact point, licence, concepts and
/// the OGC API data service.
fn catalog_node(
    g: &mut Graph,
    s: &AppState,
    base: &str,
    extents: &HashMap<String, KindExtent>,
) -> ApiResult<Shared> {
    let c = &s.settings.catalog;
    let now = Utc::now();
    let catalog = iri(&format!("{base}/catalog"))?;
    let homepage = iri(&c.homepage)?;
    let themes = iri(&format!("{EU}data-theme"))?;
    let newest = extents.values().filter_map(|e| e.last).max();

    g.typed(&catalog, &[v(DCAT, "Catalog"), v(DCATAPIT, "Catalog")]);
    g.text(&catalog, v(DCT, "title"), &c.title, "it");
    g.text(&catalog, v(DCT, "title"), &c.title_en, "en");
    g.text(&catalog, v(DCT, "description"), &c.description, "it");
    g.text(&catalog, v(DCT, "description"), &c.description_en, "en");
    g.date(&catalog, v(DCT, "modified"), newest.unwrap_or(now));
    g.add(&catalog, v(FOAF, "homepage"), homepage.clone());
    g.typed(&homepage, &[v(FOAF, "Document")]);
    g.add(&catalog, v(DCAT, "themeTaxonomy"), themes.clone());
    g.typed(&themes, &[v(SKOS, "ConceptScheme")]);
    g.text(&themes, v(DCT, "title"), "Data theme", "en");
    for l in &c.languages {
        let lang = iri(&format!("{EU}language/{l}"))?;
        g.add(&catalog, v(DCT, "language"), lang.clone());
        g.typed(&lang, &[v(DCT, "LinguisticSystem")]);
    }
    let (publisher, holder, contact) = agents(g, s, base)?;
    g.add(&catalog, v(DCT, "publisher"), publisher.clone());
    let licence = licence(g, s)?;

    let availability = iri(&format!("{EU}planned-availability/AVAILABLE"))?;
    g.typed(&availability, &[v(SKOS, "Concept")]);
    g.text(&availability, v(SKOS, "prefLabel"), "available", "en");
    let frequency = iri(&format!("{EU}frequency/{}", c.accrual_periodicity))?;
    g.typed(&frequency, &[v(DCT, "Frequency")]);

    let sh = Shared {
        service: iri(&format!("{base}/ogc"))?,
        sta: iri(&format!("{base}{}", crate::sta::PREFIX))?,
        ngsi: iri(&format!("{base}{}", crate::ngsi_ld::PREFIX))?,
        catalog,
        publisher,
        holder,
        contact,
        licence,
        themes,
        frequency,
        availability,
        hvd_law: iri(HVD_REGULATION)?,
        now,
    };
    if s.catalog.iter().any(|k| k.def.hvd_category.is_some()) {
        g.typed(&sh.hvd_law, &[v(ELI, "LegalResource")]);
    }
    data_service(
        g,
        &sh,
        base,
        &sh.service,
        (
            "OGC API - Features dei sensori urbani",
            "OGC API - Features of the urban sensors",
        ),
        "OGC API - Features",
        crate::ogc::CONFORMANCE[0],
    )?;
    data_service(
        g,
        &sh,
        base,
        &sh.sta,
        (
            "OGC SensorThings API dei sensori urbani: Things, Datastreams e Observations",
            "OGC SensorThings API of the urban sensors: Things, Datastreams and Observations",
        ),
        "OGC SensorThings API",
        crate::sta::CONFORMANCE[0],
    )?;
    data_service(
        g,
        &sh,
        base,
        &sh.ngsi,
        (
            "NGSI-LD dei sensori urbani secondo gli Smart Data Models",
            "NGSI-LD API of the urban sensors as Smart Data Models",
        ),
        "NGSI-LD",
        crate::ngsi_ld::STANDARD,
    )?;
    g.add(&sh.catalog, v(DCT, "license"), sh.licence.clone());
    let all = extents
        .values()
        .filter_map(|e| e.bbox)
        .reduce(|a, b| query::Bbox {
            min_lon: a.min_lon.min(b.min_lon),
            min_lat: a.min_lat.min(b.min_lat),
            max_lon: a.max_lon.max(b.max_lon),
            max_lat: a.max_lat.max(b.max_lat),
        });
    spatial(
        g,
        &sh.catalog,
        s,
        base,
        all,
        &format!("{base}/catalog#area"),
    )?;
    if let Some(first) = extents.values().filter_map(|e| e.first).min() {
        g.date(&sh.catalog, v(DCT, "issued"), first);
    }
    g.add(&sh.catalog, v(DCAT, "service"), sh.service.clone());
    g.add(&sh.catalog, v(DCAT, "service"), sh.sta.clone());
    g.add(&sh.catalog, v(DCAT, "service"), sh.ngsi.clone());
    Ok(sh)
}

/// Publisher, rights holder (both local authorities with an IPA code) and contact point.
fn agents(g: &mut Graph, s: &AppState, base: &str) -> ApiResult<(NamedNode, NamedNode, NamedNode)> {
    let c = &s.settings.catalog;
    let publisher = iri(&format!("{base}/catalog#publisher"))?;
    let holder = iri(&format!("{base}/catalog#rights-holder"))?;
    let contact = iri(&format!("{base}/catalog#contact-point"))?;
    let authority = iri("http://purl.org/adms/publishertype/LocalAuthority")?;
    g.typed(&authority, &[v(SKOS, "Concept")]);
    g.text(&authority, v(SKOS, "prefLabel"), "Local Authority", "en");
    let agent = |g: &mut Graph, node: &NamedNode, name: &str, ipa: &str| {
        g.typed(node, &[v(FOAF, "Agent"), v(DCATAPIT, "Agent")]);
        g.text(node, v(FOAF, "name"), name, "it");
        g.plain(node, v(DCT, "identifier"), ipa);
        g.add(node, v(DCT, "type"), authority.clone());
    };
    agent(g, &publisher, &c.publisher_name, &c.publisher_ipa);
    agent(
        g,
        &holder,
        c.rights_holder_name.as_deref().unwrap_or(&c.publisher_name),
        c.rights_holder_ipa.as_deref().unwrap_or(&c.publisher_ipa),
    );
    g.typed(
        &contact,
        &[
            v(VCARD, "Kind"),
            v(VCARD, "Organization"),
            v(DCATAPIT, "Organization"),
        ],
    );
    g.plain(&contact, v(VCARD, "fn"), &c.contact_name);
    let email = iri(&format!("mailto:{}", c.contact_email))?;
    g.add(&contact, v(VCARD, "hasEmail"), email.clone());
    // The HVD shapes check the class of every IRI value, as DCAT-AP's ranges do.
    g.typed(&email, &[v(RDFS, "Resource")]);

    Ok((publisher, holder, contact))
}

/// The licence document (CC BY 4.0 by default), typed as an attribution licence.
fn licence(g: &mut Graph, s: &AppState) -> ApiResult<NamedNode> {
    let c = &s.settings.catalog;
    let licence = iri(&c.licence_url)?;
    g.typed(
        &licence,
        &[v(DCT, "LicenseDocument"), v(DCATAPIT, "LicenseDocument")],
    );
    g.text(&licence, v(FOAF, "name"), &c.licence_name, "it");
    let attribution = iri("http://purl.org/adms/licencetype/Attribution")?;
    g.add(&licence, v(DCT, "type"), attribution.clone());
    g.typed(&attribution, &[v(SKOS, "Concept")]);
    g.text(&attribution, v(SKOS, "prefLabel"), "Attribution", "en");

    Ok(licence)
}

/// An API (OGC API - Features, SensorThings) as a data service every dataset is
/// served by: its endpoint, titles (Italian, English), keyword and standard.
#[allow(clippy::too_many_arguments)]
fn data_service(
    g: &mut Graph,
    sh: &Shared,
    base: &str,
    service: &NamedNode,
    title: (&str, &str),
    keyword: &str,
    standard: &str,
) -> ApiResult<()> {
    let (contact, licence, publisher) = (&sh.contact, &sh.licence, &sh.publisher);
    g.typed(service, &[v(DCAT, "DataService")]);
    g.text(service, v(DCT, "title"), title.0, "it");
    g.text(service, v(DCT, "title"), title.1, "en");
    g.add(service, v(DCAT, "endpointURL"), service.clone());
    let openapi = iri(&format!("{base}/openapi.json"))?;
    g.add(service, v(DCAT, "endpointDescription"), openapi.clone());
    let docs = iri(&format!("{base}/api"))?;
    g.add(service, v(FOAF, "page"), docs.clone());
    g.typed(&docs, &[v(FOAF, "Document")]);
    // DCAT-AP's range shapes want both typed, even as plain resources.
    g.typed(service, &[v(RDFS, "Resource")]);
    g.add(service, v(DCAT, "contactPoint"), contact.clone());
    g.plain(service, v(DCAT, "keyword"), keyword);
    g.typed(&openapi, &[v(RDFS, "Resource")]);
    let standard = iri(standard)?;
    g.add(service, v(DCT, "conformsTo"), standard.clone());
    g.typed(&standard, &[v(DCT, "Standard")]);
    g.add(service, v(DCT, "license"), licence.clone());
    g.add(service, v(DCT, "publisher"), publisher.clone());
    Ok(())
}

/// One kind's dataset: titles and descriptions in both languages, theme, keywords,
/// extents, and its distributions.
fn dataset(
    g: &mut Graph,
    sh: &Shared,
    base: &str,
    kind: &Kind,
    ext: &KindExtent,
    s: &AppState,
) -> ApiResult<()> {
    let c = &s.settings.catalog;
    let k = kind.name.as_str();
    let def = &kind.def;
    let (catalog, service, themes, frequency, publisher, holder, contact, now) = (
        &sh.catalog,
        &sh.service,
        &sh.themes,
        &sh.frequency,
        &sh.publisher,
        &sh.holder,
        &sh.contact,
        sh.now,
    );
    let ds = iri(&format!("{base}/catalog/dataset/{k}"))?;
    g.add(catalog, v(DCAT, "dataset"), ds.clone());
    let ngsi = def.ngsi_ld.is_some().then_some(&sh.ngsi);
    for service in [Some(service), Some(&sh.sta), ngsi].into_iter().flatten() {
        g.add(service, v(DCAT, "servesDataset"), ds.clone());
    }
    g.typed(&ds, &[v(DCAT, "Dataset"), v(DCATAPIT, "Dataset")]);
    g.plain(
        &ds,
        v(DCT, "identifier"),
        &format!("{}:{k}", c.publisher_ipa),
    );
    g.text(
        &ds,
        v(DCT, "title"),
        def.title_it.as_deref().unwrap_or(&def.title),
        "it",
    );
    g.text(&ds, v(DCT, "title"), &def.title, "en");
    let metrics: Vec<String> = kind
        .metrics
        .values()
        .map(|m| format!("{} ({})", m.name, m.unit))
        .collect();
    let desc_en = format!(
        "{} Latest value of each sensor, updated as readings arrive; metrics: {}.",
        def.description.as_deref().unwrap_or(&def.title),
        metrics.join(", ")
    );
    let desc_it = format!(
        "{} Ultimo valore di ogni sensore, aggiornato all'arrivo delle letture; grandezze: {}.",
        def.description_it
            .as_deref()
            .or(def.title_it.as_deref())
            .unwrap_or(&def.title),
        metrics.join(", ")
    );
    g.text(&ds, v(DCT, "description"), &desc_it, "it");
    g.text(&ds, v(DCT, "description"), &desc_en, "en");
    let theme = theme_node(g, themes, &def.theme)?;
    g.add(&ds, v(DCAT, "theme"), theme.clone());
    g.add(&sh.sta, v(DCAT, "theme"), theme.clone());
    if let Some(n) = ngsi {
        g.add(n, v(DCAT, "theme"), theme.clone());
    }
    g.add(service, v(DCAT, "theme"), theme);
    g.add(&ds, v(DCT, "accrualPeriodicity"), frequency.clone());
    g.add(&ds, v(DCT, "publisher"), publisher.clone());
    g.add(&ds, v(DCT, "rightsHolder"), holder.clone());
    g.add(&ds, v(DCAT, "contactPoint"), contact.clone());
    g.date(&ds, v(DCT, "modified"), ext.last.unwrap_or(now));
    if let Some(first) = ext.first {
        g.date(&ds, v(DCT, "issued"), first);
    }
    for l in &c.languages {
        g.add(&ds, v(DCT, "language"), iri(&format!("{EU}language/{l}"))?);
    }
    for kw in std::iter::once(k.replace('_', " ")).chain(kind.metrics.keys().map(|m| m.to_string()))
    {
        g.plain(&ds, v(DCAT, "keyword"), &kw);
    }
    let landing = iri(&format!("{base}/ogc/collections/{k}"))?;
    g.add(&ds, v(DCAT, "landingPage"), landing.clone());
    g.typed(&landing, &[v(FOAF, "Document")]);
    spatial(
        g,
        &ds,
        s,
        base,
        ext.bbox,
        &format!("{base}/catalog/dataset/{k}#area"),
    )?;
    if let (Some(first), Some(last)) = (ext.first, ext.last) {
        temporal(
            g,
            &ds,
            &format!("{base}/catalog/dataset/{k}#period"),
            first,
            last,
        )?;
    }
    if let Some(hvd) = def.hvd_category {
        g.add(&ds, v(DCATAP, "applicableLegislation"), sh.hvd_law.clone());
        let cat = hvd_category(g, hvd)?;
        g.add(&ds, v(DCATAP, "hvdCategory"), cat.clone());
        // The APIs serve a high-value dataset, so they are under the regulation too.
        for service in [Some(service), Some(&sh.sta), ngsi].into_iter().flatten() {
            g.add(service, v(DCATAP, "hvdCategory"), cat.clone());
            g.add(
                service,
                v(DCATAP, "applicableLegislation"),
                sh.hvd_law.clone(),
            );
        }
    }

    distributions(g, sh, base, kind, ext, &ds)
}

/// An EU data theme as a SKOS concept with its labels.
fn theme_node(g: &mut Graph, themes: &NamedNode, code: &str) -> ApiResult<NamedNode> {
    let theme = iri(&format!("{EU}data-theme/{code}"))?;
    g.typed(&theme, &[v(SKOS, "Concept")]);
    g.add(&theme, v(SKOS, "inScheme"), themes.clone());
    if let Some((en, it)) = theme_labels(code) {
        g.text(&theme, v(SKOS, "prefLabel"), en, "en");
        g.text(&theme, v(SKOS, "prefLabel"), it, "it");
    }
    Ok(theme)
}

/// One indicator's dataset: what it measures and how, its plan line and SDG
/// targets as keywords, the extent of the readings it is computed from, and
/// its JSON and CSV rows as distributions.
fn indicator_dataset(
    g: &mut Graph,
    sh: &Shared,
    base: &str,
    ind: &Indicator,
    ext: &KindExtent,
    s: &AppState,
) -> ApiResult<()> {
    let c = &s.settings.catalog;
    let id = ind.id;
    let ds = iri(&format!("{base}/catalog/indicator/{id}"))?;
    g.add(&sh.catalog, v(DCAT, "dataset"), ds.clone());
    g.typed(&ds, &[v(DCAT, "Dataset"), v(DCATAPIT, "Dataset")]);
    g.plain(
        &ds,
        v(DCT, "identifier"),
        &format!("{}:indicator:{id}", c.publisher_ipa),
    );
    g.text(
        &ds,
        v(DCT, "title"),
        &format!("Indicatore: {}", ind.title_it),
        "it",
    );
    g.text(
        &ds,
        v(DCT, "title"),
        &format!("Indicator: {}", ind.title),
        "en",
    );
    let sdg = ind.sdg.join(", ");
    g.text(
        &ds,
        v(DCT, "description"),
        &format!(
            "{} ({}). Metodo: {} Linea di mandato: {}. Target SDG dell'Agenda 2030: {sdg}.",
            ind.title_it, ind.unit, ind.method_it, ind.plan_it
        ),
        "it",
    );
    g.text(
        &ds,
        v(DCT, "description"),
        &format!(
            "{} ({}). Method: {} Plan line: {}. UN 2030 Agenda SDG targets: {sdg}.",
            ind.title, ind.unit, ind.method, ind.plan
        ),
        "en",
    );
    let theme = theme_node(g, &sh.themes, ind.theme)?;
    g.add(&ds, v(DCAT, "theme"), theme);
    g.add(&ds, v(DCT, "accrualPeriodicity"), sh.frequency.clone());
    g.add(&ds, v(DCT, "publisher"), sh.publisher.clone());
    g.add(&ds, v(DCT, "rightsHolder"), sh.holder.clone());
    g.add(&ds, v(DCAT, "contactPoint"), sh.contact.clone());
    g.date(&ds, v(DCT, "modified"), ext.last.unwrap_or(sh.now));
    if let Some(first) = ext.first {
        g.date(&ds, v(DCT, "issued"), first);
    }
    for l in &c.languages {
        g.add(&ds, v(DCT, "language"), iri(&format!("{EU}language/{l}"))?);
    }
    g.plain(&ds, v(DCAT, "keyword"), id);
    g.text(&ds, v(DCAT, "keyword"), ind.plan_it, "it");
    g.text(&ds, v(DCAT, "keyword"), ind.plan, "en");
    for t in ind.sdg {
        g.plain(&ds, v(DCAT, "keyword"), &format!("SDG {t}"));
    }
    let landing = iri(&format!("{base}/#indicators/{id}"))?;
    g.add(&ds, v(DCAT, "landingPage"), landing.clone());
    g.typed(&landing, &[v(FOAF, "Document")]);
    spatial(
        g,
        &ds,
        s,
        base,
        ext.bbox,
        &format!("{base}/catalog/indicator/{id}#area"),
    )?;
    if let (Some(first), Some(last)) = (ext.first, ext.last) {
        temporal(
            g,
            &ds,
            &format!("{base}/catalog/indicator/{id}#period"),
            first,
            last,
        )?;
    }
    for (suffix, query, format, media, what_it, what_en) in [
        (
            "json",
            "",
            "JSON",
            "application/json",
            "righe in JSON",
            "rows as JSON",
        ),
        (
            "csv",
            "?format=csv",
            "CSV",
            "text/csv",
            "righe in CSV",
            "rows as CSV",
        ),
    ] {
        distribution(
            g,
            sh,
            &ds,
            &Dist {
                node: &format!("{base}/catalog/indicator/{id}/{suffix}"),
                url: &format!("{base}/api/v1/indicators/{id}{query}"),
                download: true,
                format,
                media,
                title: (
                    &format!("{}: {what_it}", ind.title_it),
                    &format!("{}: {what_en}", ind.title),
                ),
                description: (
                    &format!(
                        "{} per sensore e per la città, per giorno, mese o anno ({what_it}).",
                        ind.title_it
                    ),
                    &format!(
                        "{} per sensor and for the city, by day, month or year ({what_en}).",
                        ind.title
                    ),
                ),
                modified: ext.last.unwrap_or(sh.now),
                service: None,
            },
        )?;
    }
    Ok(())
}

/// GeoJSON and CSV downloads, and the OGC API items, of one dataset.
fn distributions(
    g: &mut Graph,
    sh: &Shared,
    base: &str,
    kind: &Kind,
    ext: &KindExtent,
    ds: &NamedNode,
) -> ApiResult<()> {
    let k = kind.name.as_str();
    let def = &kind.def;
    let dists = [
        (
            "geojson",
            format!("{base}/feeds/{k}.geojson"),
            "GEOJSON",
            "application/geo+json",
            "Ultimi valori dei sensori (GeoJSON)",
            "Latest sensor values (GeoJSON)",
            true,
        ),
        (
            "csv",
            format!("{base}/feeds/{k}.csv"),
            "CSV",
            "text/csv",
            "Ultimi valori dei sensori (CSV, unità nelle intestazioni)",
            "Latest sensor values (CSV, units in the headers)",
            true,
        ),
        (
            "ogc",
            format!("{base}/ogc/collections/{k}/items"),
            "GEOJSON",
            "application/geo+json",
            "Sensori tramite OGC API - Features",
            "Sensors through OGC API - Features",
            false,
        ),
        (
            "sta",
            format!(
                "{base}{}/Datastreams?$filter=Thing/properties/kind%20eq%20'{k}'",
                crate::sta::PREFIX
            ),
            "JSON",
            "application/json",
            "Serie di misure e letture tramite OGC SensorThings API",
            "Datastreams and their observations through OGC SensorThings API",
            false,
        ),
    ];
    for (suffix, url, format, media, title_it, title_en, download) in dists {
        let service = (suffix == "sta").then_some(&sh.sta);
        let d = distribution(
            g,
            sh,
            ds,
            &Dist {
                node: &format!("{base}/catalog/dataset/{k}/{suffix}"),
                url: &url,
                download,
                format,
                media,
                title: (title_it, title_en),
                description: (
                    &format!(
                        "{title_it}: {}",
                        def.title_it.as_deref().unwrap_or(&def.title)
                    ),
                    &format!("{title_en}: {}", def.title),
                ),
                modified: ext.last.unwrap_or(sh.now),
                service,
            },
        )?;
        if def.hvd_category.is_some() {
            g.add(&d, v(DCATAP, "applicableLegislation"), sh.hvd_law.clone());
        }
    }
    Ok(())
}

/// One distribution of a dataset.
struct Dist<'a> {
    node: &'a str,
    url: &'a str,
    /// A file to download; otherwise an access through the OGC API service.
    download: bool,
    /// EU file-type code and IANA media type.
    format: &'a str,
    media: &'a str,
    /// (Italian, English)
    title: (&'a str, &'a str),
    description: (&'a str, &'a str),
    modified: DateTime<Utc>,
    /// The service it is accessed through, when not the OGC API.
    service: Option<&'a NamedNode>,
}

/// Adds `d` to `ds`: access, format, media type, licence, titles, availability.
fn distribution(g: &mut Graph, sh: &Shared, ds: &NamedNode, d: &Dist) -> ApiResult<NamedNode> {
    let node = iri(d.node)?;
    let access = iri(d.url)?;
    g.add(ds, v(DCAT, "distribution"), node.clone());
    g.typed(
        &node,
        &[v(DCAT, "Distribution"), v(DCATAPIT, "Distribution")],
    );
    g.add(&node, v(DCAT, "accessURL"), access.clone());
    g.typed(&access, &[v(RDFS, "Resource")]);
    if d.download {
        g.add(&node, v(DCAT, "downloadURL"), access);
    } else {
        g.add(
            &node,
            v(DCAT, "accessService"),
            d.service.unwrap_or(&sh.service).clone(),
        );
    }
    let fmt = iri(&format!("{EU}file-type/{}", d.format))?;
    g.add(&node, v(DCT, "format"), fmt.clone());
    g.typed(&fmt, &[v(DCT, "MediaTypeOrExtent")]);
    let mt = iri(&format!(
        "http://www.iana.org/assignments/media-types/{}",
        d.media
    ))?;
    g.add(&node, v(DCAT, "mediaType"), mt.clone());
    g.typed(&mt, &[v(DCT, "MediaType")]);
    g.add(&node, v(DCT, "license"), sh.licence.clone());
    g.text(&node, v(DCT, "title"), d.title.0, "it");
    g.text(&node, v(DCT, "title"), d.title.1, "en");
    g.text(&node, v(DCT, "description"), d.description.0, "it");
    g.text(&node, v(DCT, "description"), d.description.1, "en");
    g.date(&node, v(DCT, "modified"), d.modified);
    g.add(&node, v(DCATAP, "availability"), sh.availability.clone());
    Ok(node)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Syntax {
    JsonLd,
    Turtle,
    RdfXml,
}

impl Syntax {
    fn media_type(self) -> &'static str {
        match self {
            Syntax::JsonLd => "application/ld+json",
            Syntax::Turtle => "text/turtle; charset=utf-8",
            Syntax::RdfXml => "application/rdf+xml",
        }
    }
}

fn serialize(g: &Graph, syntax: Syntax) -> ApiResult<Vec<u8>> {
    // Grouped by subject (stable, so each node's statements keep their order): the
    // serialisers then write one block per node.
    let mut seen = std::collections::HashSet::new();
    let mut sorted: Vec<&Triple> = g.triples.iter().filter(|t| seen.insert(*t)).collect();
    sorted.sort_by_key(|t| t.subject.to_string());
    let g = Graph {
        triples: sorted.into_iter().cloned().collect(),
    };
    let g = &g;
    let err = |e: std::io::Error| ApiError::Internal(format!("serialising the catalogue: {e}"));
    let perr = |e: oxrdf::IriParseError| ApiError::Internal(format!("catalogue prefix: {e}"));
    match syntax {
        Syntax::Turtle => {
            let mut s = oxttl::TurtleSerializer::new();
            for (p, ns) in PREFIXES {
                s = s.with_prefix(*p, *ns).map_err(perr)?;
            }
            let mut w = s.for_writer(Vec::new());
            for t in &g.triples {
                w.serialize_triple(t).map_err(err)?;
            }
            w.finish().map_err(err)
        }
        Syntax::JsonLd => {
            let mut s = oxjsonld::JsonLdSerializer::new();
            for (p, ns) in PREFIXES {
                s = s.with_prefix(*p, *ns).map_err(perr)?;
            }
            let mut w = s.for_writer(Vec::new());
            for t in &g.triples {
                w.serialize_quad(t.as_ref().in_graph(oxrdf::GraphNameRef::DefaultGraph))
                    .map_err(err)?;
            }
            w.finish().map_err(err)
        }
        Syntax::RdfXml => {
            let mut s = oxrdfxml::RdfXmlSerializer::new();
            for (p, ns) in PREFIXES {
                s = s.with_prefix(*p, *ns).map_err(perr)?;
            }
            let mut w = s.for_writer(Vec::new());
            for t in &g.triples {
                w.serialize_triple(t).map_err(err)?;
            }
            w.finish().map_err(err)
        }
    }
}

/// Picks a syntax from an Accept header (q-values honoured; JSON-LD by default).
pub fn negotiate(accept: Option<&str>) -> Option<Syntax> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Syntax::JsonLd);
    };
    let mut best: Option<(f32, Syntax)> = None;
    for part in accept.split(',') {
        let mut it = part.split(';');
        let mt = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let syntax = match mt.as_str() {
            "application/ld+json" | "application/json" | "*/*" | "application/*" => Syntax::JsonLd,
            "text/turtle" | "text/*" => Syntax::Turtle,
            "application/rdf+xml" => Syntax::RdfXml,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, syntax));
        }
    }
    best.map(|(_, s)| s)
}

async fn respond(
    s: &AppState,
    base: &str,
    headers: &HeaderMap,
    syntax: Syntax,
    vary: bool,
) -> ApiResult<Response> {
    let extents = query::kind_extents(&s.reader()?).await?;
    let g = build(s, base, &extents)?;
    let body = serialize(&g, syntax)?;
    let modified = extents.values().filter_map(|e| e.last).max();
    let mut extra = vec![];
    if vary {
        extra.push((header::VARY, "Accept".to_owned()));
    }
    Ok(cached(headers, syntax.media_type(), body, modified, &extra))
}

/// The catalogue in the syntax the Accept header asks for (JSON-LD, Turtle or RDF/XML).
#[utoipa::path(get, path = "/catalog", tag = "open data",
    responses(
        (status = 200, description = "DCAT-AP_IT catalogue",
         content((Object = "application/ld+json"), (String = "text/turtle"), (String = "application/rdf+xml"))),
        (status = 406, description = "None of the accepted syntaxes is available", body = crate::error::ErrorBody)))]
pub async fn catalog(
    State(s): State<AppState>,
    base: BaseUrl,
    headers: HeaderMap,
    _q: StrictQuery<NoParams>,
) -> ApiResult<Response> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let Some(syntax) = negotiate(accept) else {
        return Err(ApiError::NotAcceptable(
            "the catalogue is available as application/ld+json, text/turtle and application/rdf+xml".into(),
        ));
    };
    respond(&s, &base.0, &headers, syntax, true).await
}

/// The catalogue as JSON-LD.
#[utoipa::path(get, path = "/catalog.jsonld", tag = "open data",
    responses((status = 200, description = "DCAT-AP_IT catalogue", content_type = "application/ld+json")))]
pub async fn catalog_jsonld(
    State(s): State<AppState>,
    base: BaseUrl,
    headers: HeaderMap,
    _q: StrictQuery<NoParams>,
) -> ApiResult<Response> {
    respond(&s, &base.0, &headers, Syntax::JsonLd, false).await
}

/// The catalogue as Turtle.
#[utoipa::path(get, path = "/catalog.ttl", tag = "open data",
    responses((status = 200, description = "DCAT-AP_IT catalogue", content_type = "text/turtle")))]
pub async fn catalog_ttl(
    State(s): State<AppState>,
    base: BaseUrl,
    headers: HeaderMap,
    _q: StrictQuery<NoParams>,
) -> ApiResult<Response> {
    respond(&s, &base.0, &headers, Syntax::Turtle, false).await
}

/// The catalogue as RDF/XML (what CKAN-based harvesters such as dati.gov.it's read).
#[utoipa::path(get, path = "/catalog.rdf", tag = "open data",
    responses((status = 200, description = "DCAT-AP_IT catalogue", content_type = "application/rdf+xml")))]
pub async fn catalog_rdf(
    State(s): State<AppState>,
    base: BaseUrl,
    headers: HeaderMap,
    _q: StrictQuery<NoParams>,
) -> ApiResult<Response> {
    respond(&s, &base.0, &headers, Syntax::RdfXml, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None), Some(Syntax::JsonLd));
        assert_eq!(negotiate(Some("text/turtle")), Some(Syntax::Turtle));
        assert_eq!(
            negotiate(Some("application/ld+json;q=0.5, text/turtle;q=0.9")),
            Some(Syntax::Turtle)
        );
        assert_eq!(negotiate(Some("application/rdf+xml")), Some(Syntax::RdfXml));
        assert_eq!(negotiate(Some("*/*")), Some(Syntax::JsonLd));
        assert_eq!(negotiate(Some("application/xml")), None);
        assert_eq!(negotiate(Some("text/turtle;q=0")), None);
    }

    #[test]
    fn every_eu_theme_has_labels() {
        for t in [
            "AGRI", "ECON", "EDUC", "ENER", "ENVI", "GOVE", "HEAL", "INTR", "JUST", "REGI", "SOCI",
            "TECH", "TRAN",
        ] {
            assert!(theme_labels(t).is_some(), "{t}");
        }
        assert!(theme_labels("XXXX").is_none());
    }
}
