//! Writes every served document under a directory (laid out like the URL paths), for
//! inspecting them or serving them from a static test server.
use std::path::Path;

fn main() -> std::io::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "docs-out".into());
    let out = Path::new(&out);
    let write = |rel: &str, bytes: &[u8]| -> std::io::Result<()> {
        let p = out.join(rel);
        std::fs::create_dir_all(p.parent().unwrap_or(out))?;
        std::fs::write(p, bytes)
    };
    let json = |v: serde_json::Value| serde_json::to_vec_pretty(&v).unwrap_or_default();
    write(
        "api/legacy.json",
        &json(kelson_apiresources::discovery_api_for("127.0.0.1:6443")),
    )?;
    write(
        "api/aggregated.json",
        &json(kelson_apiresources::aggregated_discovery(true, true)),
    )?;
    write(
        "apis/legacy.json",
        &json(kelson_apiresources::discovery_apis()),
    )?;
    write(
        "apis/aggregated.json",
        &json(kelson_apiresources::aggregated_discovery(false, true)),
    )?;
    for (g, v) in kelson_apiresources::registry::group_versions() {
        let path = kelson_apiresources::registry::group_version_path(g, v);
        let doc = kelson_apiresources::discovery_group_version(g, v).unwrap_or_default();
        write(
            &format!("{}/index.json", path.trim_start_matches('/')),
            &json(doc),
        )?;
        let key = path.trim_start_matches('/');
        if let Some(bytes) = kelson_apiresources::openapi_v3(key) {
            write(&format!("openapi/v3/{key}.json"), bytes)?;
        }
    }
    write("openapi/v2.json", kelson_apiresources::openapi_v2())?;
    write(
        "openapi/v3.json",
        &json(kelson_apiresources::openapi_v3_index()),
    )?;
    Ok(())
}
