//! The command line's subcommands that need more than a few lines (the binary's own modules).

pub mod bench;
pub mod minimize;
