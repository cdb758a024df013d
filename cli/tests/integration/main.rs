//! End-to-end tests of the `pushdown` binary: output formats, and bad input giving a clear
//! one-line error, a non-zero exit and nothing on stdout.

mod bad_input;
mod cluster;
mod dialects;
mod malformed;
mod output;
mod plugins;
mod security;
mod support;
mod tier;
