use std::io::Write as _;
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
    /// Log format: human-readable text, one JSON object per line, or journald (native
    /// structured entries when the journal is reachable, else plain text without colours or
    /// timestamps, which journald adds).
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
    Journald,
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
    /// Print PDQ hashes: one line per image (`pdq_hex,quality,path`), or with --video vPDQ
    /// lines per frame (`frame_number,quality,pdq_hex,timestamp_seconds`).
    Hash {
        /// Treat the inputs as videos.
        #[arg(long)]
        video: bool,
        /// With --video: hash one frame per this many seconds (0 = every frame).
        #[arg(long, default_value_t = 0.0, requires = "video")]
        seconds_per_hash: f64,
        /// Images: also print the 8 dihedral variants' hashes after the quality (original,
        /// rot90, rot180, rot270, flipx, flipy, flipplus1, flipminus1).
        #[arg(long, conflicts_with = "video")]
        dihedral: bool,
        /// Where to hash images: auto (a real GPU if there is one), gpu or cpu.
        #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
        backend: BackendArg,
        /// GPU adapter: index (see `livewatch adapters`) or part of its name.
        #[arg(long)]
        adapter: Option<livewatch::config::AdapterSelector>,
        /// Accept a software GPU adapter (lavapipe) for --backend gpu.
        #[arg(long)]
        allow_software: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the GPU adapters wgpu finds, with their index for `[hash] adapter`.
    Adapters,
    /// Match images and videos against bank files as the live pipeline would, printing one
    /// JSON line per event: `{"type":"match",...}` per matching frame, `{"type":"video_match",
    /// ...}` when the vPDQ window rule holds for a banked video, `{"type":"scores",...}` per
    /// sampled frame and classifier model, `{"type":"error",...}` for a file that cannot be
    /// read (the others are still scanned; exit status 1).
    Scan {
        /// A bank: PDQ lines, a CSV export, a vPDQ file, or a folder of vPDQ files (one per
        /// video item); repeat for several.
        #[arg(long = "bank", required_unless_present = "models")]
        banks: Vec<PathBuf>,
        /// A classifier model (its manifest's name in --models-dir): prints
        /// `{"type":"scores",...}` per sampled frame; repeat for several.
        #[arg(long = "model")]
        models: Vec<String>,
        /// Folder of model manifests.
        #[arg(long, default_value = "models")]
        models_dir: PathBuf,
        /// ONNX Runtime's library (default: $ORT_DYLIB_PATH, then the project's Python environment).
        #[arg(long)]
        onnxruntime: Option<PathBuf>,
        /// Execution provider: cpu, cuda or tensorrt.
        #[arg(long, default_value = "cpu")]
        provider: String,
        /// Sample videos at this many frames per second (default: every frame).
        #[arg(long)]
        fps: Option<f64>,
        /// Largest Hamming distance that matches.
        #[arg(long, default_value_t = 31)]
        distance: u32,
        /// Frames below this PDQ quality are not matched.
        #[arg(long, default_value_t = 50)]
        min_quality: u8,
        /// Video rule: window in seconds, share of its frames in percent, and frames at least.
        #[arg(long, default_value_t = 10.0)]
        window_secs: f64,
        #[arg(long, default_value_t = 80.0)]
        min_percent: f64,
        #[arg(long, default_value_t = 5)]
        min_frames: usize,
        /// Images: also match their 8 rotations and flips.
        #[arg(long)]
        dihedral: bool,
        #[arg(required = true)]
        media: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackendArg {
    Auto,
    Gpu,
    Cpu,
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
        LogFormat::Journald => {
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            match tracing_journald::layer() {
                Ok(journal) => tracing_subscriber::registry()
                    .with(filter)
                    .with(journal.with_syslog_identifier("livewatch".into()))
                    .init(),
                Err(_) => builder.with_ansi(false).without_time().init(),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => match livewatch::config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                let banks = livewatch::bank::Banks::load(&c.banks)?;
                let models = match &c.classifier {
                    Some(spec) => livewatch::classify::service::check(spec)?,
                    None => Vec::new(),
                };
                Ok((c, banks, models))
            }) {
            Ok((c, banks, models)) => {
                println!(
                    "{}: ok ({} streams, {} banks: {}, {} webhooks, {} models: {})",
                    config.display(),
                    c.streams.len(),
                    c.banks.len(),
                    banks,
                    c.webhooks.len(),
                    models.len(),
                    models.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
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
            dihedral,
            backend,
            adapter,
            allow_software,
            files,
        } => {
            if video {
                return hash_videos(&files, seconds_per_hash);
            }
            let config = livewatch::config::HashConfig {
                backend: match backend {
                    BackendArg::Auto => livewatch::config::HashBackend::Auto,
                    BackendArg::Gpu => livewatch::config::HashBackend::Gpu,
                    BackendArg::Cpu => livewatch::config::HashBackend::Cpu,
                },
                adapter,
                allow_software,
                ..Default::default()
            };
            hash_images(&files, dihedral, &config)
        }
        Command::Scan {
            banks,
            models,
            models_dir,
            onnxruntime,
            provider,
            fps,
            distance,
            min_quality,
            window_secs,
            min_percent,
            min_frames,
            dihedral,
            media,
        } => {
            if fps.is_some_and(|f| !(f.is_finite() && f > 0.0 && f <= 240.0))
                || distance > 256
                || !(window_secs.is_finite() && (1.0..=3600.0).contains(&window_secs))
                || !(min_percent > 0.0 && min_percent <= 100.0)
                || min_frames == 0
            {
                eprintln!("error: --fps must be in (0, 240], --distance at most 256, --window-secs 1 to 3600, --min-percent in (0, 100], --min-frames at least 1");
                return ExitCode::from(2);
            }
            let provider: livewatch::classify::runtime::ProviderKind =
                match serde_json::from_value(serde_json::Value::String(provider.clone())) {
                    Ok(p) => p,
                    Err(_) => {
                        eprintln!(
                            "error: --provider must be cpu, cuda or tensorrt, got {provider:?}"
                        );
                        return ExitCode::from(2);
                    }
                };
            let opts = livewatch::scan::ScanOptions {
                banks,
                models,
                models_dir,
                onnxruntime,
                providers: vec![provider],
                fps,
                distance,
                min_quality,
                video: livewatch::config::VideoRule {
                    window: std::time::Duration::from_secs_f64(window_secs),
                    min_percent,
                    min_frames,
                },
                dihedral,
            };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match livewatch::scan::run(&opts, &media, &mut out) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Adapters => {
            for (i, a) in livewatch::hash::gpu::list_adapters().iter().enumerate() {
                println!(
                    "{i}\t{:?}\t{:?}\t{}\t{}",
                    a.backend, a.device_type, a.name, a.driver_info
                );
            }
            ExitCode::SUCCESS
        }
    }
}

fn hash_videos(files: &[PathBuf], seconds_per_hash: f64) -> ExitCode {
    let mut status = ExitCode::SUCCESS;
    for f in files {
        match livewatch::decode::hash_video_file(f, seconds_per_hash) {
            Ok(lines) => {
                let mut out = std::io::stdout().lock();
                for l in &lines {
                    let _ = writeln!(out, "{}", livewatch::decode::vpdq_line(l));
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}

/// Hashes images one by one; an unreadable file is reported and skipped, and the exit status
/// says whether every file was hashed.
fn hash_images(
    files: &[PathBuf],
    dihedral: bool,
    config: &livewatch::config::HashConfig,
) -> ExitCode {
    let mut engine = match livewatch::hash::Engine::new(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    tracing::debug!(backend = %engine.info(), "hashing images");
    let mut status = ExitCode::SUCCESS;
    for f in files {
        let result = livewatch::hash::load_rgb(f).and_then(|(rgb, w, h)| {
            engine.hash_images(&[livewatch::hash::Image {
                rgb: &rgb,
                width: w,
                height: h,
            }])
        });
        match result {
            Ok(mut v) => {
                let d = v.remove(0);
                let mut line = format!("{},{}", d.hashes[0], d.quality);
                if dihedral {
                    for h in &d.hashes {
                        line.push(',');
                        line.push_str(&h.to_string());
                    }
                }
                println!("{line},{}", f.display());
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
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
