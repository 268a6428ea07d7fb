//! `citycredit`: the platform's one binary, a thin layer over `citycredit_app` (which parses
//! nothing itself and assembles everything).

use std::process::ExitCode;

use clap::Parser;

use citycredit_app::cli::{self, Cli};

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
