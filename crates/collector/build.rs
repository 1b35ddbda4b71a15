// sqlx::migrate! embeds the migrations at compile time but cannot tell Cargo to watch
// the folder on stable Rust: without this, a new migration file would not rebuild the
// collector.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
