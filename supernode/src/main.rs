//! `supernode`: a media-plane conferencing and super-node appliance for P2P SIP.

use clap::{Parser, Subcommand};
use mixer::{Mixer, MixerConfig};

#[derive(Parser)]
#[command(
    name = "supernode",
    version,
    about = "P2P-SIP super-node: proxy, registrar, relay, mixer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the super-node in the foreground until SIGINT or SIGTERM.
    Run {
        /// Mixer threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        mixer_threads: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { mixer_threads } => run(mixer_threads).await,
    }
}

async fn run(mixer_threads: usize) -> anyhow::Result<()> {
    let mixer = Mixer::start(MixerConfig {
        shards: mixer_threads,
        ..MixerConfig::default()
    })?;
    println!(
        "mixer {} threads, simd {}",
        mixer.shards(),
        mixer::simd::active_isa().name()
    );
    println!("sip not served yet: the SIP service (registrar, proxy, rooms) comes with its issue");
    println!("admin not served yet: the admin UI comes with its issue");
    println!("ready; Ctrl-C or SIGTERM stops");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tokio::task::spawn_blocking(move || mixer.shutdown()).await?;
    println!("stopped");
    Ok(())
}
