//! Writes the CRD YAML for every resource into a directory (default `crds`).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".into()));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in switchboard_operator::crd::all() {
        let path = dir.join(file);
        std::fs::write(&path, switchboard_operator::crd::to_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
