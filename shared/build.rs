//! The migrations are embedded at compile time (`refinery::embed_migrations!`), and a macro
//! does not tell Cargo which files it read: without this a new migration file would not
//! rebuild the crate, and the binaries would silently miss it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
