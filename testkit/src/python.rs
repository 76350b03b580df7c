//! The Python tools the tests drive (validators and the real clients users have:
//! OWSLib, pandas, httpx-sse, paho-mqtt, rdflib, pySHACL), pinned in
//! `tests/validators/requirements.txt` and installed on first use into
//! `target/validators-venv`, rebuilt when the requirements change.

use std::path::PathBuf;
use std::process::Command;

/// The virtualenv's directory, built if missing or stale.
pub fn venv() -> PathBuf {
    venv_of("validators-venv", "requirements.txt")
}

/// The NGSI-LD clients' virtualenv (`tests/validators/ngsi-ld-requirements.txt`):
/// ngsildclient pins httpx and geojson versions older than the other clients'.
pub fn ngsi_ld_python() -> PathBuf {
    venv_of("ngsi-ld-venv", "ngsi-ld-requirements.txt").join("bin/python")
}

fn venv_of(name: &str, requirements: &str) -> PathBuf {
    let root = crate::workspace_root();
    let target = root.join("target");
    let dir = target.join(name);
    // One test at a time builds the virtualenv, the others wait and reuse it: a lock on
    // a file, since each test is a process of its own under cargo-nextest (a lock in
    // memory let two rebuild it at once, one clearing what the other installed).
    std::fs::create_dir_all(&target).expect("creating target/");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target.join(format!("{name}.lock")))
        .expect("opening the virtualenv's lock file");
    lock.lock().expect("locking the virtualenv's lock file");
    let req = root.join("tests/validators").join(requirements);
    let want = std::fs::read_to_string(&req).expect("tests/validators requirements");
    let stamp = dir.join("requirements.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return dir;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&dir)
        .status()
        .expect("python3")
        .success();
    assert!(ok, "python3 -m venv failed");
    let ok = Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "-q",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&req)
        .status()
        .expect("pip")
        .success();
    assert!(ok, "pip install -r {} failed", req.display());
    std::fs::write(&stamp, want).expect("writing the venv stamp");
    dir
}

/// The virtualenv's Python.
pub fn python() -> PathBuf {
    venv().join("bin/python")
}
