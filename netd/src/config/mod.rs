//! Network definitions: the TOML model, its validation, and libvirt XML import.

mod model;
pub mod nat_pool;
mod validate;
pub mod xml;

pub use model::*;
pub use validate::{
    check_interface_name, check_network_name, overlaps, parse_forward_target, validate,
    validate_forward,
};

use anyhow::{Context, Result, bail};
use std::path::Path;

/// Parses a definition from a file: TOML, or libvirt network XML when the
/// file name ends in `.xml` or the text starts with `<`.
pub fn load_file(path: &Path) -> Result<Network> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let is_xml = path.extension().is_some_and(|e| e == "xml") || text.trim_start().starts_with('<');
    parse(&text, is_xml).with_context(|| format!("{}", path.display()))
}

/// Parses and validates a definition.
pub fn parse(text: &str, is_xml: bool) -> Result<Network> {
    let net = if is_xml {
        xml::from_libvirt(text)?
    } else {
        from_toml(text)?
    };
    validate(&net)?;
    Ok(net)
}

pub fn from_toml(text: &str) -> Result<Network> {
    match toml::from_str::<Network>(text) {
        Ok(n) => Ok(n),
        // toml's messages span several lines with a caret diagram; keep one.
        Err(e) => bail!("invalid definition: {}", e.message().trim()),
    }
}

pub fn to_toml(net: &Network) -> String {
    toml::to_string_pretty(net).expect("a network always serialises")
}

#[cfg(test)]
mod examples {
    /// Every file under examples/ is a valid definition, so the
    /// documentation can't drift from the parser.
    #[test]
    fn every_example_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            super::load_file(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            n += 1;
        }
        assert!(n >= 6, "only {n} examples");
    }
}
