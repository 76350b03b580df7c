//! The documentation as a reader follows it: every relative link in the README and
//! the book (`docs/`) reaches a file of the repository, every `#anchor` a heading of
//! its page, and every page of `docs/` is in the book's table of contents.

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A heading's anchor as mdBook and GitHub make it: lower case, spaces to `-`,
/// other punctuation dropped.
fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

struct Page {
    links: Vec<String>,
    anchors: BTreeSet<String>,
}

fn read(path: &Path) -> Page {
    let text = std::fs::read_to_string(path).unwrap();
    let mut links = Vec::new();
    let mut anchors = BTreeSet::new();
    let mut heading: Option<String> = None;
    for event in Parser::new(&text) {
        match event {
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => links.push(dest_url.into_string()),
            Event::Start(Tag::Heading { level, .. }) if level != HeadingLevel::H6 => {
                heading = Some(String::new())
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    anchors.insert(slug(&h));
                }
            }
            _ => {}
        }
    }
    Page { links, anchors }
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            files.push(p);
        }
    }
    files.sort();
    files
}

#[test]
fn every_link_of_the_readme_and_the_book_reaches_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = markdown_files(root);
    let pages: BTreeMap<PathBuf, Page> = files
        .iter()
        .map(|f| (f.canonicalize().unwrap(), read(f)))
        .collect();
    let repo = root.canonicalize().unwrap();
    let docs = repo.join("docs");
    let mut broken = Vec::new();
    let mut checked = 0;
    for (file, page) in &pages {
        for link in &page.links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                match file.parent().unwrap().join(path).canonicalize() {
                    Ok(t) => t,
                    Err(_) => {
                        broken.push(format!("{}: {link} (no such file)", file.display()));
                        continue;
                    }
                }
            };
            // The book is published on its own: its pages link only to each other.
            let bound = if file.starts_with(&docs) {
                &docs
            } else {
                &repo
            };
            if !target.starts_with(bound) {
                broken.push(format!(
                    "{}: {link} (outside {})",
                    file.display(),
                    bound.display()
                ));
            }
            if anchor.is_empty() {
                continue;
            }
            match pages.get(&target) {
                Some(p) if p.anchors.contains(anchor) => {}
                Some(_) => broken.push(format!("{}: {link} (no such heading)", file.display())),
                None => broken.push(format!(
                    "{}: {link} (anchor into a file that is not a page)",
                    file.display()
                )),
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser reading the pages?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_page_of_the_book_is_in_its_table_of_contents() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let summary = read(&root.join("docs/SUMMARY.md"));
    let listed: BTreeSet<&str> = summary.links.iter().map(String::as_str).collect();
    for f in markdown_files(root) {
        let name = f.file_name().unwrap().to_str().unwrap();
        if f.parent() == Some(&root.join("docs")) && name != "SUMMARY.md" {
            assert!(
                listed.contains(name),
                "docs/{name} is not in docs/SUMMARY.md"
            );
        }
    }
}

#[test]
fn the_readme_stays_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lines = std::fs::read_to_string(root.join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines < 200,
        "README.md has {lines} lines: move detail into docs/"
    );
}

#[test]
fn anchors_are_made_as_mdbook_makes_them() {
    assert_eq!(slug("Dependencies, and why"), "dependencies-and-why");
    assert_eq!(slug("`[kinds.<kind>]`"), "kindskind");
    assert_eq!(slug("What it survives"), "what-it-survives");
}
