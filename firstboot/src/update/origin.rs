//! Where a node fetches releases from: any HTTP server that serves a
//! build's output directory with byte ranges (`nodeforge serve`, nginx,
//! an object store).

use std::time::Duration;

use anyhow::Result;

use crate::http::{self, Ask};

/// A directory URL: `http://host:port/path/` + file name.
pub struct HttpOrigin {
    base: String,
    timeout: Duration,
}

impl HttpOrigin {
    pub fn new(base: &str, timeout: Duration) -> Self {
        HttpOrigin {
            base: base.trim_end_matches('/').to_owned(),
            timeout,
        }
    }

    /// The whole of `file`, at most `max` bytes.
    pub fn get(&self, file: &str, max: usize) -> Result<Vec<u8>> {
        let ask = Ask {
            range: None,
            max_body: max,
            timeout: self.timeout,
        };
        http::fetch(&self.locate(file), ask)
    }

    /// Bytes `offset..offset + len` of `file`.
    pub fn get_range(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let ask = Ask {
            range: Some((offset, len)),
            max_body: usize::try_from(len).unwrap_or(usize::MAX),
            timeout: self.timeout,
        };
        http::fetch(&self.locate(file), ask)
    }

    /// Where `file` is, for messages.
    pub fn locate(&self, file: &str) -> String {
        format!("{}/{file}", self.base)
    }
}
