//! The per-node seed: its schema ([`schema`], shared with the builder, and
//! re-exported here so `seed::Seed` and friends keep their paths) and how
//! the agent finds and loads it ([`load`]).

pub mod load;
pub mod schema;

pub use schema::*;
