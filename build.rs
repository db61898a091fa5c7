// Build facts compiled into the binary.
//
// - sqlx::migrate! embeds migrations/ at compile time; a new migration file
//   alone must rebuild the binary (as sqlx's docs advise).
// - OPSCORE_COMMIT, the commit the binary was built from, for
//   `opscore_build_info`: the OPSCORE_COMMIT variable when set (the
//   Dockerfile passes its REVISION build argument: the image builds from an
//   export without .git), else `git rev-parse`, else "unknown".
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=OPSCORE_COMMIT");
    let commit = std::env::var("OPSCORE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=OPSCORE_COMMIT={commit}");
    // A new commit changes the ref HEAD points to (or HEAD itself, detached).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
}
