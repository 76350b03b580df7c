// The map bundle is compiled in (src/web.rs); rebuild when `web/dist` changes,
// appears or goes, not only when a file already embedded changes.
fn main() {
    println!("cargo:rerun-if-changed=../web/dist");
}
