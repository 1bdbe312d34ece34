//! Stand-in streaming client for the lab: connects to `{ip}:47990`, holds, exits non-zero on
//! failure.

use clap::Parser;

fn main() {
    let args = hydra_lab::standin::ClientArgs::parse();
    std::process::exit(hydra_lab::standin::client(&args));
}
