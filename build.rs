// sqlx::migrate! embeds migrations/ at compile time; a new migration file
// alone must rebuild the binary (as sqlx's docs advise).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
