use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::error;

/// Live-stream appliance: perceptual hashing of live video against hash banks, with signed
/// webhook alerts.
#[derive(Parser)]
#[command(name = "livewatch", version, about)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "LIVEWATCH_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance with a configuration file.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file (and the bank files it names); exit 0 when it is good.
    CheckConfig { config: PathBuf },
    /// Run a self-contained demonstration: bundled clips replayed as live streams, one of them
    /// in a bank, and the demo's own webhook receiver printing each alert.
    Demo {
        /// Address for /metrics and the API.
        #[arg(long, default_value = "127.0.0.1:9750")]
        listen: String,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Print PDQ hashes of a video's frames as vPDQ lines: frame_number,quality,pdq_hex,timestamp.
    Hash {
        /// Treat the inputs as videos.
        #[arg(long)]
        video: bool,
        /// Hash one frame per this many seconds (0 = every frame).
        #[arg(long, default_value_t = 0.0)]
        seconds_per_hash: f64,
        files: Vec<PathBuf>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => match livewatch::config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                livewatch::bank::Banks::load(&c.banks)
                    .map(|b| (c, b))
                    .map_err(Into::into)
            }) {
            Ok((c, banks)) => {
                println!(
                    "{}: ok ({} streams, {} banks: {}, {} webhooks)",
                    config.display(),
                    c.streams.len(),
                    c.banks.len(),
                    banks,
                    c.webhooks.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let config = match livewatch::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            run_async(|cancel| livewatch::run(config, cancel, Default::default()))
        }
        Command::Demo { listen, duration } => {
            run_async(move |cancel| livewatch::demo::run(listen, duration, cancel))
        }
        Command::Hash {
            video,
            seconds_per_hash,
            files,
        } => {
            if !video {
                eprintln!("error: only --video input is supported by this build");
                return ExitCode::from(2);
            }
            if files.is_empty() {
                eprintln!("error: name at least one video file");
                return ExitCode::from(2);
            }
            for f in files {
                match livewatch::decode::hash_video_file(&f, seconds_per_hash) {
                    Ok(lines) => {
                        for l in lines {
                            println!(
                                "{},{},{},{:.3}",
                                l.frame_number, l.hash.quality, l.hash.hash, l.timestamp
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// Runs an async main job on a multi-threaded runtime; SIGINT / SIGTERM cancel it.
fn run_async<F, Fut>(job: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lw-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signals.cancel();
        });
        match job(cancel).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
