//! `supernode`: a media-plane conferencing and super-node appliance for P2P SIP.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use supernode::config::{Config, PortRange, SipAuth, TEMPLATE};
use supernode::store::{Account, RoomRecord, Store};

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

/// Options every subcommand that touches data takes.
#[derive(clap::Args, Clone)]
struct DataArgs {
    /// Configuration file (TOML; `supernode init` writes one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default ./data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// SIP domain (default: the host name, or what the data directory recorded).
    #[arg(long)]
    domain: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the super-node in the foreground until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// Write a commented configuration file with every default.
    Init {
        /// Where to write it.
        #[arg(long, default_value = "supernode.toml")]
        config: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Manage SIP accounts.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Manage conference rooms.
    Room {
        #[command(subcommand)]
        action: RoomAction,
    },
    /// Manage access to the web admin.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Set the admin password (prompted on a terminal, or read from stdin).
    SetPassword {
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create an API token and print it once (only its hash is stored).
    Create {
        /// A label for the token.
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    data: DataArgs,
    /// SIP address for UDP and TCP (port 0: one free port for both).
    #[arg(long)]
    sip: Option<SocketAddr>,
    /// TURN address.
    #[arg(long)]
    turn: Option<SocketAddr>,
    /// Admin HTTP address.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Overlay (libp2p) address.
    #[arg(long)]
    p2p: Option<SocketAddr>,
    /// Overlay bootstrap peer (repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Address written into Via, Record-Route, Contact and SDP.
    #[arg(long)]
    advertise: Option<std::net::IpAddr>,
    /// DNS server for routing to other SIP domains.
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// digest (default) or none (benchmarks on loopback only).
    #[arg(long)]
    sip_auth: Option<SipAuth>,
    /// UDP ports for RTP, LOW-HIGH.
    #[arg(long)]
    rtp_ports: Option<PortRange>,
    /// Special-purpose peer range the relay may reach (repeatable).
    #[arg(long)]
    allow_peer: Vec<String>,
    /// Mixer threads (0: one per core).
    #[arg(long)]
    mixer_threads: Option<usize>,
}

#[derive(Subcommand)]
enum UserAction {
    /// Add an account or change its password.
    Add {
        /// User name (the user part of sip:NAME@DOMAIN).
        name: String,
        /// Password (only its digest HA1 values are stored).
        #[arg(long)]
        password: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Delete an account and its registrations.
    Del {
        /// User name.
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List account names.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Subcommand)]
enum RoomAction {
    /// Add a room or change its PIN and size.
    Add {
        /// Room name (callers dial sip:NAME@DOMAIN).
        name: String,
        /// Digits callers must send before joining.
        #[arg(long)]
        pin: Option<String>,
        /// Most participants.
        #[arg(long, default_value_t = 100)]
        max: u32,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Delete a room.
    Del {
        /// Room name.
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List rooms.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
}

/// The configuration from defaults, the file, then the flags.
fn base_config(d: &DataArgs) -> anyhow::Result<Config> {
    let mut cfg = match &d.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(data) = &d.data {
        cfg.data = data.clone();
    }
    if let Some(domain) = &d.domain {
        cfg.domain = Some(domain.clone());
    }
    Ok(cfg)
}

/// Opens the store and settles the domain: the one asked for, else the one recorded,
/// else the host name; recorded on first use.
fn open_store(cfg: &Config) -> anyhow::Result<(Store, String)> {
    let store = Store::open(&cfg.data)?;
    let domain = match (&cfg.domain, store.domain()?) {
        (Some(d), _) => d.to_ascii_lowercase(),
        (None, Some(stored)) => stored,
        (None, None) => cfg.domain(),
    };
    store.claim_domain(&domain)?;
    Ok((store, domain))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Init { config, force } => {
            if config.exists() && !force {
                bail!("{} exists; pass --force to overwrite it", config.display());
            }
            std::fs::write(&config, TEMPLATE)
                .with_context(|| format!("writing {}", config.display()))?;
            println!("wrote {}", config.display());
            Ok(())
        }
        Command::User { action } => user(action),
        Command::Room { action } => room(action),
        Command::Admin { action } => admin(action),
    }
}

/// Reads one line of stdin; on a terminal, prompts without echo.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if !from_stdin && !tty {
        bail!("stdin is not a terminal: pass --password-stdin to read the password from it");
    }
    let echo_off = tty
        && std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
    if tty {
        eprint!("admin password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo_off {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        eprintln!();
    }
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn admin(action: AdminAction) -> anyhow::Result<()> {
    match action {
        AdminAction::SetPassword {
            password_stdin,
            data,
        } => {
            let (store, _) = open_store(&base_config(&data)?)?;
            let password = read_password(password_stdin)?;
            supernode::admin::set_password(&store, &password)?;
            println!("admin password set");
        }
        AdminAction::Token {
            action: TokenAction::Create { name, data },
        } => {
            let (store, _) = open_store(&base_config(&data)?)?;
            let (secret, token) = supernode::admin::create_token(&store, &name)?;
            println!("{secret}");
            eprintln!(
                "token {} ({}) created: shown once, only its hash is stored",
                token.id, token.name
            );
        }
    }
    Ok(())
}

fn user(action: UserAction) -> anyhow::Result<()> {
    match action {
        UserAction::Add {
            name,
            password,
            data,
        } => {
            let (store, domain) = open_store(&base_config(&data)?)?;
            if password.is_empty() {
                bail!("--password must not be empty");
            }
            store.put_account(&Account::with_password(&name, &domain, &password))?;
            println!("user {name}@{domain} saved");
        }
        UserAction::Del { name, data } => {
            let (store, domain) = open_store(&base_config(&data)?)?;
            if !store.delete_account(&name, &domain)? {
                bail!("no user {name:?}");
            }
            println!("user {name}@{domain} deleted");
        }
        UserAction::List { data } => {
            let (store, _) = open_store(&base_config(&data)?)?;
            for name in store.account_names()? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn room(action: RoomAction) -> anyhow::Result<()> {
    match action {
        RoomAction::Add {
            name,
            pin,
            max,
            data,
        } => {
            let (store, domain) = open_store(&base_config(&data)?)?;
            store.put_room(&RoomRecord {
                name: name.clone(),
                pin,
                max_legs: max,
            })?;
            println!("room sip:{name}@{domain} saved");
        }
        RoomAction::Del { name, data } => {
            let (store, _) = open_store(&base_config(&data)?)?;
            if !store.delete_room(&name)? {
                bail!("no room {name:?}");
            }
            println!("room {name} deleted");
        }
        RoomAction::List { data } => {
            let (store, domain) = open_store(&base_config(&data)?)?;
            for r in store.rooms()? {
                let pin = if r.pin.is_some() { " pin" } else { "" };
                println!("sip:{}@{domain} max {}{pin}", r.name, r.max_legs);
            }
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = base_config(&args.data)?;
    if let Some(v) = args.sip {
        cfg.sip = v;
    }
    if let Some(v) = args.turn {
        cfg.turn = v;
    }
    if let Some(v) = args.admin {
        cfg.admin = v;
    }
    if let Some(v) = args.p2p {
        cfg.p2p = v;
    }
    if !args.bootstrap.is_empty() {
        cfg.bootstrap = args.bootstrap;
    }
    if args.advertise.is_some() {
        cfg.advertise = args.advertise;
    }
    if args.dns.is_some() {
        cfg.dns = args.dns;
    }
    if let Some(v) = args.sip_auth {
        cfg.sip_auth = v;
    }
    if let Some(v) = args.rtp_ports {
        cfg.rtp_ports = v;
    }
    if !args.allow_peer.is_empty() {
        cfg.allow_peer = args.allow_peer;
    }
    if let Some(v) = args.mixer_threads {
        cfg.mixer_threads = v;
    }
    cfg.validate()?;
    let (store, domain) = open_store(&cfg)?;
    cfg.domain = Some(domain);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    Ok(runtime.block_on(supernode::node::run(cfg, store))?)
}
