//! The `pollen` binary's configuration as a library, so the fuzz targets (`fuzz/`) can feed
//! config files to the same parser the agent uses. Everything else lives in the binary.

pub mod config;
