//! The `boothcast` command: parses the command line and calls into the library.

use anyhow::Context;
use boothcast::audio::{encode, FrameDuration};
use boothcast::client::{
    self, BoothOptions, FloorOptions, Input, ListenOptions, Monitor, Output, SenderOptions,
};
use boothcast::config::{Event, DEFAULT_EVENT_NAME};
use boothcast::relay::Relay;
use boothcast::server;
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "boothcast",
    version,
    about = "Live interpretation channels: booths, floor and delegates"
)]
struct Cli {
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the relay (HTTP and WebSocket on one port).
    Serve {
        /// Event file (TOML); the built-in default event when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: String,
        /// Directory of the delegate's web page.
        #[arg(long)]
        web_dir: Option<PathBuf>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Record every channel into a session directory under DIR, from start to stop.
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
        /// Serve HTTPS and WSS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The address delegates join at, shown as a QR code (default: this machine's address
        /// on its network and the port listened on).
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
        /// Delegates' connections one client address may hold (every phone has its own address
        /// on a venue LAN; raise it when many come through one NAT).
        #[arg(long, value_name = "N", default_value_t = boothcast::admission::LISTENERS_PER_ADDRESS)]
        listeners_per_address: usize,
        /// A reverse proxy (address or network, e.g. 10.0.0.0/24) whose Forwarded or
        /// X-Forwarded-For header gives the client's address; may be given more than once.
        /// Without it those headers are ignored.
        #[arg(long, value_name = "ADDR")]
        trusted_proxy: Vec<boothcast::admission::Network>,
        /// Join a cluster of relays through these NATS servers (nats://HOST:PORT, comma
        /// separated; nats-server with JetStream, -js, running before the node starts: one
        /// that cannot reach it exits with code 1). Every node serves the same event.
        /// Credentials: nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT (the same on
        /// every URL; %XX for @ : / , %), or, kept out of the process list, the environment
        /// variables BOOTHCAST_NATS_USER and BOOTHCAST_NATS_PASSWORD (or BOOTHCAST_NATS_TOKEN).
        /// They are never shown: logs and errors say nats://***@HOST:PORT.
        #[arg(long, value_name = "URLS", value_delimiter = ',', requires = "node")]
        cluster: Vec<String>,
        /// This node's name in the cluster (1 to 32 of a-z, A-Z, 0-9, - and _).
        #[arg(long, value_name = "NAME", requires = "cluster")]
        node: Option<String>,
    },
    /// Send a sound file or a live stream as the floor (the hall's original sound).
    Floor {
        #[command(flatten)]
        common: SenderArgs,
        /// Room whose floor this is (default: the first room).
        #[arg(long)]
        room: Option<String>,
    },
    /// A booth console: send a sound file, a live stream or a microphone as the interpreter's.
    ///
    /// On a terminal, the interpreter's console (its keys are shown on screen). Otherwise, or
    /// with --headless, commands one per line on standard input: live [CHANNEL], mute,
    /// cough on|off, handover, accept, input floor|CHANNEL, quit.
    Booth {
        #[command(flatten)]
        common: SenderArgs,
        #[arg(long)]
        booth: String,
        /// Console name within the booth.
        #[arg(long, default_value = "1")]
        console: String,
        /// Channel to go live on (default: the booth's first language).
        #[arg(long)]
        lang: Option<String>,
        /// Go live as soon as connected (a reconnect always comes back muted).
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        monitor: OutputArgs,
        /// Command lines on standard input and JSON lines out, even on a terminal.
        #[arg(long)]
        headless: bool,
    },
    /// Listen to a channel: play it on an output device, or write what is heard to a WAV file.
    Listen {
        /// Relay address (ws://HOST:PORT, wss://…); once per relay of a cluster, tried in turn.
        #[arg(long, required = true)]
        server: Vec<String>,
        /// Channel: a language code (en) or a full id (plenary/en).
        #[arg(long)]
        lang: String,
        /// WAV file to write what is heard to; `-` writes a WAV stream to standard output (the
        /// JSON lines then go to standard error).
        #[arg(long, required_unless_present_any = ["output_device", "default_output"])]
        output_file: Option<PathBuf>,
        #[command(flatten)]
        device: OutputArgs,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
        /// Jitter margin in milliseconds: a file's fixed margin (default 40); on a device, the
        /// least the adaptive jitter buffer holds (by default it adapts from 5 ms).
        #[arg(long)]
        buffer_ms: Option<u64>,
        /// The event's access code, if it has one.
        #[arg(long, env = "BOOTHCAST_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// List the audio input and output devices with their default configurations.
    Devices,
    /// Check an event file and print what it declares.
    CheckConfig { file: PathBuf },
    /// Load generator for the side-by-side with Icecast: listeners of Ogg Opus mounts
    /// `/l0.opus`.. (scripts/icecast.sh starts Icecast and its sources).
    BenchIcecast {
        #[arg(long, default_value = "http://127.0.0.1:18000")]
        url: String,
        #[arg(long, default_value_t = 10)]
        mounts: usize,
        #[arg(long, default_value_t = 1000)]
        listeners: usize,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Icecast's process id, for its CPU time and memory.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Soak load against a relay serving config/bench.toml (scripts/soak.sh runs both parts):
    /// `--part healthy` (the floor, booths handing over, listeners that stay and listeners that
    /// come and go, measured) or `--part hostile` (idle and slow connections, a ping flood,
    /// refused messages, guessed booth secrets), from many loopback addresses.
    BenchSoak {
        /// Relay address, IP:port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// healthy or hostile.
        #[arg(long)]
        part: boothcast::bench::soak::Part,
        /// healthy: seconds measured, after connecting and a warm-up; hostile: seconds until it
        /// stops by itself (SIGTERM stops it sooner and prints its report).
        #[arg(long, default_value_t = 600.0)]
        seconds: f64,
        /// healthy: listeners that keep a channel.
        #[arg(long, default_value_t = 1000)]
        listeners: usize,
        /// healthy: listeners that come and go.
        #[arg(long, default_value_t = 200)]
        churn: usize,
        /// Booths b0.. (two consoles each, handing over every --handover-s).
        #[arg(long, default_value_t = 10)]
        booths: usize,
        #[arg(long, default_value_t = 10.0)]
        handover_s: f64,
        /// hostile: connections that never send a byte, kept up.
        #[arg(long, default_value_t = 5000)]
        idle: usize,
        /// hostile: connections sending their request a byte every 2 s.
        #[arg(long, default_value_t = 200)]
        slow: usize,
        /// hostile: clients sending `ping` as fast as the relay takes them.
        #[arg(long, default_value_t = 1)]
        ping_floods: usize,
        /// hostile: clients sending messages the relay refuses, one after another.
        #[arg(long, default_value_t = 1)]
        garbage: usize,
        /// hostile: addresses guessing booth secrets, and connections guessing from each.
        #[arg(long, default_value_t = 4)]
        guess_addresses: usize,
        #[arg(long, default_value_t = 4)]
        guess_loops: usize,
        /// Secret of the bench booths.
        #[arg(
            long,
            env = "BOOTHCAST_SECRET",
            hide_env_values = true,
            default_value = "bench-secret"
        )]
        secret: String,
        /// The floor's secret (healthy), as the relay was given it.
        #[arg(long, env = "BOOTHCAST_FLOOR_SECRET", hide_env_values = true)]
        floor_secret: Option<String>,
        /// The relay's process id, for its CPU time and memory (healthy).
        #[arg(long)]
        relay_pid: Option<u32>,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The floor of the fan-out benchmark (scripts/fanout.sh): one thread writing the same Ogg
    /// page to every HTTP listener every 20 ms, one non-blocking send each; prints what it did
    /// when stopped (SIGTERM or Ctrl-C).
    BenchFloor {
        #[arg(long, default_value = "127.0.0.1:18200")]
        listen: String,
        /// Opus packet bytes per page (80 is 32 kbit/s at 20 ms).
        #[arg(long, default_value_t = 80)]
        frame_bytes: usize,
        /// Connections held at most.
        #[arg(long, default_value_t = 20_000)]
        max_listeners: usize,
        /// Serve over TLS with this certificate chain (PEM), as `serve --tls-cert`; needs
        /// --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Load client of the fan-out benchmark (scripts/fanout.sh): listeners reading every frame
    /// the same way from the floor (bench-floor), Icecast or the relay (config/bench.toml).
    BenchFanout {
        /// floor, icecast or boothcast.
        #[arg(long)]
        server: boothcast::bench::fanout::Server,
        /// The server, http://IP:PORT on loopback; https://IP:PORT for listeners over TLS
        /// (the relay's booths then connect over wss://).
        #[arg(long, default_value = "http://127.0.0.1:18200")]
        url: String,
        /// With https://: a certificate (PEM) to trust beside the system's, e.g. the server's
        /// self-signed one.
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// Channels l0.. (Icecast mounts /l0.opus..), listeners spread over them.
        #[arg(long, alias = "mounts", default_value_t = 1)]
        channels: usize,
        #[arg(long, default_value_t = 1000)]
        listeners: usize,
        /// Seconds measured, after every listener is in and the warm-up.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long, default_value_t = 3.0)]
        warm_up: f64,
        /// The server's process id, for its CPU time and memory.
        #[arg(long)]
        server_pid: Option<u32>,
        /// The relay's bench booths: Opus payload bytes per 20 ms frame.
        #[arg(long, default_value_t = 80)]
        frame_bytes: usize,
        /// Secret of the bench booths.
        #[arg(
            long,
            env = "BOOTHCAST_SECRET",
            hide_env_values = true,
            default_value = "bench-secret"
        )]
        secret: String,
    },
    /// Load generator: booths and many listeners against a relay serving config/bench.toml.
    Bench {
        /// Relay address, host:port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        #[arg(long, default_value_t = 10)]
        channels: usize,
        #[arg(long, default_value_t = 1000)]
        listeners: usize,
        /// Seconds measured, after connecting and a 2 s warm-up.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Opus payload bytes per frame (80 is 32 kbit/s at 20 ms).
        #[arg(long, default_value_t = 80)]
        frame_bytes: usize,
        #[arg(long, default_value_t = 20)]
        frame_ms: u64,
        /// Secret of the bench booths.
        #[arg(
            long,
            env = "BOOTHCAST_SECRET",
            hide_env_values = true,
            default_value = "bench-secret"
        )]
        secret: String,
        /// The relay's process id, for its CPU time and memory.
        #[arg(long)]
        relay_pid: Option<u32>,
        /// Idle mode: connect listeners in these steps (e.g. 2000,18000) and report the relay's
        /// memory at each; no audio.
        #[arg(long, value_delimiter = ',')]
        idle_steps: Vec<usize>,
        /// One listener in this many measures every frame's delay; the rest read every 100 ms.
        #[arg(long, default_value_t = 50)]
        probe_every: usize,
        /// Listeners ask for the relaxed delivery class (frames written every 200 ms).
        #[arg(long)]
        relaxed: bool,
        /// Booths connect to this relay, host:port, instead of `--addr` (in a cluster: booths
        /// on one node, listeners on another).
        #[arg(long)]
        booth_addr: Option<String>,
    },
}

#[derive(Args)]
struct SenderArgs {
    /// Relay address, e.g. ws://127.0.0.1:8080 (wss://HOST:PORT for a relay serving TLS; a
    /// certificate not signed by a system authority is trusted through BOOTHCAST_CA_CERT=FILE).
    /// Give it once per relay of a cluster: a connection that fails or is lost moves on to the
    /// next (and to the relays the cluster tells).
    #[arg(long, required = true)]
    server: Vec<String>,
    /// Secret of the booth or the floor.
    #[arg(long, env = "BOOTHCAST_SECRET", hide_env_values = true)]
    secret: String,
    /// Sound file (WAV, FLAC, MP3, Ogg Vorbis/Opus, AIFF, M4A, ...), paced in real time; or a
    /// live stream sent as it arrives: a FIFO, or `-` for standard input (e.g. from ffmpeg).
    #[arg(long, required_unless_present_any = ["input_device", "default_input"])]
    input_file: Option<PathBuf>,
    /// Capture from this audio input device instead of a file (`boothcast devices`).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["input_file", "default_input"])]
    input_device: Option<String>,
    /// Capture from the default audio input device instead of a file.
    #[arg(long, conflicts_with = "input_file")]
    default_input: bool,
    /// Play the file in a loop.
    #[arg(long = "loop")]
    looped: bool,
    /// Opus frame duration in ms: 10, 20, 40 or 60.
    #[arg(long, default_value_t = 20)]
    frame_ms: u32,
    /// Opus bitrate in bit/s.
    #[arg(long, default_value_t = 32_000)]
    bitrate: u32,
    /// Turn off Opus in-band forward error correction.
    #[arg(long)]
    no_fec: bool,
}

/// Playing to an audio output device.
#[derive(Args)]
struct OutputArgs {
    /// Play to this audio output device (`boothcast devices`).
    #[arg(long, value_name = "NAME", conflicts_with = "default_output")]
    output_device: Option<String>,
    /// Play to the default audio output device.
    #[arg(long)]
    default_output: bool,
    /// Volume of the output device, 0.0 to 2.0.
    #[arg(long, default_value_t = 1.0, value_parser = parse_volume)]
    volume: f32,
}

impl OutputArgs {
    /// `Some(name)` (`Some(None)`: the default device) when a device was asked for.
    fn device(&self) -> Option<Option<String>> {
        match (&self.output_device, self.default_output) {
            (Some(name), _) => Some(Some(name.clone())),
            (None, true) => Some(None),
            (None, false) => None,
        }
    }
}

fn parse_volume(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=boothcast::device::MAX_VOLUME).contains(&v) {
        return Err(format!("{v} is outside 0.0 to 2.0"));
    }
    Ok(v)
}

impl SenderArgs {
    fn sender(&self) -> anyhow::Result<SenderOptions> {
        let frame = FrameDuration::from_ms(self.frame_ms)?;
        let input = match (&self.input_file, &self.input_device) {
            (Some(path), _) => Input::File {
                path: path.clone(),
                looped: self.looped,
            },
            (None, name) => Input::Device { name: name.clone() },
        };
        Ok(SenderOptions {
            input,
            encode: encode::Config {
                frame,
                bitrate: self.bitrate,
                fec: !self.no_fec,
                ..Default::default()
            },
        })
    }
}

/// How long the end of the program waits for blocking work still running.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // symphonia says at `info` what it skips in a file (a `bext` chunk, a Xing header), and
        // at `error` why a file did not decode, which the refusal already says in words.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,symphonia=off"));
    // Logs written to the terminal would tear the console's screen: while it is drawn they
    // go only where standard error is redirected.
    let quiet = console_on_terminal(&cli.command) && std::io::stderr().is_terminal();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || -> Box<dyn std::io::Write> {
            if quiet {
                Box::new(std::io::sink())
            } else {
                Box::new(std::io::stderr())
            }
        });
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    // The load generators run on one thread, as one process pinned to one core; everything
    // else on a worker per core (or `serve --threads`).
    let single = matches!(
        cli.command,
        Cmd::Bench { .. }
            | Cmd::BenchIcecast { .. }
            | Cmd::BenchSoak { .. }
            | Cmd::BenchFloor { .. }
            | Cmd::BenchFanout { .. }
    );
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Cmd::Serve {
        threads: Some(n), ..
    } = cli.command
    {
        builder.worker_threads(n);
    }
    let result = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| {
            let result = tokio::task::LocalSet::new().block_on(&runtime, run(cli.command));
            // A blocking read still waiting (standard input, a FIFO, a name lookup) must not
            // keep the process from ending: dropping the runtime would wait for it forever.
            runtime.shutdown_timeout(EXIT_GRACE);
            result
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on; no backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve {
            config,
            listen,
            web_dir,
            record,
            tls_cert,
            tls_key,
            public_url,
            listeners_per_address,
            trusted_proxy,
            cluster,
            node,
            ..
        } => {
            let event = match &config {
                Some(path) => Event::load(path)?,
                None => Event::default_with_env(),
            };
            let name = config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| DEFAULT_EVENT_NAME.to_string());
            // Printed once, to the terminal only (never to the logs).
            for (role, secret) in &event.generated {
                println!("secret for {role}: {secret}");
            }
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => Some(boothcast::tls::load(cert, key)?),
                _ => None,
            };
            let listener = boothcast::accept::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            println!(
                "boothcast relay for \"{}\" ({name}): {} channels, listening on {scheme}://{addr}",
                event.name,
                event.channels.len()
            );
            // The addresses a phone might reach, from the machine's interfaces; all are shown
            // when there are several, unless --public-url chose one.
            let candidates = match public_url {
                Some(_) => Vec::new(),
                None => boothcast::join::urls(addr, tls.is_some()),
            };
            let mut join_url = public_url.unwrap_or_else(|| candidates[0].clone());
            if !join_url.ends_with('/') {
                join_url.push('/');
            }
            let colors = std::io::IsTerminal::is_terminal(&std::io::stdout());
            print!(
                "{}",
                boothcast::join::announce(&event, &join_url, &candidates, colors)
            );
            println!("sound engineer's console: {join_url}console");
            // Connections are bounded by the open-file limit: take all the system allows.
            let nofile = match boothcast::admission::raise_open_file_limit() {
                Ok((before, now, hard)) => {
                    tracing::info!(soft_before = before, soft = now, hard, "open-file limit");
                    now
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read or raise the open-file limit");
                    boothcast::admission::open_file_limit()
                }
            };
            for warning in &event.warnings {
                tracing::warn!("{warning}");
            }
            let senders =
                event.booths.len() * boothcast::rules::MAX_CONSOLES_PER_BOOTH + event.rooms.len();
            let mut limits = boothcast::admission::Limits::for_event(nofile, senders);
            limits.listeners_per_address = listeners_per_address.max(1);
            limits.trusted_proxies = trusted_proxy;
            let relay = Relay::new(Arc::new(event));
            if let (false, Some(node)) = (cluster.is_empty(), node) {
                let public_url = join_url
                    .replacen("https://", "wss://", 1)
                    .replacen("http://", "ws://", 1);
                boothcast::cluster::join(
                    relay.clone(),
                    boothcast::cluster::Options {
                        servers: cluster,
                        credentials: boothcast::cluster::Credentials::from_env()
                            .context("cannot join the cluster")?,
                        node: node.clone(),
                        public_url,
                    },
                )
                .await
                .context("cannot join the cluster")?;
                println!("node {node} joined the cluster");
            }
            let mut options = server::Options {
                limits: Some(limits),
                record_at_start: record.is_some(),
                record_dir: record,
                tls,
                join_url: Some(join_url),
                ..Default::default()
            };
            if let Some(dir) = web_dir {
                options.web_dir = dir;
            }
            // Ctrl-C at a terminal, SIGTERM from systemd, docker or kill: both stop the relay
            // in order (every connection told, recordings closed).
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let shutdown = async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            server::run(listener, relay, options, shutdown).await?;
            Ok(())
        }
        Cmd::Floor { common, room } => {
            let sender = common.sender()?;
            client::floor(FloorOptions {
                servers: common.server,
                secret: common.secret,
                room,
                sender,
            })
            .await?;
            Ok(())
        }
        Cmd::Booth {
            common,
            booth,
            console,
            lang,
            live,
            monitor,
            headless,
        } => {
            let sender = common.sender()?;
            let mut opts = BoothOptions {
                servers: common.server,
                secret: common.secret,
                booth,
                console,
                lang,
                live,
                sender,
                commands: None,
                ui: None,
                monitor: monitor.device().map(|device| Monitor {
                    device,
                    volume: boothcast::device::Volume::new(monitor.volume),
                }),
            };
            // Sound on standard input leaves no room for commands there.
            let stdin_is_sound = common
                .input_file
                .as_deref()
                .is_some_and(boothcast::input::is_stdin);
            if !headless && !stdin_is_sound && on_terminal() {
                boothcast::tui::run(opts).await?;
            } else {
                if !stdin_is_sound {
                    opts.commands = Some(stdin_lines());
                }
                client::booth(opts).await?;
            }
            Ok(())
        }
        Cmd::Listen {
            server,
            lang,
            output_file,
            device,
            seconds,
            buffer_ms,
            secret,
        } => {
            let output = match (output_file, device.device()) {
                (Some(path), None) => Output::File(path),
                (_, Some(name)) => Output::Device {
                    name,
                    volume: device.volume,
                },
                (None, None) => anyhow::bail!("listen needs --output-file or --output-device"),
            };
            client::listen(ListenOptions {
                servers: server,
                secret,
                channel: lang,
                output,
                duration: seconds.map(Duration::from_secs_f64),
                buffer: buffer_ms.map(Duration::from_millis),
            })
            .await?;
            Ok(())
        }
        Cmd::Bench {
            addr,
            channels,
            listeners,
            seconds,
            frame_bytes,
            frame_ms,
            secret,
            relay_pid,
            idle_steps,
            probe_every,
            relaxed,
            booth_addr,
        } => {
            let report = boothcast::bench::run(boothcast::bench::Options {
                probe_every,
                relaxed,
                booth_addr,
                addr,
                channels,
                listeners,
                seconds,
                frame_bytes,
                frame_ms,
                secret,
                relay_pid,
                idle_steps,
            })
            .await?;
            print!("{report}");
            Ok(())
        }
        Cmd::BenchSoak {
            addr,
            part,
            seconds,
            listeners,
            churn,
            booths,
            handover_s,
            idle,
            slow,
            ping_floods,
            garbage,
            guess_addresses,
            guess_loops,
            secret,
            floor_secret,
            relay_pid,
            json,
        } => {
            use boothcast::bench::soak::{healthy, hostile, Part};
            let (text, value) = match part {
                Part::Healthy => {
                    let floor_secret = floor_secret
                        .context("the healthy part needs the floor's secret (--floor-secret or BOOTHCAST_FLOOR_SECRET)")?;
                    let mut opts = healthy::Options::new(addr, seconds, floor_secret);
                    opts.listeners = listeners;
                    opts.churn = churn;
                    opts.booths = booths;
                    opts.handover_every = Duration::from_secs_f64(handover_s);
                    opts.secret = secret;
                    opts.relay_pid = relay_pid;
                    let report = healthy::run(opts).await?;
                    (report.to_string(), report.to_json())
                }
                Part::Hostile => {
                    let mut opts = hostile::Options::new(addr, seconds);
                    opts.idle = idle;
                    opts.slow = slow;
                    opts.ping_floods = ping_floods;
                    opts.garbage = garbage;
                    opts.guess_addresses = guess_addresses;
                    opts.guess_loops = guess_loops;
                    opts.booths = booths;
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                    let stop = async move {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                    };
                    let report = hostile::run(opts, stop).await;
                    (report.to_string(), report.to_json())
                }
            };
            print!("{text}");
            if let Some(path) = json {
                std::fs::write(&path, format!("{value}\n"))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        }
        Cmd::BenchFloor {
            listen,
            frame_bytes,
            max_listeners,
            tls_cert,
            tls_key,
        } => {
            use boothcast::bench::floor;
            use std::sync::atomic::{AtomicBool, Ordering};
            let listener = std::net::TcpListener::bind(&listen)
                .with_context(|| format!("cannot listen on {listen}"))?;
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => Some(boothcast::tls::load(cert, key)?),
                _ => None,
            };
            let opts = floor::Options {
                frame_bytes,
                max_listeners,
                tls,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let mut floor = tokio::task::spawn_blocking({
                let stop = stop.clone();
                move || floor::run(listener, &opts, &stop)
            });
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let counters = tokio::select! {
                done = &mut floor => done?,
                _ = term.recv() => { stop.store(true, Ordering::Relaxed); floor.await? }
                _ = tokio::signal::ctrl_c() => { stop.store(true, Ordering::Relaxed); floor.await? }
            }?;
            print!("{counters}");
            Ok(())
        }
        Cmd::BenchFanout {
            server,
            url,
            tls_ca,
            channels,
            listeners,
            seconds,
            warm_up,
            server_pid,
            frame_bytes,
            secret,
        } => {
            let report = boothcast::bench::fanout::run(boothcast::bench::fanout::Options {
                server,
                url,
                channels,
                listeners,
                seconds,
                warm_up: Duration::try_from_secs_f64(warm_up)
                    .context("--warm-up must be a number of seconds")?,
                server_pid,
                secret,
                frame_bytes,
                ca: tls_ca,
            })
            .await?;
            print!("{report}");
            Ok(())
        }
        Cmd::BenchIcecast {
            url,
            mounts,
            listeners,
            seconds,
            server_pid,
        } => {
            let report = boothcast::bench::icecast::run(boothcast::bench::icecast::Options {
                url,
                mounts,
                listeners,
                seconds,
                server_pid,
            })
            .await?;
            print!("{report}");
            Ok(())
        }
        Cmd::Devices => {
            let devices = boothcast::device::list();
            if devices.is_empty() {
                println!("no audio devices found (is a sound server such as PulseAudio running?)");
            }
            for d in devices {
                let mut line = format!("{:<10} {}", d.host, d.name);
                for (what, format, default) in [
                    ("input", &d.input, d.default_input),
                    ("output", &d.output, d.default_output),
                ] {
                    if let Some(f) = format {
                        let mark = if default { " (default)" } else { "" };
                        line.push_str(&format!(
                            "\n           {what}{mark}: {} ch, {} Hz, {}",
                            f.channels, f.rate, f.sample_format
                        ));
                    }
                }
                if !d.description.is_empty() && d.description != d.name {
                    line.push_str(&format!("\n           \"{}\"", d.description));
                }
                println!("{line}");
            }
            Ok(())
        }
        Cmd::CheckConfig { file } => {
            let event = Event::load(&file)?;
            println!("{}: event \"{}\" is valid", file.display(), event.name);
            for warning in &event.warnings {
                println!("warning: {warning}");
            }
            for room in &event.rooms {
                println!("room {} ({})", room.id, room.name);
                for ch in event.channels.iter().filter(|c| c.room == room.id) {
                    let fallback = match (ch.is_floor, ch.auto_floor) {
                        (true, _) => String::new(),
                        (false, true) => format!(", auto-floor after {} ms", ch.hold.as_millis()),
                        (false, false) => ", silence when no interpreter is live".into(),
                    };
                    println!("  channel {} {} ({}){fallback}", ch.id, ch.native, ch.name);
                }
                for b in event.booths.iter().filter(|b| b.room == room.id) {
                    let langs: Vec<&str> = b
                        .channels
                        .iter()
                        .map(|i| event.channels[*i as usize].id.as_str())
                        .collect();
                    println!("  booth {} into {}", b.id, langs.join(", "));
                }
            }
            Ok(())
        }
    }
}

/// Both standard input and output are a terminal: a person is at the console.
fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

fn console_on_terminal(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Booth {
            headless: false,
            ..
        }
    ) && on_terminal()
}

/// Standard input, a line at a time, read on its own thread (stdin blocks).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
