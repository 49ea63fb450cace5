//! Teardown keeps going after a failure and reports every one, so a stop
//! removes as much as it can and the operator learns about all leftovers.

use std::fmt;

#[derive(Default)]
pub struct Teardown {
    errors: Vec<String>,
}

impl Teardown {
    pub fn step(&mut self, what: &str, r: anyhow::Result<()>) {
        if let Err(e) = r {
            tracing::warn!("{what}: {e:#}");
            self.errors.push(format!("{what}: {e:#}"));
        }
    }

    pub fn finish(self) -> anyhow::Result<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{self}"))
        }
    }
}

impl fmt::Display for Teardown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.errors.join("; "))
    }
}
