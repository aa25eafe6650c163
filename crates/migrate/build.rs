// refinery embeds `migrations/` at compile time through a macro, which
// cargo does not know reads that folder: without this, a migration added
// to it is silently left out of the next build.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
