//! Helpers shared by the filter crates' tests (feature `testing`, enabled
//! only from their `[dev-dependencies]`, so no filter module carries it).

use std::path::Path;

/// Asserts that `<manifest_dir>/config.schema.json` is `schema`, pretty
/// printed with a trailing newline; with `UPDATE_SCHEMAS` set it rewrites the
/// file first. `package` names the crate in the hint.
#[allow(clippy::panic)]
pub fn assert_schema_current<T: serde::Serialize + ?Sized>(
    manifest_dir: &str,
    package: &str,
    schema: &T,
) {
    let path = Path::new(manifest_dir).join("config.schema.json");
    let want = match serde_json::to_string_pretty(schema) {
        Ok(s) => s + "\n",
        Err(e) => panic!("schema of {package} does not serialise: {e}"),
    };
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        if let Err(e) = std::fs::write(&path, &want) {
            panic!("cannot write {}: {e}", path.display());
        }
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale: run `UPDATE_SCHEMAS=1 cargo test -p {package}`",
        path.display()
    );
}
