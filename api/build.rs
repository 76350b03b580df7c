// The operator map (`web/`) is compiled into every build of the hub (src/web.rs embeds
// `$OUT_DIR/map`), so `cargo build --release` and `cargo install --path .` on a fresh
// clone give a binary that serves it from any directory. The bundle is built here with
// Node.js: from the checkout's `web/node_modules` when `npm ci` has run there, else in a
// copy of `web/` under OUT_DIR (`npm ci` from the pinned lock file). Nothing is written
// into the source tree. Without Node.js the build still succeeds, says so, and the
// binary falls back to a `web/dist` it can find (or `http.web_dir`).
//
// CITYHUB_SKIP_MAP=1 leaves the map out on purpose; CITYHUB_REQUIRE_MAP=1 makes a
// failed map build fail the build (CI, release packaging).
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let web = manifest.join("../web");
    for p in ["src", "build.mjs", "package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed=../web/{p}");
    }
    println!("cargo:rerun-if-env-changed=CITYHUB_SKIP_MAP");
    println!("cargo:rerun-if-env-changed=CITYHUB_REQUIRE_MAP");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let map = out_dir.join("map");
    let _ = std::fs::remove_dir_all(&map);
    std::fs::create_dir_all(&map).expect("OUT_DIR/map");
    if std::env::var_os("CITYHUB_SKIP_MAP").is_some_and(|v| v != "0") {
        println!("cargo:warning=CITYHUB_SKIP_MAP is set: the operator map is not compiled in");
        return;
    }
    if let Err(why) = build_map(&web, &out_dir.join("web"), &map) {
        let _ = std::fs::remove_dir_all(&map);
        std::fs::create_dir_all(&map).expect("OUT_DIR/map");
        if std::env::var_os("CITYHUB_REQUIRE_MAP").is_some_and(|v| v != "0") {
            panic!("the operator map could not be built: {why}");
        }
        println!("cargo:warning=the operator map is not compiled into this build: {why}");
        println!(
            "cargo:warning=install Node.js and npm and build again, or serve a built copy with http.web_dir"
        );
    }
}

fn build_map(web: &Path, work: &Path, map: &Path) -> Result<(), String> {
    if !web.join("package.json").is_file() {
        return Err(format!("no map sources at {}", web.display()));
    }
    for tool in ["node", "npm"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("`{tool}` was not found on PATH"));
        }
    }
    // The checkout's packages when they match the lock file, else a private install.
    let dir = if fresh_install(web) {
        web.to_path_buf()
    } else {
        std::fs::create_dir_all(work.join("src")).map_err(|e| e.to_string())?;
        for f in ["package.json", "package-lock.json", "build.mjs"] {
            copy_if_changed(&web.join(f), &work.join(f))?;
        }
        copy_tree(&web.join("src"), &work.join("src"))?;
        if !fresh_install(work) {
            run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(work),
                "npm ci",
            )?;
        }
        work.to_path_buf()
    };
    run(
        Command::new("node")
            .arg("build.mjs")
            .env("CITYHUB_MAP_OUT", map)
            .current_dir(&dir),
        "node build.mjs",
    )?;
    if !map.join("index.html").is_file() {
        return Err("the map build wrote no index.html".into());
    }
    Ok(())
}

/// `npm ci` ran after the lock file last changed.
fn fresh_install(dir: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        modified(dir.join("node_modules/.package-lock.json")),
        modified(dir.join("package-lock.json")),
    ) {
        (Some(installed), Some(lock)) => installed >= lock,
        _ => false,
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = err.lines().rev().take(5).collect();
    Err(format!(
        "{what} failed ({}): {}",
        out.status,
        last.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}

/// Copies only what differs, so an unchanged lock file keeps its install fresh.
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), String> {
    let new = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
    if std::fs::read(to).ok().as_ref() != Some(&new) {
        std::fs::write(to, new).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
