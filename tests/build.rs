//! Sets `cfg(citycredit_pg)` when `DATABASE_URL` names a PostgreSQL server (and
//! `cfg(citycredit_kubectl)` when `kubectl` runs). Tests declared with
//! `both_databases!` or `postgres_only!` (src/lib.rs) are then run on PostgreSQL; without it
//! libtest reports their PostgreSQL half as ignored, with the reason, instead of passing a test
//! that never ran.
//!
//! Only this crate reads `DATABASE_URL` at build time: a changed value rebuilds this crate's
//! tests, not the workspace. That is why tests that need PostgreSQL live here and not beside
//! the code as unit tests.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=DATABASE_URL");
    println!("cargo::rustc-check-cfg=cfg(citycredit_pg)");
    if std::env::var("DATABASE_URL").is_ok_and(|url| url.starts_with("postgres")) {
        println!("cargo::rustc-cfg=citycredit_pg");
    }
    // The manifest test needs `kubectl` (it renders the manifests offline); without it libtest
    // reports that test as ignored rather than passing it.
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rustc-check-cfg=cfg(citycredit_kubectl)");
    let kubectl = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if kubectl {
        println!("cargo::rustc-cfg=citycredit_kubectl");
    }
}
