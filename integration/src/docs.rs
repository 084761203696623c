//! Reading the documentation (README.md, docs/*.md) for `integration/tests/docs.rs`, which
//! checks that every link, command, option, path, metric, variable and configuration key the
//! pages name exists.

pub mod markdown;
pub mod names;
