//! Network definitions: the TOML model, its validation, and libvirt XML import.

pub mod hostdev;
mod model;
pub mod types;
pub mod nat_pool;
mod validate;
pub mod xml;

pub use model::*;
pub use types::{DnsName, Duid, HostName, IfName, LeaseTime, Mac, PortRange, Target};
pub use validate::{
    check_interface_name, check_network_name, overlaps, parse_forward_target, validate,
    validate_forward,
};

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::Path;

/// The largest definition file, TOML or XML, read or parsed anywhere. The
/// biggest real one is a few KiB; the limit is checked before parsing (and
/// before reading a file), so a huge input costs nothing.
pub const MAX_DEFINITION_BYTES: usize = 1 << 20;

/// Reads a definition file of at most [`MAX_DEFINITION_BYTES`], without
/// reading more than that whatever the file's size (a FIFO or /dev/zero
/// included).
pub fn read_definition(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_DEFINITION_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if buf.len() > MAX_DEFINITION_BYTES {
        bail!(
            "{}: larger than {} bytes; a definition is a few KiB",
            path.display(),
            MAX_DEFINITION_BYTES
        );
    }
    String::from_utf8(buf).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))
}

/// Whether definition text is libvirt XML: by file name, else by content.
pub fn is_xml(path: &Path, text: &str) -> bool {
    path.extension().is_some_and(|e| e == "xml") || text.trim_start().starts_with('<')
}

/// Parses a definition from a file: TOML, or libvirt network XML when the
/// file name ends in `.xml` or the text starts with `<`.
pub fn load_file(path: &Path) -> Result<Network> {
    let text = read_definition(path)?;
    parse(&text, is_xml(path, &text)).with_context(|| format!("{}", path.display()))
}

/// Parses and validates a definition.
pub fn parse(text: &str, is_xml: bool) -> Result<Network> {
    if text.len() > MAX_DEFINITION_BYTES {
        bail!("definition is larger than {MAX_DEFINITION_BYTES} bytes; a definition is a few KiB");
    }
    let net = if is_xml {
        xml::from_libvirt(text)?
    } else {
        from_toml(text)?
    };
    validate(&net)?;
    Ok(net)
}

/// Deserializes TOML with the path of a refused value in the message
/// (`dns.domain: "..." is not a valid DNS name: ...`).
pub fn from_toml_as<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    if text.len() > MAX_DEFINITION_BYTES {
        bail!("TOML text is larger than {MAX_DEFINITION_BYTES} bytes");
    }
    let de = match toml::Deserializer::parse(text) {
        Ok(d) => d,
        Err(e) => bail!("invalid definition: {}", one_line(e.message())),
    };
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().message().to_string();
        // The path holds the text's own keys, which may hold anything.
        anyhow::anyhow!(
            "{}",
            one_line(&if path == "." || path.is_empty() {
                format!("invalid definition: {msg}")
            } else {
                format!("{path}: {msg}")
            })
        )
    })
}

pub fn from_toml(text: &str) -> Result<Network> {
    from_toml_as(text)
}

/// Folds a message onto one line (toml's span over several with a caret).
pub fn one_line(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
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
