//! Where a node fetches releases from: any HTTP server that serves a
//! build's output directory with byte ranges (`nodeforge serve`, nginx,
//! an object store). Behind a trait so the transfer is tested against
//! servers that misbehave on purpose.

use std::time::Duration;

use anyhow::Result;

use crate::http::{self, Ask};

pub trait Origin {
    /// The whole of `file`, at most `max` bytes.
    fn get(&self, file: &str, max: usize) -> Result<Vec<u8>>;
    /// Bytes `offset..offset + len` of `file`.
    fn get_range(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Where `file` is, for messages.
    fn locate(&self, file: &str) -> String;
}

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
}

impl Origin for HttpOrigin {
    fn get(&self, file: &str, max: usize) -> Result<Vec<u8>> {
        let ask = Ask {
            range: None,
            max_body: max,
            timeout: self.timeout,
        };
        http::fetch(&self.locate(file), ask)
    }

    fn get_range(&self, file: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let ask = Ask {
            range: Some((offset, len)),
            max_body: usize::try_from(len).unwrap_or(usize::MAX),
            timeout: self.timeout,
        };
        http::fetch(&self.locate(file), ask)
    }

    fn locate(&self, file: &str) -> String {
        format!("{}/{file}", self.base)
    }
}
