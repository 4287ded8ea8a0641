//! `loadtest`: load generators and benchmarks for supernode.
//!
//! `mix-bench` runs the real mixer engine in process, as fast as the machine allows,
//! and reports how many conference participants one core serves in real time.

mod mix_bench;

use clap::{Parser, Subcommand};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

/// Counts every allocation, so `mix-bench` can prove ticks allocate nothing.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load generators and benchmarks for supernode"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mix synthetic conferences through the real mixer engine as fast as possible and
    /// report participants served per core (last line: one JSON object).
    MixBench(mix_bench::MixBenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::MixBench(args) => mix_bench::run(&args, GLOBAL),
    }
}
